"""The report set of a run: results.json, REPORT.md, SUMMARY.md, COMPARE.md (two or more
models) and figures, each a PNG with its SVG (no torch)."""
# Every file is rendered from results.json alone (source.RunSource, read back from the parsed
# file), never from the live session: a run's report and one rebuilt later from its results.json
# (python -m lac_core.report) are the same bytes.
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable
from pathlib import Path

from . import breakdown, findings, modelsfig, sections, summary
from ..verdicts import paper, uncertainty
from ..verdicts.kinds import Kind
from .figures import kl_by_layer_figure
from ..protocol.grids import paper_grid
from .reportset import Folder
from .style import pair, with_svg
from .tables import View, claim_details, fmt, gate_lines, interval_table, matrix, table
from .source import RunSource

__all__ = ["fmt", "table", "report_markdown", "OUTPUTS", "report_names", "write_report_set",
           "Plan", "Output", "view", "results_text"]


def view(src: RunSource) -> View:
    """results.json's dict with the planned models (a model that failed to load keeps its
    column), the planned claims, and the paper's verdict per claim and grid (the same rule on
    the paper's Gemma-2-2B data, where the grid is the paper's)."""
    models = dict.fromkeys([*src.checked.models, *(m for _c, m, _g in src.verdicts)])
    claims = [c for c in src.doc["claims"] if src.claims_planned is None
              or c in src.claims_planned or any(k[0] == c for k in src.verdicts)]
    theirs, texts = paper.verdicts(src.thresholds), {}
    for claim in claims:
        for label, grid in src.grids.items():
            pv = theirs.get((claim, paper.PAPER_MODEL, paper_grid(grid.name, grid.sha256)))
            if pv and pv.deciding:
                texts[(claim, label)] = f"{pv.status}: {pv.deciding.name}: {pv.deciding.detail}"
    return View(src.doc, tuple(models), tuple(claims), texts)


def report_markdown(src, figures: dict, v: View | None = None) -> str:
    """REPORT.md: status, verdicts (linked to experiments 1-4), the regression gate, claim by
    claim, the experiments in order, beyond the paper, provenance; the intervals last."""
    v = v or view(src)
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
             *sections.experiments(src, figures),
             *findings.section(src, table, fmt), *sections.provenance(src), "",
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
    overwrite) and, at the end, its writers (name -> writer(path)) for what the run made."""

    names: Callable[[Plan], list[str]]
    writers: Callable[[object], dict]


def _kl_figures(src) -> dict:
    c6 = src.thresholds.C6.min_null_kl
    out = {}
    for key, r in src.results.items():
        if key[2] == Kind.SWEEP:
            out.update(pair(figure_name(*key[:2]), lambda r=r: kl_by_layer_figure(
                r, uncertainty.faithfulness_table(r, c6))))
    return out


def _sweeps(src) -> list:
    return [r for _k, r in findings.by_kind(src, Kind.SWEEP)]


def _models_figures(src) -> dict:
    """COMPARE.md's figures: name -> (build, caption), when two or more models ran a sweep."""
    sweeps, models = _sweeps(src), list(src.checked.models)
    if not summary.several_models(r.model for r in sweeps):
        return {}
    c6 = src.thresholds.C6.min_null_kl
    tables = {(r.model, r.grid): uncertainty.faithfulness_table(r, c6) for r in sweeps}
    out = {summary.MODELS_KL: (lambda: modelsfig.models_kl_figure(sweeps, models),
                               summary.KL_CAPTION)}
    if any(tables.values()):
        out[summary.MODELS_F] = (lambda: modelsfig.models_f_figure(sweeps, tables, models),
                                 summary.F_CAPTION)
    return out


def _models_figure_writers(src) -> dict:
    return {name: w for fig, (build, _c) in _models_figures(src).items()
            for name, w in pair(fig, build).items()}


def _text_names(plan) -> list[str]:
    return ["results.json", "REPORT.md", "SUMMARY.md",
            *(["COMPARE.md"] if summary.several_models(plan.models) else [])]


def results_text(doc: dict) -> str:
    """results.json's text: what the run writes, and what a rebuild writes again, byte for byte."""
    return json.dumps(doc, indent=1, allow_nan=False)


def _texts(src: RunSource) -> dict:
    """results.json and the text files read from it."""
    v = view(src)
    figures = {key: Path(figure_name(*key[:2])).name for key in src.results
               if key[2] == Kind.SWEEP}
    out = {"results.json": results_text(src.doc),
           "REPORT.md": report_markdown(src, figures, v),
           "SUMMARY.md": summary.summary_markdown(v)}
    if summary.several_models(v.models):
        out["COMPARE.md"] = summary.models_markdown(v, {name: caption for name, (_b, caption)
                                                        in _models_figures(src).items()})
    return {name: (lambda path, t=t: path.write_text(t)) for name, t in out.items()}


def _models_names(plan) -> list[str]:
    sweeps = dict.fromkeys(m for m, _g in plan.runs(Kind.SWEEP))
    return with_svg([summary.MODELS_KL, summary.MODELS_F]) if summary.several_models(sweeps) else []


# Every file a report set holds, declared once: the start check and the publish step both read
# this list, so a file added here is covered by both without another edit. Every figure is a PNG
# with an SVG beside it.
OUTPUTS = [
    Output(_text_names, _texts),
    Output(lambda plan: with_svg(figure_name(m, g) for m, g in plan.runs(Kind.SWEEP)), _kl_figures),
    Output(lambda plan: with_svg(findings.figure_names(plan)), findings.figure_writers),
    Output(_models_names, _models_figure_writers),
]
# lac's earlier files a new set supersedes (a COMPARE.md of an earlier two-model run goes when
# this run has one model)
REPLACES = ("results.json", "REPORT.md", "SUMMARY.md", "COMPARE.md", "figures/")


def report_names(plan: Plan) -> list[str]:
    """Every file a report set of this plan may write."""
    return list(dict.fromkeys(name for out in OUTPUTS for name in out.names(plan)))


def write_report_set(src: RunSource, folder: Folder) -> tuple[Path, list[str]]:
    """The report set of a run's results.json (OUTPUTS), written into `folder` as one set:
    the folder it went to, and the files that kept it from the folder itself (see Folder)."""
    writers = {name: write for out in OUTPUTS for name, write in out.writers(src).items()}
    return folder.publish(writers, REPLACES, fallback=f"lac-{src.run_id}")
