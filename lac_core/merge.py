"""`lac merge RUN_DIR_OR_RESULTS... --lac-reports OUT [--lac-expected-dir DIR]` (also `python -m
lac_core.merge`): shards of one run (a CI matrix, a Slurm array, separate jobs: `--lac-model A`
here, `--lac-model B` there) merged into one results.json and one report set in OUT, with the
regression gate applied to the whole against DIR's expectations (and lac's own).

Shards merge when they are one run split by model (or grid): the same lac (version, rules, source,
libraries; git commit and dirty are information only), the same settings and the same grids. A
model and grid in two shards is refused unless both hold the very same results. Every number a
shard derives from its records, and every verdict and failing cell of lac's own claims, is
derived again by lac's rules from the records: a shard whose verdict does not follow from its
numbers is refused. A results.json is read as JSON only (never a pickle).

Exit 0: merged, the gate passed (or had nothing to compare). Exit 1: merged, but the gate failed
or a shard was PARTIAL (named). Exit 2: the shards cannot be merged, a shard is not a results.json
lac wrote, or OUT cannot take the set (one line on stderr naming the shard or folder, and why)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LacError

PASSED, FAILED, UNMERGEABLE = 0, 1, 2
# numpy, matplotlib and the report load only when shards are merged: --help stays light.


def shard(arg: str):
    """The Shard a command-line argument names: a results.json, or a report folder holding one."""
    from .readfile import RESULTS, read_json
    from .run.shards import Shard

    if not arg.strip():
        raise LacError("a shard's name is empty; name each shard's results.json or report folder")
    path = Path(arg)
    if path.is_dir() and not path.is_symlink():
        path = path / "results.json"
    return Shard(str(path), read_json(path, RESULTS))  # capped, regular, UTF-8, strict JSON


def merge(args: list[str], out: Path, expected_dir: Path, overwrite: bool = False,
          argv=()) -> tuple[Path, dict, list[str]]:
    """Merge the shards `args` into `out`: (the folder the set went to, the merged results.json,
    the PARTIAL shards). LacError naming what cannot be merged."""
    from .report.document import results_text
    from .report.rebuild import write_set
    from .report.source import RunSource
    from .run import gating, shards
    import json

    if not expected_dir.is_dir():
        raise LacError(f"--lac-expected-dir {expected_dir} is not a folder; pass the folder of "
                       "the per-model expectation files")
    taken = [shard(a) for a in args]
    doc = json.loads(results_text(shards.merge(taken, gating.expectation_folders(expected_dir),
                                               ["merge", *argv])))
    where = write_set(RunSource.of(doc), out, overwrite, "the merged shards")
    return where, doc, shards.partial(taken)


def main(argv=None, prog: str = "python -m lac_core.merge") -> int:
    from .paths import EXPECTED

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", metavar="RUN_DIR_OR_RESULTS",
                        help="each shard's results.json, or the report folder holding it")
    parser.add_argument("--lac-reports", required=True, metavar="OUT",
                        help="the folder to write the merged report set into (made if missing)")
    parser.add_argument("--lac-expected-dir", metavar="DIR", default=None,
                        help="the expectations the merged run is gated against, before lac's "
                             "own (default: lac's own)")
    parser.add_argument("--lac-reports-overwrite", action="store_true",
                        help="replace files in OUT that lac did not write")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        where, doc, partial = merge(args.shards, Path(args.lac_reports),
                                    Path(args.lac_expected_dir or EXPECTED),
                                    args.lac_reports_overwrite, given)
    except LacError as exc:
        print(f"lac merge: {' '.join(str(exc).split())}", file=sys.stderr)
        return UNMERGEABLE
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        print(f"lac merge: a shard is not a results.json lac wrote ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:200]}); pass the results.json of lac runs",
              file=sys.stderr)
        return UNMERGEABLE
    from .verdicts.gate import GateOutcome

    gate = GateOutcome.from_json(doc["regression_gate"])
    status, why = gate.summary()
    for line in gate.failure_lines():
        print(line, file=sys.stderr)
    for p in partial:
        print(f"lac merge: shard {p} is PARTIAL (its run.not_run and run.failed say what is "
              "missing), so the merged run is too", file=sys.stderr)
    print(f"lac merge: {len(args.shards)} shards merged into {where} "
          f"({doc['run']['status']}); regression gate {status}: {why}")
    return FAILED if gate.failed or partial or doc["run"]["status"] != "COMPLETE" else PASSED


if __name__ == "__main__":
    sys.exit(main())
