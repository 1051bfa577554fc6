"""`lac report RESULTS.json --lac-reports OUT` (also `python -m lac_core.report`): a run's report
set rendered again from its results.json alone (after a fix to the report code, or from a copy of
the file), the same bytes the run wrote for the text files and the same pixels for the figures.

Exit 0: the set is written. Exit 2: the file cannot be read, is not a results.json of the schema
a report is rendered from (an older run's: rerun lac), or the folder cannot take the set (one line
on stderr naming the file or folder, and why)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LacError

WRITTEN, UNUSABLE = 0, 2
# The report's modules (numpy, matplotlib) load only when a set is rendered: --help stays light.


def source(path: Path):
    """The RunSource of a results.json file; LacError naming the file and what is wrong."""
    from ..readfile import RESULTS, read_json
    from .source import RunSource

    doc = read_json(path, RESULTS)  # capped, a regular file, UTF-8, strict JSON
    try:
        return RunSource.of(doc)
    except LacError as exc:
        raise LacError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise LacError(f"{path}: not a results.json lac wrote ({type(exc).__name__}: {exc}); "
                       "pass the results.json of a lac run") from None


def rebuild(path: Path, out: Path, overwrite: bool = False) -> Path:
    """Render the report set of `path` into `out` (checked, locked, written as one set); the
    folder it went to."""
    return write_set(source(path), out, overwrite, str(path))


def write_set(src, out: Path, overwrite: bool, what: str) -> Path:
    """The report set of `src` (a RunSource; `what`: where it came from, for messages) written
    into `out` as `lac report` writes it (Folder: checked, locked, one set); the folder it
    went to (also lac merge's)."""
    from .document import Plan, report_names, write_report_set
    from .reportset import Folder

    grids = {label: tuple(g.experiments) for label, g in src.grids.items()}
    folder = Folder(out, overwrite)
    folder.check(report_names(Plan(tuple(src.checked.models), grids)))
    folder.lock(f"report-of-{src.run_id}")
    try:
        where, kept = write_report_set(src, folder)
    except LacError as exc:  # the set is staged whole, so nothing of it was published
        raise LacError(f"rendering the report set of {what}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a field the report reads is missing or of another type: the file is not one lac
        # wrote (nothing is published: the set is staged whole, then moved in)
        raise LacError(f"{what}: not a results.json lac wrote ({type(exc).__name__} while "
                       f"rendering: {exc}); pass the results.json of a lac run") from None
    finally:
        folder.release()
    if kept:
        raise LacError(f"{out}: {', '.join(kept)} appeared there and is not lac's; the set went "
                       f"to {where}")
    return where


def main(argv=None, prog: str = "python -m lac_core.report") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the results.json of a lac run")
    parser.add_argument("--lac-reports", required=True, metavar="OUT",
                        help="the folder to write the report set into (made if missing)")
    parser.add_argument("--lac-reports-overwrite", action="store_true",
                        help="replace files in OUT that lac did not write")
    args = parser.parse_args(argv)
    try:
        where = rebuild(Path(args.results), Path(args.lac_reports), args.lac_reports_overwrite)
    except LacError as exc:
        print(f"lac report: {' '.join(str(exc).split())}", file=sys.stderr)
        return UNUSABLE
    print(f"lac report: report set of {args.results} written to {where}")
    return WRITTEN


if __name__ == "__main__":
    sys.exit(main())
