"""`python -m lac_core.compare A/results.json B/results.json`: what moved between two runs, outside
pytest (as `pytest-benchmark compare` reads saved runs). It prints the verdicts that flipped, the
deciding numbers that moved beyond the regression gate's tolerances (those a baseline of A would
get) and those A has that B lacks (missing, null or not finite), and exits 0 when nothing did, 1
when something flipped, moved or went missing, 2 when the runs are not comparable (other models,
or grids of other content) or an input is not a lac results.json (one line naming it)."""
from __future__ import annotations

import argparse
import sys

from .errors import LacError
from .readfile import RESULTS, read_json, refuse

EQUAL, MOVED, INCOMPARABLE = 0, 1, 2
NOT_RESULTS = INCOMPARABLE  # nothing to compare either


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


def _identity(doc: dict) -> tuple:
    grids = {label: g.get("sha256") for label, g in doc["run"]["grids"].items()}
    return sorted(doc.get("models", {})), grids


def _numbers(v: dict) -> dict[str, float]:
    """The deciding numbers of a verdict as the gate names them: claim/part/number."""
    from .verdicts.expected import part_numbers

    return part_numbers(v["claim"], ((p["name"], p.get("numbers")) for p in v["parts"]))


def compare(a: dict, b: dict) -> tuple[int, list[str]]:
    """The exit code and the lines saying why."""
    from .verdicts.expected import beyond, make_baselines

    if _identity(a) != _identity(b):
        (ma, ga), (mb, gb) = _identity(a), _identity(b)
        return INCOMPARABLE, [f"not comparable: models {ma} / {mb}, grids {ga} / {gb}"]
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


def main(argv=None, prog: str = "python -m lac_core.compare") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("a", help="the earlier run's results.json")
    parser.add_argument("b", help="the later run's results.json")
    args = parser.parse_args(argv)
    try:
        a, b = read(args.a), read(args.b)
    except LacError as exc:
        print(f"lac compare: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_RESULTS
    code, lines = compare(a, b)
    for line in lines:
        print(line)
    print({EQUAL: "lac compare: same verdicts, no number moved beyond tolerance",
           MOVED: f"lac compare: {len(lines)} differences",
           INCOMPARABLE: "lac compare: the runs are not comparable"}[code])
    return code


if __name__ == "__main__":
    sys.exit(main())
