"""`lac compare` on runs of other models or setups (a checkpoint against its parent, float32
against bfloat16): what differs, then per claim both verdicts, their deciding numbers with
intervals, and the paired difference B - A of each with a simultaneous band
(verdicts/paired.py). No torch: everything is rebuilt from the two results.json."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .paths import CLAIMS_FILE
from .verdicts import claims as registry
from .verdicts import paired
from .verdicts.results import RECORDS, record_from_json
from .verdicts.thresholds import load_thresholds
from .verdicts.uncertainty import RESAMPLES, STRUCTURAL, WHAT

EQUAL, WORSE, INCOMPARABLE = 0, 1, 2
# What the header compares between the two models' provenance (results.json `models`): shown
# side by side where they differ; hashes only said to differ, never printed.
SHOWN = ("model", "dtype", "kernels", "architecture", "n_layers", "d_model",
         "attn_implementation", "device", "chat_template", "torch", "transformers")
HASHED = {"sha256": "weights", "chat_template_sha256": "chat template text"}


@dataclass(frozen=True)
class Section:
    """One claim on one grid for one pair of models: the paired rule's outcome, or why there is
    none (the recorded verdicts are shown alone)."""

    claim: str
    grid: str
    models: tuple[str, str]
    recorded: tuple[dict, dict]  # the verdicts results.json holds
    result: paired.Paired | None
    why_not: str = ""


def _models(doc: dict) -> list[str]:
    return sorted(doc.get("models", {}) or {v["model"] for v in doc["verdicts"]})


def model_pairs(a: dict, b: dict) -> list[tuple[str, str]] | None:
    """Which model of A is compared with which of B: the same names (another dtype or kernels),
    or the one model of each; None when neither."""
    ma, mb = _models(a), _models(b)
    if ma == mb:
        return [(m, m) for m in ma]
    return [(ma[0], mb[0])] if len(ma) == 1 and len(mb) == 1 else None


def _provenance(doc: dict, model: str) -> dict:
    p = doc.get("models", {}).get(model)
    return p if isinstance(p, dict) else {}


def _show(x) -> str:
    return "none" if x is None or x == "" else str(x)


def setup_lines(a: dict, b: dict, pairs, shared: list[str]) -> list[str]:
    """The header: what differs between the runs (model, dtype, kernels, ...), what is the same,
    and the grids by name."""
    lines = []
    for ma, mb in pairs:
        pa, pb = _provenance(a, ma), _provenance(b, mb)
        pa, pb = {"model": ma, **pa}, {"model": mb, **pb}
        differ = [f"{k} {_show(pa.get(k))} / {_show(pb.get(k))}" for k in SHOWN
                  if pa.get(k) != pb.get(k)]
        differ += [f"{what} (sha256)" for k, what in HASHED.items() if pa.get(k) != pb.get(k)]
        same = [f"{k} {_show(pa.get(k))}" for k in ("dtype", "kernels") if pa.get(k) == pb.get(k)]
        lines += [f"A: {ma}   B: {mb}", f"  differs: {'; '.join(differ) or 'nothing recorded'}",
                  f"  same: {'; '.join(same) or '-'}"]
    ra, rb = a["run"], b["run"]
    if ra.get("thresholds_sha256") != rb.get("thresholds_sha256"):
        lines.append("  thresholds: the runs used other thresholds files; both are judged here "
                     "with this lac's fixtures/claims.yaml")
    ga, gb = set(ra["grids"]), set(rb["grids"])
    lines.append(f"grids compared: {', '.join(shared)}"
                 + (f"; only in A: {', '.join(sorted(ga - gb))}" if ga - gb else "")
                 + (f"; only in B: {', '.join(sorted(gb - ga))}" if gb - ga else ""))
    return lines


def _record(doc: dict, kind: str, model: str, grid: str):
    name = RECORDS[kind][1]
    raw = next((r for r in doc.get(name, []) if isinstance(r, dict) and r.get("model") == model
                and r.get("grid") == grid), None)
    return None if raw is None else record_from_json(kind, raw)


def _verdicts(doc: dict, model: str, grid: str) -> dict[str, dict]:
    return {v["claim"]: v for v in doc["verdicts"] if v["model"] == model and v["grid"] == grid}


def sections(a: dict, b: dict, pairs, shared: list[str]) -> list[Section]:
    """Every claim both runs decided on a shared grid, with its rule rerun on both records over
    the same resamples where lac knows the rule and both records are there."""
    thresholds, out = load_thresholds(CLAIMS_FILE), []
    for ma, mb in pairs:
        for grid in shared:
            va, vb = _verdicts(a, ma, grid), _verdicts(b, mb, grid)
            order = [*registry.CLAIMS, *sorted(set(va) - set(registry.CLAIMS))]
            rows = {}
            for claim in (c for c in order if c in va and c in vb):
                decl, result, why = registry.CLAIMS.get(claim), None, ""
                if decl is None:
                    why = f"{claim} is not one of lac's claims: its rule is not known here"
                else:
                    ra, rb = (_record(d, decl.experiment, m, grid) for d, m in ((a, ma), (b, mb)))
                    try:
                        if ra is None or rb is None:
                            raise ValueError(f"no {decl.experiment} record in "
                                             f"{'A' if ra is None else 'B'}")
                        if decl.experiment not in rows:
                            rows[decl.experiment] = paired.rows_for(ra, rb)
                        result = paired.paired(claim, decl.experiment, decl.rule,
                                               getattr(thresholds, claim), ra, rb,
                                               rows[decl.experiment])
                    except (ValueError, KeyError, TypeError) as exc:
                        why = f"no paired difference: {exc}"
                out.append(Section(claim, grid, (ma, mb), (va[claim], vb[claim]), result, why))
    return out


def _num(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def _with(x, interval) -> str:
    return _num(x) + (f" [{_num(interval[0])}, {_num(interval[1])}]" if interval else "")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _recorded(v: dict) -> dict[tuple[str, str], tuple]:
    """(part, number) -> (value, interval) of a verdict as results.json holds it."""
    out = {}
    for p in (*(v.get("preconditions") or ()), *v["parts"]):
        numbers = {"margin": p.get("margin"), **(p.get("numbers") or {})}
        out.update(((p["name"], k), (x, (p.get("intervals") or {}).get(k)))
                   for k, x in numbers.items() if k not in STRUCTURAL
                   and isinstance(x, (int, float)) and not isinstance(x, bool))
    return out


def section_lines(s: Section) -> list[str]:
    """One claim's lines: its verdicts in both runs, then a row per number."""
    ra, rb = s.recorded
    if s.result is None:
        na, nb = _recorded(ra), _recorded(rb)
        rows = [["part", "number", "A [95%]", "B [95%]"]]
        rows += [[*key, _with(*na[key]), _with(*nb[key])] for key in na if key in nb]
        return [f"{s.claim} on {s.grid}: A {ra['status']}, B {rb['status']} ({s.why_not})",
                *(_table(rows) if len(rows) > 1 else [])]
    va, vb = s.result.a, s.result.b
    head = f"{s.claim} on {s.grid}: A {va.status}, B {vb.status}" + (
        f" (deciding: {va.deciding.name} / {vb.deciding.name})" if va.deciding and vb.deciding
        else "")
    notes = [f"  note: {side} recorded {r['status']}, recomputed {v.status} (other thresholds)"
             for side, r, v in (("A", ra, va), ("B", rb, vb)) if r["status"] != v.status]
    rows = [["part", "number", "A [95%]", "B [95%]", "B - A [95% simultaneous]", ""]]
    for d in s.result.differences:
        rows.append([d.part, d.number, _with(d.a, d.a_interval), _with(d.b, d.b_interval),
                     _with(d.diff, d.band),
                     "worse" if d.worse else "changed" if d.significant else ""])
    return [head, *notes, *(_table(rows) if len(rows) > 1 else ["  (no number both runs hold)"])]


def checkpoint(a: dict, b: dict, fail_on_worse: bool = False) -> tuple[int, list[str]]:
    """The exit code and the lines, the last one the outcome: 0, or 1 with `fail_on_worse` when a
    margin is significantly lower in B; 2 when the models cannot be paired."""
    pairs = model_pairs(a, b)
    if pairs is None:
        return INCOMPARABLE, [f"not comparable: A ran {', '.join(_models(a))}, B ran "
                              f"{', '.join(_models(b))}: compare runs of one model each, or of "
                              "the same models", "lac compare: the runs are not comparable"]
    shared = [g for g in a["run"]["grids"] if g in b["run"]["grids"]]
    found = sections(a, b, pairs, shared)
    banded = iter(paired.simultaneous([d for s in found if s.result
                                       for d in s.result.differences]))
    found = [replace(s, result=replace(s.result, differences=tuple(
        next(banded) for _ in s.result.differences))) if s.result else s for s in found]
    banded = [d for s in found if s.result for d in s.result.differences]
    lines = ["lac compare: checkpoint against checkpoint", *setup_lines(a, b, pairs, shared),
             f"B - A: paired over the cells both runs share (the same resamples of {WHAT}, "
             f"{RESAMPLES}), 95% band simultaneous over the {len(banded)} numbers compared "
             "(max-|t|); worse: a margin significantly lower in B"]
    for (ma, mb), grid in ((p, g) for p in pairs for g in shared):
        lines += ["", f"## {ma} / {mb} on {grid}"]
        for s in (s for s in found if s.models == (ma, mb) and s.grid == grid):
            lines += section_lines(s)
    worse = [d for d in banded if d.worse]
    changed = sum(d.significant for d in banded)
    lines += ["", f"lac compare: {changed} of {len(banded)} numbers changed significantly, "
              f"{len(worse)} margins worse in B"
              + (" (--fail-on-worse: failing)" if fail_on_worse and worse else "")]
    return (WORSE if fail_on_worse and worse else EQUAL), lines
