"""`lac compare A/results.json B/results.json` (also `python -m lac_core.compare_runs`): two runs
side by side, outside pytest (as `pytest-benchmark compare` reads saved runs). The models of one
run side by side are another file: COMPARE.md, in that run's report set.

Same models in the same setup (dtype, kernels) on the same grids: the regression diff. It prints
the verdicts that flipped, the deciding numbers that moved beyond the regression gate's tolerances
(those a baseline of A would get) and those A has that B lacks (missing, null or not finite), and
exits 0 when nothing did, 1 when something flipped, moved or went missing.

Other models or setups on grids they share by content (a checkpoint against its parent): a header
saying what differs, then per claim both runs' verdicts and deciding numbers with their intervals,
and the paired difference B - A of each number over the cells both share, with a 95% band
simultaneous over every number compared (lac_core/verdicts/paired.py). Exit 0; with
--fail-on-worse, exit 1 when a part's margin is significantly lower in B.

Exit 2: the runs are not comparable (no grid in common, a grid of other content under one name)
or an input is not a lac results.json (one line naming it)."""
from __future__ import annotations

import argparse
import sys

from .errors import LacError
from .readfile import RESULTS, read_json, refuse

EQUAL, MOVED, INCOMPARABLE = 0, 1, 2
NOT_RESULTS = INCOMPARABLE  # nothing to compare either
UNCOMPARABLE = "lac compare: the runs are not comparable"


def _is_text(*values) -> bool:
    return all(isinstance(v, str) for v in values)


def _verdict_problem(i: int, v) -> str | None:
    """What keeps verdicts[i] from being one lac wrote (None: nothing)."""
    if not isinstance(v, dict) or not _is_text(*(v.get(k) for k in ("claim", "model", "grid",
                                                                    "status"))):
        return f"verdicts[{i}] is not a verdict (claim, model, grid and status as text)"
    parts = v.get("parts")
    if not isinstance(parts, list):
        return f"verdicts[{i}] has no list of parts"
    for j, p in enumerate(parts):
        if not (isinstance(p, dict) and _is_text(p.get("name"))
                and isinstance(p.get("numbers"), dict | None)):
            return f"verdicts[{i}].parts[{j}] is not a part (a name, and numbers as a mapping)"
    return None


def problem(doc) -> str | None:
    """What keeps a parsed document from being a lac results.json, as far as compare reads it
    (None: nothing)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    run, verdicts = doc.get("run"), doc.get("verdicts")
    if not isinstance(run, dict) or not isinstance(run.get("grids"), dict):
        return "no run.grids (the grids the run used)"
    if not all(isinstance(g, dict) and _is_text(g.get("sha256")) for g in run["grids"].values()):
        return "run.grids holds a grid without its sha256"
    if not isinstance(doc.get("models", {}), dict):
        return "models is not a mapping"
    if not isinstance(verdicts, list):
        return "no list of verdicts"
    return next(filter(None, (_verdict_problem(i, v) for i, v in enumerate(verdicts))), None)


def read(path: str) -> dict:
    """A results.json lac wrote, through lac's one reader (a regular UTF-8 file, 256 MiB at most,
    JSON, numbers within a float) and checked in the parts compare reads; else Unreadable."""
    data = read_json(path, RESULTS)
    why = problem(data)
    if why:
        raise refuse(path, RESULTS, f"not a lac results.json: {why}")
    return data


SETUP = ("dtype", "kernels")  # what makes two runs of one model two setups of it


def _grids(doc: dict) -> dict[str, str]:
    return {label: g["sha256"] for label, g in doc["run"]["grids"].items()}


def _setups(doc: dict) -> dict[str, tuple]:
    return {m: tuple(p.get(k) if isinstance(p, dict) else None for k in SETUP)
            for m, p in doc.get("models", {}).items()}


def _names(labels) -> str:
    return ", ".join(sorted(labels)) or "none"


def grid_problem(a: dict, b: dict, every: bool) -> str | None:
    """Why the runs' grids cannot be compared, by grid name (None: they can): a name whose
    content differs, no grid in common, or (`every`: the regression diff) any grid only one ran."""
    ga, gb = _grids(a), _grids(b)
    other = sorted(g for g in ga.keys() & gb.keys() if ga[g] != gb[g])
    if other:
        return (f"grid {_names(other)}: other content in A and B under the same name (its sha256 "
                "differs); run both on the same grid file")
    if not ga.keys() & gb.keys() or (every and ga.keys() != gb.keys()):
        return (f"grids: A ran {_names(ga)}, B ran {_names(gb)}"
                + ("" if every else ": none in common"))
    return None


def _numbers(v: dict) -> dict[str, float]:
    """The deciding numbers of a verdict as the gate names them: claim/part/number."""
    from .verdicts.expected import part_numbers

    return part_numbers(v["claim"], ((p["name"], p.get("numbers")) for p in v["parts"]))


def regression(a: dict, b: dict) -> tuple[int, list[str]]:
    """The same models, setup and grids: what flipped, moved beyond tolerance or went missing."""
    from .verdicts.expected import beyond, make_baselines

    why = grid_problem(a, b, every=True)
    if why:
        return INCOMPARABLE, [f"not comparable: {why}"]
    va = {(v["claim"], v["model"], v["grid"]): v for v in a["verdicts"]}
    vb = {(v["claim"], v["model"], v["grid"]): v for v in b["verdicts"]}
    lines = [f"flipped: {c} on {m} / {g}: {va[k]['status']} -> {vb[k]['status']}"
             for k in sorted(va.keys() & vb.keys()) for c, m, g in [k]
             if va[k]["status"] != vb[k]["status"]]
    lines += [f"only in {'A' if k in va else 'B'}: {k[0]} on {k[1]} / {k[2]}"
              for k in sorted(va.keys() ^ vb.keys())]
    for k in sorted(va.keys() & vb.keys()):
        na, nb = _numbers(va[k]), _numbers(vb[k])
        lines += [f"moved: {k[1]} / {k[2]}: {d['quantity']}: {d['baseline']} -> {d['value']:.6g} "
                  f"(tolerance {d['tolerance']})" for d in beyond(make_baselines(na), nb)]
        lines += [f"missing: {k[1]} / {k[2]}: {q}: {na[q]:.6g} in A, none in B (absent, null or "
                  "not finite)" for q in sorted(na.keys() - nb.keys())]
    return (MOVED if lines else EQUAL), lines


def compare_runs(a: dict, b: dict, fail_on_worse: bool = False) -> tuple[int, list[str]]:
    """The exit code and the lines saying why, the last one the outcome: the regression diff when
    both runs are the same models in the same setup, else checkpoint against checkpoint
    (lac_core/checkpoint.py)."""
    if _setups(a) == _setups(b):
        code, lines = regression(a, b)
        return code, [*lines, {EQUAL: "lac compare: same verdicts, no number moved beyond tolerance",
                               MOVED: f"lac compare: {len(lines)} differences",
                               INCOMPARABLE: UNCOMPARABLE}[code]]
    from .checkpoint import checkpoint

    why = grid_problem(a, b, every=False)
    if why:
        return INCOMPARABLE, [f"not comparable: {why}", UNCOMPARABLE]
    return checkpoint(a, b, fail_on_worse)


def main(argv=None, prog: str = "python -m lac_core.compare_runs") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("a", help="the earlier run's results.json")
    parser.add_argument("b", help="the later run's results.json")
    parser.add_argument("--fail-on-worse", action="store_true",
                        help="other models or setups: exit 1 when a part's margin is "
                             "significantly lower in B (a CI gate on a new checkpoint)")
    args = parser.parse_args(argv)
    try:
        a, b = read(args.a), read(args.b)
    except LacError as exc:
        print(f"lac compare: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_RESULTS
    code, lines = compare_runs(a, b, args.fail_on_worse)
    if code == INCOMPARABLE:  # like unreadable input: one line on stderr naming both, and why
        why = "; ".join(" ".join(line.replace("lac compare: ", "").split()) for line in lines)
        print(f"lac compare: {args.a} and {args.b}: {why}", file=sys.stderr)
        return code
    for line in lines:
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
