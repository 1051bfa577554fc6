"""The report set of a session: results.json, REPORT.md, SUMMARY.md, COMPARE.md (two or more
models) and figures, each a PNG with its SVG (no torch)."""
# Every number comes from the session that writes it; the text files are built from results.json
# as a dict (tables.View), so they say what it says.
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable
from pathlib import Path

from . import breakdown, comparefig, findings, sections, summary
from ..verdicts import claims as registry
from ..verdicts import paper, uncertainty
from .figures import kl_by_layer_figure
from ..protocol.grids import paper_grid
from .reportset import Folder
from .style import pair, with_svg
from .tables import View, claim_details, fmt, gate_lines, interval_table, matrix, table
from ..verdicts.results import RECORDS, jsonable

__all__ = ["fmt", "table", "results_document", "report_markdown", "OUTPUTS", "report_names",
           "write_report_set", "Plan", "Output"]
SCHEMA = "lac-results/2 (see docs/SCHEMA.md)"
KINDS = {kind: name for kind, (_record, name) in RECORDS.items()}  # -> results.json list


def results_document(session) -> dict:
    """results.json: the run, provenance per model, verdicts, cell findings and every record."""
    doc = {"schema": SCHEMA, "run": session.run_info(),
           "models": dict(sorted(session.provenance.items())),
           "verdicts": [{**asdict(v), "model": m, "grid": g, "expected": exp}
                        for (c, m, g), (v, exp) in sorted(session.verdicts.items())],
           "cell_failures": [{"check": c, "model": m, "grid": g, "cells": sorted(cells)}
                             for (c, m, g), cells in sorted(session.cell_failures.items())],
           **{name: [] for name in KINDS.values()}}
    for (_m, _g, kind), r in sorted(session.results.items(), key=lambda kv: kv[0]):
        if kind in KINDS:
            doc[KINDS[kind]].append({**asdict(r),
                                     **findings.extra(kind, r, session.thresholds)})
    doc["regression_gate"] = session.gate_outcome
    doc["anti_steering"] = [{"model": m, "grid": g, **breakdown.anti_steering(r)}
                            for (m, g, kind), r in sorted(session.results.items())
                            if kind == "markers"]
    return jsonable(doc)


def view(session, doc: dict) -> View:
    """results.json's dict with what only the session knows: the planned models (a model that
    failed to load keeps its column), the planned claims, and the paper's verdict per claim and
    grid (the same rule on the paper's Gemma-2-2B data, where the grid is the paper's)."""
    models = dict.fromkeys([*session.checked.models, *(m for _c, m, _g in session.verdicts)])
    claims = [c for c in registry.CLAIMS if session.claims_planned is None
              or c in session.claims_planned or any(k[0] == c for k in session.verdicts)]
    theirs, texts = paper.verdicts(session.thresholds), {}
    for claim in claims:
        for label, grid in session.grids.items():
            pv = theirs.get((claim, paper.PAPER_MODEL, paper_grid(grid.name, grid.sha256)))
            if pv and pv.deciding:
                texts[(claim, label)] = f"{pv.status}: {pv.deciding.name}: {pv.deciding.detail}"
    return View(doc, tuple(models), tuple(claims), texts)


def report_markdown(session, figures: dict, v: View | None = None) -> str:
    """REPORT.md: status, verdicts (linked to experiments 1-4), the regression gate, claim by
    claim, the experiments in order, beyond the paper, provenance; the intervals last."""
    v = v or view(session, results_document(session))
    run = v.doc["run"]
    status = run["status"] + ("" if run["status"] == "COMPLETE" else
                              f": {len(run['not_run'])} planned verdicts did not come (the matrix "
                              "says why)" if run["not_run"] else
                              f": interrupted before {len(run['tests_interrupted'])} of its tests "
                              "ran (results.json names them: run.tests_interrupted)")
    cached = run["from_resume_cache"]
    origin = ("Every number below comes from this one run" if not cached else
              f"{len(cached)} experiment results came from the resume cache, computed by earlier "
              "runs under the same key (same code, model, grid, settings and library versions: "
              f"{', '.join(f'{k} from run {rid}' for k, rid in cached.items())}); the rest "
              "from this run")
    notes = [f"- {note}" for note in run["resume_cache_not_used"]]
    failed = [f"- {what}: {why}" for what, why in run["failed"].items()]
    lines = [summary.outcome_heading(v, "lac report"), "", f"Run {run['run_id']}.", "",
             f"**Run status: {status}.** {origin} "
             "(settings and versions in Provenance); the regression gate covered only what ran.",
             "", *(["What failed (the claims that need it did not run):", "", *failed, ""]
                   if failed else []),
             *(["Resume cache entries not used (recomputed):", "", *notes, ""] if notes else []),
             "## Verdicts (claims x models)", "",
             "Each statement links to the experiment whose numbers decide it.", "", *matrix(v), "",
             *gate_lines(v.doc.get("regression_gate")),
             "## Claim by claim", "", *claim_details(v), "",
             *sections.experiments(session, figures),
             *findings.section(session, table, fmt), *sections.provenance(session), "",
             '<a id="appendix-intervals"></a>', "",
             "## Appendix: every deciding number, with its 95% interval", "",
             "Intervals resample the grid's cells (2,000 times, fixed seed) and run the same rule "
             "on each resample. A verdict is FRAGILE when a part's margin interval holds 0 and "
             "flipping that part alone would change it; the verdict itself is the rule on the full "
             "grid.", "", *interval_table(v)]
    return "\n".join(lines) + "\n"


def figure_name(model: str, grid: str) -> str:
    return f"figures/kl_by_layer_{model}_{grid}.png"


@dataclass(frozen=True)
class Plan:
    """What a report set covers: the models, and the experiments each grid (by label) runs."""

    models: tuple[str, ...]
    grids: dict

    def runs(self, experiment: str) -> list[tuple[str, str]]:
        return [(m, g) for m in self.models for g, exps in self.grids.items() if experiment in exps]


@dataclass(frozen=True)
class Output:
    """One kind of file in a report set: its names for a plan (what the start check refuses to
    overwrite) and, at the end, its writers (name -> writer(path)) for what the session made."""

    names: Callable[[Plan], list[str]]
    writers: Callable[[object], dict]


def _kl_figures(session) -> dict:
    c6 = session.thresholds.C6.min_null_kl
    out = {}
    for key, r in session.results.items():
        if key[2] == "sweep":
            out.update(pair(figure_name(*key[:2]), lambda r=r: kl_by_layer_figure(
                r, uncertainty.faithfulness_table(r, c6))))
    return out


def _sweeps(session) -> list:
    return [r for _k, r in findings.by_kind(session, "sweep")]


def _compare_figures(session) -> dict:
    """COMPARE.md's figures: name -> (build, caption), when two or more models ran a sweep."""
    sweeps, models = _sweeps(session), list(session.checked.models)
    if not summary.compared(r.model for r in sweeps):
        return {}
    c6 = session.thresholds.C6.min_null_kl
    tables = {(r.model, r.grid): uncertainty.faithfulness_table(r, c6) for r in sweeps}
    out = {summary.COMPARE_KL: (lambda: comparefig.compare_kl_figure(sweeps, models),
                                summary.KL_CAPTION)}
    if any(tables.values()):
        out[summary.COMPARE_F] = (lambda: comparefig.compare_f_figure(sweeps, tables, models),
                                  summary.F_CAPTION)
    return out


def _compare_figure_writers(session) -> dict:
    return {name: w for fig, (build, _c) in _compare_figures(session).items()
            for name, w in pair(fig, build).items()}


def _text_names(plan) -> list[str]:
    return ["results.json", "REPORT.md", "SUMMARY.md",
            *(["COMPARE.md"] if summary.compared(plan.models) else [])]


def _texts(session) -> dict:
    """results.json and the text files read from it, the dict built once for all of them."""
    doc = results_document(session)
    text = json.dumps(doc, indent=1, allow_nan=False)
    v = view(session, doc)
    figures = {key: Path(figure_name(*key[:2])).name for key in session.results
               if key[2] == "sweep"}
    out = {"results.json": text, "REPORT.md": report_markdown(session, figures, v),
           "SUMMARY.md": summary.summary_markdown(v)}
    if summary.compared(v.models):
        out["COMPARE.md"] = summary.compare_markdown(v, {name: caption for name, (_b, caption)
                                                         in _compare_figures(session).items()})
    return {name: (lambda path, t=t: path.write_text(t)) for name, t in out.items()}


def _compare_names(plan) -> list[str]:
    sweeps = dict.fromkeys(m for m, _g in plan.runs("sweep"))
    return with_svg([summary.COMPARE_KL, summary.COMPARE_F]) if summary.compared(sweeps) else []


# Every file a report set holds, declared once: the start check and the publish step both read
# this list, so a file added here is covered by both without another edit. Every figure is a PNG
# with an SVG beside it.
OUTPUTS = [
    Output(_text_names, _texts),
    Output(lambda plan: with_svg(figure_name(m, g) for m, g in plan.runs("sweep")), _kl_figures),
    Output(lambda plan: with_svg(findings.figure_names(plan)), findings.figure_writers),
    Output(_compare_names, _compare_figure_writers),
]
# lac's earlier files a new set supersedes (a COMPARE.md of an earlier two-model run goes when
# this run has one model)
REPLACES = ("results.json", "REPORT.md", "SUMMARY.md", "COMPARE.md", "figures/")


def report_names(plan: Plan) -> list[str]:
    """Every file a report set of this plan may write."""
    return list(dict.fromkeys(name for out in OUTPUTS for name in out.names(plan)))


def write_report_set(session, folder: Folder) -> tuple[Path, list[str]]:
    """The report set of this session (OUTPUTS), written into `folder` as one set:
    the folder it went to, and the files that kept it from the folder itself (see Folder)."""
    writers = {name: write for out in OUTPUTS for name, write in out.writers(session).items()}
    return folder.publish(writers, REPLACES, fallback=f"lac-{session.run_id}")
