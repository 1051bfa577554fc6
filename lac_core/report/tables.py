"""The tables every text file of a set shares (REPORT.md, SUMMARY.md, COMPARE.md), built from
results.json as a dict (a View), so each file says what results.json says and a test can build
them from a small dict."""
from __future__ import annotations

from collections.abc import Mapping

import math
from dataclasses import dataclass, field

from ..verdicts import claims as registry
from ..verdicts.gate import GateOutcome
from ..verdicts.kinds import Kind

# Where each experiment's numbers are in REPORT.md: stable anchors the verdict matrix links to.
ANCHORS = {Kind.SWEEP: "experiment-1", Kind.MARKERS: "experiment-2", Kind.HOST: "experiment-3"}


def fmt(x, nd: int = 4) -> str:
    """A table cell: floats at `nd` decimals, missing numbers '-', and a '|' or line break in a
    text (a grid's key may hold one) escaped, so no value slides into the next column."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    text = f"{x:.{nd}f}" if isinstance(x, float) else str(x)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table; floats at 4 decimals, missing numbers as '-'."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(c) for c in row) + " |" for row in rows)]


@dataclass(frozen=True)
class View:
    """results.json as a dict, with the models and claims the run planned (a model that failed
    to load has no record, yet keeps its column) and the paper's verdict text per (claim, grid
    label) where the grid is the paper's."""

    doc: dict
    models: tuple = ()
    claims: tuple = ()
    paper: dict = field(default_factory=dict)

    def __post_init__(self):
        ran = [(v["claim"], v["model"]) for v in self.verdicts] + \
            [(n["claim"], n["model"]) for n in self.doc["run"].get("not_run", [])]
        if not self.models:
            object.__setattr__(self, "models", tuple(dict.fromkeys(
                [*self.doc.get("models", {}), *(m for _c, m in ran)])))
        if not self.claims:
            seen, known = {c for c, _m in ran}, self.declared
            object.__setattr__(self, "claims", tuple(
                [c for c in known if c in seen] + sorted(seen - set(known))))

    @property
    def declared(self) -> dict:
        """claim -> its declaration as results.json records it (statement, experiment, units),
        in registration order; a dict without them (an older file, a test's bare dict) falls
        back on the claims registered in this process."""
        if "claims" in self.doc:
            return self.doc["claims"]
        return {c.id: declaration(c) for c in registry.CLAIMS.values()}

    def statement(self, claim: str) -> str:
        return self.declared.get(claim, {}).get("statement", "")

    def experiment(self, claim: str) -> str | None:
        return self.declared.get(claim, {}).get("experiment")

    def unit(self, claim: str, part: str) -> str:
        """A part's margin unit as the claim declares it ('' for a claim that declares none)."""
        return registry.unit_of(self.declared.get(claim, {}).get("units"), part)

    def with_unit(self, x, claim: str, part: str) -> str:
        u = self.unit(claim, part)
        return fmt(x) + (f" {u}" if u and fmt(x) != "-" else "")

    @property
    def verdicts(self) -> list[dict]:
        return self.doc["verdicts"]

    @property
    def grids(self) -> dict:
        return self.doc["run"]["grids"]

    def columns(self) -> list[tuple[str, str]]:
        return [(m, g) for m in self.models for g in self.grids]

    def title(self) -> str:
        return f"{', '.join(self.models) or 'no model'} on {', '.join(self.grids) or 'no grid'}"


def declaration(claim) -> dict:
    """What results.json records of a claim's declaration: what the report shows of it."""
    return {"statement": claim.statement, "experiment": claim.experiment,
            "units": dict(claim.units or {}), "builtin": claim.builtin}


def verdict_text(v: dict, expected: str = "differs") -> str:
    """HOLDS / FAILS / INCONCLUSIVE, FRAGILE, and the expectation: where it differs, or always
    (`expected="always"`, SUMMARY.md)."""
    text = v["status"] + (" FRAGILE" if v.get("fragile") else "")
    exp = v.get("expected")
    if expected == "always":
        return text + (f" (expected {exp})" if exp else " (no expectation)")
    return text + ("" if exp in (None, v["status"]) else f" (expected {exp})")


def missing(why: str) -> str:
    """How a verdict that did not come reads: 'error' (its rule, a setup or an experiment
    raised; `why` starts with it) or 'not run' (deselected, interrupted)."""
    return "error" if why.startswith("error") else "not run"


def matrix(view: View, expected: str = "differs", link: bool = True,
           statements: bool = True) -> list[str]:
    """Claims x (model, grid), a verdict per cell, then the claim's statement linked to the
    experiment that decides it. A claim its grid cannot run (the grid runs no
    such experiment) is folded into one note per grid, not a cell per model; a verdict that did
    not come reads 'not run (n)' or 'error (n)', its reason listed once below."""
    got = {(v["claim"], v["model"], v["grid"]): v for v in view.verdicts}
    why = {(n["claim"], n["model"], n["grid"]): n["why"] for n in view.doc["run"]["not_run"]}
    cols, reasons, folded, rows = view.columns(), {}, {}, []
    for claim in view.claims:
        cells, kind = [], view.experiment(claim)
        for m, g in cols:
            if (claim, m, g) in got:
                cells.append(verdict_text(got[(claim, m, g)], expected))
            elif kind and kind not in view.grids[g]["experiments"]:
                folded.setdefault((g, kind), []).append(claim)
                cells.append("·")
            elif (claim, m, g) in why:
                n = reasons.setdefault(why[(claim, m, g)], len(reasons) + 1)
                cells.append(f"{missing(why[(claim, m, g)])} ({n})")
            else:
                cells.append("-")
        if any(c != "·" for c in cells):
            where = f" ([experiment {ANCHORS[kind][-1]}](#{ANCHORS[kind]}))" \
                if link and kind in ANCHORS else ""
            rows.append([claim, *cells, *([view.statement(claim) + where] if statements
                                           else [])])
    head = ["claim", *(f"{m} / {g}" for m, g in cols), *(["statement"] if statements else [])]
    notes = [f"- `·` grid {g} runs {', '.join(view.grids[g]['experiments'])}, no {kind}: "
             f"{', '.join(dict.fromkeys(cs))} have no verdict on it, on any model"
             for (g, kind), cs in folded.items()]
    notes += [f"- ({n}) {text}" if missing(text) == "error" else f"- ({n}) not run: {text}"
              for text, n in reasons.items()]
    return [*table(head, rows), *([""] + notes if notes else [])]


def _ci(part: dict, key: str) -> str:
    ci = (part.get("intervals") or {}).get(key)
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def claim_details(view: View) -> list[str]:
    """Each verdict's deciding part: its numbers, margin (with its unit) and interval, and the
    same rule on the paper's data where the grid is the paper's."""
    rows = []
    for v in view.verdicts:
        d, claim = v["deciding"], v["claim"]
        ci = _ci(d, "margin") if d else ""
        rows.append([claim, f"{v['model']} / {v['grid']}", verdict_text(v),
                     d["name"] if d else "-", d["detail"] if d else "",
                     view.with_unit(d["margin"], claim, d["name"]) if d else "-",
                     f"{ci} {view.unit(claim, d['name'])}".strip() if ci else "-",
                     ", ".join(v.get("fragile") or ()) or "-",
                     view.paper.get((claim, v["grid"]), "-")])
    return table(["claim", "model / grid", "verdict", "deciding part", "numbers", "margin",
                  "margin 95% interval", "fragile parts", "paper (Gemma-2-2B, same rule)"], rows)


def interval_table(view: View) -> list[str]:
    """Every part and precondition of every verdict: its numbers with 95% intervals (cells
    resampled jointly, 2,000 times)."""
    rows = []
    for v in view.verdicts:
        for p in (*v["preconditions"], *v["parts"]):
            nums = "; ".join(f"{k} {fmt(x)}" + (f" {_ci(p, k)}" if _ci(p, k) else "")
                             for k, x in p["numbers"].items()
                             if isinstance(x, (int, float)) or x is None)
            flag = " (fragile)" if p["name"] in (v.get("fragile") or ()) else ""
            ci = _ci(p, "margin")
            rows.append([v["claim"], f"{v['model']} / {v['grid']}", p["name"], p["status"] + flag,
                         view.with_unit(p["margin"], v["claim"], p["name"]),
                         f"{ci} {view.unit(v['claim'], p['name'])}".strip() if ci else "-",
                         nums or "-"])
    return table(["claim", "model / grid", "part", "status", "margin", "margin 95% interval",
                  "numbers [95% interval]"], rows)


def gate_summary(gate: Mapping | None) -> tuple[str, str]:
    """The regression gate's status and why, in words (results.json's regression_gate)."""
    outcome = GateOutcome.from_json(gate)
    return outcome.summary() if outcome else ("not recorded",
                                              "the run ended before the gate was applied")


NUMS = ("baseline", "value", "tolerance")


def _g(x) -> str:
    return f"{x:.6g}" if isinstance(x, (int, float)) else fmt(x)


def gate_lines(gate: Mapping | None, heading: str = "##") -> list[str]:
    """The gate's status, why, each drifted quantity and each changed verdict."""
    status, why = gate_summary(gate)
    outcome = GateOutcome.from_json(gate)
    lines = [f"{heading} Regression gate: {status}", "", f"**{status}**: {why}.", ""]
    if outcome is None:
        return lines
    if outcome.drift:
        lines += ["Drift beyond tolerance (two-sided):", "",
                  *table(["model / grid", "quantity", "baseline", "value", "tolerance"],
                         [[f"{d.model} / {d.grid}", d.quantity,
                           *(_g(getattr(d, k)) for k in NUMS)] for d in outcome.drift]), ""]
    if outcome.changed_verdicts:
        lines += ["Verdicts that changed:", "",
                  *table(["claim", "model / grid", "expected", "got"],
                         [[c.claim, f"{c.model} / {c.grid}", c.expected, c.got]
                          for c in outcome.changed_verdicts]), ""]
    if outcome.rewritten:
        lines += ["Rewritten in the expectations:", "",
                  *(f"- {fmt(r)}" for r in outcome.rewritten), ""]
    if outcome.refused:
        lines += ["Refused:", "", *(f"- {fmt(r)}" for r in outcome.refused), ""]
    return lines
