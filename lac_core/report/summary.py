"""SUMMARY.md and COMPARE.md (the run's models side by side), built from results.json as a dict
(a tables.View).

SUMMARY.md is the short form a CI job shows (`cat SUMMARY.md >> $GITHUB_STEP_SUMMARY`): the
models, the run status, the verdict matrix with what was expected, and the regression gate with
its drift; markdown only, no images. COMPARE.md is written only when two or more models are in
the run: their verdicts side by side and two figures, additive KL by depth fraction for every
model beside the paper's curves, and F by depth for lac's models (the paper has no null runs)."""
from __future__ import annotations

from dataclasses import dataclass

from ..verdicts.gate import GateOutcome, line
from .tables import View, gate_lines, gate_summary, matrix, table, verdict_text

# COMPARE.md holds the models of one run side by side (two runs are `lac compare`'s,
# lac_core/compare_runs.py); its file names are kept as users know them.
MODELS_KL = "figures/compare_kl_by_depth.png"
MODELS_F = "figures/compare_f_by_depth.png"
MIN_MODELS = 2  # COMPARE.md needs at least this many models


@dataclass(frozen=True)
class RunOutcome:
    """What the run's exit status says and why, read from results.json: the first line of
    SUMMARY.md and REPORT.md, so a red run never opens with a green word."""

    status: str  # "failed", "interrupted" or "passed"
    why: tuple[str, ...]  # what failed its tests first, then what was not checked

    def line(self) -> str:
        return f"{self.status}: {'; '.join(self.why)}"


def _n(items, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _claims_by_run(verdicts: list) -> str:
    """'m / g: C1 FAILS, C2 INCONCLUSIVE; m2 / g: ...'"""
    runs: dict = {}
    for v in verdicts:
        runs.setdefault(f"{v['model']} / {v['grid']}", []).append(f"{v['claim']} {v['status']}")
    return "; ".join(f"{run}: {', '.join(claims)}" for run, claims in runs.items())


def _cells_by_check(cells: list) -> str:
    """'additive_vs_null on m / g: cell, cell; ...'"""
    checks: dict = {}
    for c in cells:
        checks.setdefault(f"{c.check} on {c.model} / {c.grid}", []).append(c.cell)
    return "; ".join(f"{check}: {', '.join(ids)}" for check, ids in checks.items())


def run_outcome(doc: dict) -> RunOutcome:
    """The run's outcome from results.json's dict: failed when a test failed (a claim that does
    not hold with nothing expected, a verdict or per-cell result against its expectation, drift,
    an experiment or test that errored, refused results, rewritten expectations to review),
    interrupted when the run was cut short, else passed; with what was not gated."""
    run, gate = doc["run"], GateOutcome.from_json(doc.get("regression_gate"))
    applied = gate is not None
    gate = gate or GateOutcome("not applied")
    updating = gate.updating  # --lac-update-baselines: recorded, not asserted
    red, notes = [], []
    if gate.review:
        red.append(f"{_n(gate.rewritten, 'expectation', 'expectations')} rewritten, to "
                   "review (the run fails until rerun without --lac-update-baselines)")
    if run.get("failed"):
        red.append(f"{_n(run['failed'], 'experiment', 'experiments')} failed "
                   f"({', '.join(run['failed'])})")
    errors = [x for x in run.get("not_run", []) if str(x.get("why", "")).startswith("error")]
    if errors:
        red.append(f"{_n(errors, 'claim test', 'claim tests')} errored")
    if gate.drift:
        red.append(f"{_n(gate.drift, 'deciding number', 'deciding numbers')} beyond "
                   "tolerance")
    if gate.changed_verdicts:
        red.append(f"{_n(gate.changed_verdicts, 'verdict', 'verdicts')} changed (" +
                   ", ".join(line(c) for c in gate.changed_verdicts) + ")")
    unexpected = [v for v in doc.get("verdicts", [])
                  if v.get("expected") is None and v["status"] != "HOLDS"]
    if unexpected and not updating:
        red.append(f"{_n(unexpected, 'claim fails', 'claims fail')} with nothing expected "
                   f"({_claims_by_run(unexpected)})")
    cells = gate.unexpected_cells
    for got, verbs, what in (("fails", ("fails", "fail"), "with nothing expected"),
                             ("passes", ("passes", "pass"), "though recorded failing")):
        these = [c for c in cells if c.got == got]
        if these:
            red.append(f"{_n(these, 'cell', 'cells')} {verbs[len(these) > 1]} a per-cell check "
                       f"{what} ({_cells_by_check(these)})")
    if gate.refused:
        red.append(f"{_n(gate.refused, 'worker result', 'worker results')} refused")
    interrupted = any(x.get("why") == "interrupted" for x in run.get("not_run", []))
    if updating and not red:
        changed = gate.rewritten
        notes.append(f"this run recorded the expectations: {_n(changed, 'change', 'changes')} "
                     "(--lac-regen-all does not fail on them)" if changed else
                     "this run recorded the expectations, with no change")
    elif not red and not updating:
        gated = any(v.get("expected") is not None for v in doc.get("verdicts", []))
        notes.append("every verdict as expected, every deciding number within its baseline's "
                     "tolerance" if gated else "every claim holds")
    if gate.without_expectations:
        notes.append(f"not gated: no expectations for {', '.join(gate.without_expectations)}")
    elif not applied:
        notes.append("the regression gate was not applied")
    missing = [x for x in run.get("not_run", []) if x not in errors]
    if missing:
        notes.append(f"{_n(missing, 'planned verdict', 'planned verdicts')} did not come")
    status = "interrupted" if interrupted else "failed" if red else "passed"
    return RunOutcome(status, tuple(red + notes))


def outcome_heading(view: View, prefix: str) -> str:
    """The first line of SUMMARY.md and REPORT.md: '# PREFIX: STATUS (models on grids): why'."""
    outcome = run_outcome(view.doc)
    return f"# {prefix}: {outcome.status} ({view.title()}): {'; '.join(outcome.why)}"


def status_line(view: View) -> str:
    run = view.doc["run"]
    missing = len(run.get("not_run", []))
    tail = f": {missing} planned verdicts did not come" if missing else ""
    failed = f"; failed: {', '.join(run['failed'])}" if run.get("failed") else ""
    return f"**Run status: {run['status']}{tail}{failed}.** Run {run['run_id']}, " \
        f"{run.get('wall_seconds')} s."


def summary_markdown(view: View) -> str:
    """SUMMARY.md: title with the models, status, verdicts (and expected), the gate."""
    status, why = gate_summary(view.doc.get("regression_gate"))
    lines = [outcome_heading(view, "lac"), "", status_line(view), "",
             f"**Regression gate: {status}** ({why}).", "",
             "## Verdicts", "", *matrix(view, expected="always", link=False, statements=False), "",
             *gate_lines(view.doc.get("regression_gate")),
             "Details: REPORT.md (every number, figures and provenance) and results.json.", ""]
    return "\n".join(lines)


def several_models(models) -> bool:
    """Whether these models (repeats counted once) are enough for COMPARE.md."""
    return len(list(dict.fromkeys(models))) >= MIN_MODELS


def models_markdown(view: View, figures: dict) -> str:
    """COMPARE.md: every claim's verdict per model side by side (per grid), whether the models
    agree, and the comparison figures that were drawn (`figures`: name -> caption)."""
    got = {(v["claim"], v["model"], v["grid"]): v for v in view.verdicts}
    lines = [f"# lac: comparing {view.title()}", "", status_line(view), ""]
    for grid in view.grids:
        rows = []
        for claim in view.claims:
            cells = [got.get((claim, m, grid)) for m in view.models]
            if not any(cells):
                continue
            statuses = {c["status"] for c in cells if c}
            agree = "same" if len(statuses) == 1 and all(cells) else "differ"
            rows.append([claim, view.statement(claim),
                         *(verdict_text(c) if c else "not run" for c in cells), agree])
        lines += [f"## Verdicts on {grid}", ""]
        lines += [*table(["claim", "statement", *view.models, "models"], rows), ""] if rows \
            else ["No verdict on this grid.", ""]
    for name, caption in figures.items():
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    if not figures:
        lines += ["No figure: fewer than two models ran the sweep (experiment 1).", ""]
    return "\n".join(lines)


KL_CAPTION = ("Median additive KL (nats, log scale) by depth fraction, every model, with its "
              "p25-p75 band over cells; grey, one dash and marker per paper model: the paper's "
              "published curves on the same grid, where the grid is the paper's")
F_CAPTION = ("Normalized faithfulness F = 1 - KL_add / KL_null by depth fraction, lac's models "
             "only: the paper published no null runs, so it has no F to draw; a cross marks an "
             "undefined F (null KL 0)")
