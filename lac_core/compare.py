"""`python -m lac_core.compare A/results.json B/results.json`: what moved between two runs, outside
pytest (as `pytest-benchmark compare` reads saved runs). It prints the verdicts that flipped and
the deciding numbers that moved beyond the regression gate's tolerances (those a baseline of A
would get), and exits 0 when nothing did, 1 when something flipped or moved, 2 when the runs
are not comparable (other models, or grids of other content)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EQUAL, MOVED, INCOMPARABLE = 0, 1, 2


def _read(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        data["verdicts"], data["run"]["grids"]  # the parts compared
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"lac compare: {path} is not a lac results.json ({exc})") from None
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
        base = make_baselines(_numbers(va[k]))
        lines += [f"moved: {k[1]} / {k[2]}: {d['quantity']}: {d['baseline']} -> {d['value']:.6g} "
                  f"(tolerance {d['tolerance']})" for d in beyond(base, _numbers(vb[k]))]
    return (MOVED if lines else EQUAL), lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lac_core.compare", description=__doc__)
    parser.add_argument("a", help="the earlier run's results.json")
    parser.add_argument("b", help="the later run's results.json")
    args = parser.parse_args(argv)
    code, lines = compare(_read(args.a), _read(args.b))
    for line in lines:
        print(line)
    print({EQUAL: "lac compare: same verdicts, no number moved beyond tolerance",
           MOVED: f"lac compare: {len(lines)} differences",
           INCOMPARABLE: "lac compare: the runs are not comparable"}[code])
    return code


if __name__ == "__main__":
    sys.exit(main())
