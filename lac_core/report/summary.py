"""SUMMARY.md and COMPARE.md, built from results.json as a dict (a tables.View).

SUMMARY.md is the short form a CI job shows (`cat SUMMARY.md >> $GITHUB_STEP_SUMMARY`): the
models, the run status, the verdict matrix with what was expected, and the regression gate with
its drift; markdown only, no images. COMPARE.md is written only when two or more models are in
the run: their verdicts side by side and two figures, additive KL by depth fraction for every
model beside the paper's curves, and F by depth for lac's models (the paper has no null runs)."""
from __future__ import annotations

from .tables import View, gate_lines, gate_summary, matrix, statement, table, verdict_text

COMPARE_KL = "figures/compare_kl_by_depth.png"
COMPARE_F = "figures/compare_f_by_depth.png"
MIN_COMPARED = 2  # COMPARE.md needs at least this many models


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
    lines = [f"# lac: {view.title()}", "", status_line(view), "",
             f"**Regression gate: {status}** ({why}).", "",
             "## Verdicts", "", *matrix(view, expected="always", link=False, statements=False), "",
             *gate_lines(view.doc.get("regression_gate")),
             "Details: REPORT.md (every number, figures and provenance) and results.json.", ""]
    return "\n".join(lines)


def compared(models) -> bool:
    return len(list(dict.fromkeys(models))) >= MIN_COMPARED


def compare_markdown(view: View, figures: dict) -> str:
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
            rows.append([claim, statement(claim),
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
              "p25-p75 band over cells; grey dashed: the paper's published curves on the same "
              "grid, where the grid is the paper's")
F_CAPTION = ("Normalized faithfulness F = 1 - KL_add / KL_null by depth fraction, lac's models "
             "only: the paper published no null runs, so it has no F to draw; a cross marks an "
             "undefined F (null KL 0)")
