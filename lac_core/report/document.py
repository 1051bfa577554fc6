"""The report set of a session: results.json, REPORT.md and figures (no torch)."""
# Every table is built by `table`; every number comes from the session that writes it.
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Callable
from pathlib import Path

from . import breakdown, findings
from ..verdicts import claims as registry
from ..verdicts import paper, uncertainty
from .figures import kl_by_layer
from ..protocol.grids import paper_grid
from .reportset import Folder
from ..verdicts.results import MARKER_CONDITIONS, RECORDS, jsonable

SCHEMA = "lac-results/2 (see docs/SCHEMA.md)"
KINDS = {kind: name for kind, (_record, name) in RECORDS.items()}  # -> results.json list


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


def _cell(session, claim: str, model: str, grid: str) -> str:
    v, exp = session.verdicts.get((claim, model, grid), (None, None))
    if v is not None:
        return v.status + (" FRAGILE" if v.fragile else "") + \
            ("" if exp in (None, v.status) else f" (expected {exp})")
    why = session.grids[grid].not_run(claim) or session.not_run().get((claim, model, grid))
    return f"not run: {why}" if why else "-"


def verdict_matrix(session) -> list[str]:
    """Claims x (model, grid): a verdict, 'not run' with the reason, or '-' (no test ran it)."""
    models = list(dict.fromkeys([*session.checked.models, *(m for _c, m, _g in session.verdicts)]))
    cols = [(m, g) for m in models for g in session.grids]
    shown = [c for c in registry.CLAIMS if session.claims_planned is None
             or c in session.claims_planned or any(k[0] == c for k in session.verdicts)]
    rows = [[claim, *(_cell(session, claim, m, g) for m, g in cols)] for claim in shown]
    return table(["claim", *(f"{m} / {g}" for m, g in cols)], rows)


def claim_details(session) -> list[str]:
    theirs = paper.verdicts(session.thresholds)
    rows = []
    for (claim, m, g), (v, _exp) in sorted(session.verdicts.items()):
        grid = session.grids[g]
        theirs_grid = paper_grid(grid.name, grid.sha256)
        d, pv = v.deciding, theirs.get((claim, paper.PAPER_MODEL, theirs_grid))
        pd = f"{pv.status}: {pv.deciding.name}: {pv.deciding.detail}" if pv and pv.deciding else "-"
        rows.append([claim, f"{m} / {g}", v.status + (" FRAGILE" if v.fragile else ""),
                     d.name if d else "-", d.detail if d else "", d.margin if d else None,
                     (_ci(d, "margin") if d else "").strip() or "-", ", ".join(v.fragile) or "-",
                     pd])
    return table(["claim", "model / grid", "verdict", "deciding part", "numbers", "margin",
                  "margin 95% interval", "fragile parts", "paper (Gemma-2-2B, same rule)"], rows)


def _ci(part, key: str) -> str:
    ci = part.intervals.get(key)
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def interval_table(session) -> list[str]:
    """Every part and precondition of every verdict: its numbers with 95% intervals (cells
    resampled jointly, 2,000 times)."""
    rows = []
    for (claim, m, g), (v, _exp) in sorted(session.verdicts.items()):
        for p in (*v.preconditions, *v.parts):
            nums = "; ".join(f"{k} {fmt(x)}" + _ci(p, k) for k, x in p.numbers.items()
                             if isinstance(x, (int, float)))
            flag = " (fragile)" if p.name in v.fragile else ""
            rows.append([claim, f"{m} / {g}", p.name, p.status + flag, p.margin,
                         _ci(p, "margin").strip() or "-", nums or "-"])
    return table(["claim", "model / grid", "part", "status", "margin", "margin 95% interval",
                  "numbers [95% interval]"], rows)


def sweep_section(r, seconds=None) -> list[str]:
    s, c = r.summary, r.cost
    head = (f"#### {r.model} / {r.grid} grid ({len(r.cells)} cells, plan {r.plan}, "
            f"{findings.took(seconds)}, {c.get('forward_tokens')} forward tokens "
            f"(floor {c.get('floor_tokens')}), {c.get('forward_layer_tokens')} token-layers "
            f"(floor {c.get('floor_layer_tokens')}))")

    def kl(probe, k):
        a = s.kl_add[probe][k]
        return f"{a.median:.4f} [{a.p25:.4f}, {a.p75:.4f}] / {s.kl_null[probe][k].median:.4f}"

    def geo(probe, k):
        return " / ".join(fmt(s.geometry[probe][k][g].median, 3)
                          for g in ("cos_xy_sum", "cos_x_y", "inter_over_xy"))

    return [head, "", "Median [p25, p75] of the 10-token KL (nats), additive / null (h_BB alone):",
            "",
            *table(["probe", *(f"L{k} ({k / s.n_layers:.2f})" for k in s.layers)],
                   [[p, *(kl(p, k) for k in s.layers)] for p in s.probes]), "",
            "Median cos(dXY, dX+dY) / cos(dX, dY) / |Inter|/|dXY|:", "",
            *table(["probe", *(f"L{k}" for k in s.layers)],
                   [[p, *(geo(p, k) for k in s.layers)] for p in s.probes]), ""]


def _paper_markers(r) -> bool:
    """The paper's marker and host numbers sit beside a result only on the paper's own grid."""
    return paper_grid(r.grid, r.grid_sha256) == "markers"


def marker_section(r, seconds=None) -> list[str]:
    s, ps = r.summary, paper.marker_summary()
    theirs = _paper_markers(r)
    counts = [[c, f"{s.any[c]}/{s.n_cells}", f"{s.distinct_mean[c]:.2f}",
               f"{ps.any[c]}/{ps.n_cells}" if theirs else "-",
               f"{ps.distinct_mean[c]:.2f}" if theirs else "-"] for c in MARKER_CONDITIONS]
    cells = [[cell, *(", ".join(r.hits[cell][c]) or "-" for c in MARKER_CONDITIONS)]
             for cell in r.cells]
    return [f"#### {r.model} / {r.grid} (layer {r.layer}, p_last)", "",
            *table(["condition", "any-marker", "distinct mean", "paper Gemma L14 any",
                    "paper distinct mean"], counts), "",
            "Per cell (markers found; texts in results.json):", "",
            *table(["cell", *MARKER_CONDITIONS], cells), ""]


def host_section(r, seconds=None) -> list[str]:
    s, ph, theirs = r.summary, paper.host_summary(), _paper_markers(r)
    rows = [["host, none", f"{s.median_host:.3f}", "-", "host, none",
             f"{ph.median_host:.3f}" if theirs else "-", "-"]]
    for name, pname in zip(r.interventions(), ph.median_kl):  # the paper's sets, its own numbering
        rows.append([name, f"{s.median_kl[name]:.3f}", f"{s.median_gap_closed[name]:.3f}", pname,
                     *((f"{ph.median_kl[pname]:.3f}", f"{ph.median_gap_closed[pname]:.3f}")
                       if theirs else ("-", "-"))])
    return [f"#### {r.model} / {r.grid} (mid layer {r.layer})", "",
            *table(["intervention", "median KL", "median gap closed", "paper (Gemma)", "median KL",
                    "gap closed"], rows), ""]


SECTIONS = {
    "markers": ("## Persona markers (experiment 2)", marker_section,
                "Cells whose 80-token greedy generation contains at least one of the persona's "
                "markers, and mean distinct markers per generation. Single words match on word "
                "boundaries, phrases as substrings, stems (`indemnif`) as word prefixes; "
                "case-insensitive."),
    "host": ("## Host injection and multi-layer injection (experiments 3, 4)", host_section,
             "Median over the marker cells of KL(target || host) on the target's 10 greedy tokens, "
             "and the median gap closed (KL_host - KL_int) / KL_host. Layer sets are the paper's "
             "Gemma sets mapped to this depth (l -> round(l / 26 n))."),
    "sweep": ("## Localized sweep (experiment 1)", sweep_section, ""),
}


def provenance(session) -> list[str]:
    run, template = session.run_info(), session.checked.template
    raw = " (raw prompts: the user text after the tokenizer's BOS; p_user_last = p_last)"
    lines = ["## Provenance", "", f"- run id {run['run_id']}, wall time {run['wall_seconds']} s, "
             f"plan {run['plan']}, token budget {run['token_budget']}, {run['seed']}",
             f"- chat template: {template.name}{raw if template.raw else ''}; swept layers "
             f"{run['layers'] or 'the paper fractions'}; probes {', '.join(run['probes'])}",
             *(f"- grid {label}: {g.source}, sha256 {g.sha256}, experiments "
               f"{', '.join(g.experiments)}" for label, g in session.grids.items()),
             *(f"- no expectations recorded for {k}: the paper's rules decided"
               for k in session.unexpected()),
             f"- lac {run['lac']}, git commit {run['git_commit'] or '-'}"
             f"{' (dirty: uncommitted changes)' if run['git_dirty'] else ''}; claims.yaml sha256 "
             f"{run['claims_sha256']}; started {run['started']}; status {run['status']}",
             f"- torch {run['torch']}, transformers {run['transformers']}, numpy {run['numpy']}, "
             f"{run['platform']}",
             f"- command: pytest {' '.join(run['args'])}"]
    for model, p in session.provenance.items():
        lines.append(f"- **{model}**: {p['source']}; sha256 {p['sha256'] or '-'}; "
                     f"{p['architecture']}, {p['n_layers']} layers, d={p['d_model']}; dtype "
                     f"{p['dtype']}; attention "
                     f"{p['attn_implementation']}; device {p['device']}; torch {p['torch']}, "
                     f"transformers {p['transformers']}; chat template {p['chat_template']} "
                     f"(sha256 {p['chat_template_sha256'] or '-'}); load "
                     f"{session.load_seconds.get(model)} s; {p['decoding']}")
    return lines


def report_markdown(session, figures: dict) -> str:
    run = session.run_info()
    status = run["status"] + ("" if run["status"] == "COMPLETE" else
                              f": {len(run['not_run'])} planned verdicts did not come (the matrix "
                              "says why)")
    cached = run["from_resume_cache"]
    origin = ("Every number below comes from this one run" if not cached else
              f"{len(cached)} experiment results came from the resume cache, computed by earlier "
              "runs under the same key (same code, model, grid, settings and library versions: "
              f"{', '.join(f'{k} from run {v}' for k, v in cached.items())}); the rest from this "
              "run")
    notes = [f"- {note}" for note in run["resume_cache_not_used"]]
    failed = [f"- {what}: {why}" for what, why in run["failed"].items()]
    lines = [f"# lac report: run {run['run_id']}", "", f"**Run status: {status}.** {origin} "
             "(settings and versions in Provenance); the regression gate covered only what ran.",
             "", *(["What failed (the claims that need it did not run):", "", *failed, ""]
                   if failed else []),
             *(["Resume cache entries not used (recomputed):", "", *notes, ""] if notes else []),
             "## Verdicts (claims x models)", "", *verdict_matrix(session), "",
             "## Claim by claim", "", *claim_details(session), "",
             "## Every deciding number, with its 95% interval", "",
             "Intervals resample the grid's cells (2,000 times, fixed seed) and run the same rule "
             "on each resample. A verdict is FRAGILE when a part's margin interval holds 0 and "
             "flipping that part alone would change it; the verdict itself is the rule on the full "
             "grid.", "",
             *interval_table(session), ""]
    for kind, (title, section, intro) in SECTIONS.items():
        results = findings.by_kind(session, kind)
        lines += [title, "", *([intro, ""] if intro else [])] if results else []
        for key, r in results:
            lines += section(r, session.timings.get(key))
            if key in figures:
                lines += [f"![additive KL by layer, {r.model} {r.grid}](figures/{figures[key]})",
                          ""]
    lines += findings.section(session, table, fmt)
    return "\n".join(lines + provenance(session)) + "\n"


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
    return {figure_name(*key[:2]): (lambda path, r=r: kl_by_layer(
        r, path, uncertainty.faithfulness_table(r, c6)))
        for key, r in session.results.items() if key[2] == "sweep"}


def _document(session) -> dict:
    text = json.dumps(results_document(session), indent=1, allow_nan=False)
    return {"results.json": lambda path: path.write_text(text)}


def _report(session) -> dict:
    figures = {key: Path(figure_name(*key[:2])).name for key in session.results
               if key[2] == "sweep"}
    return {"REPORT.md": lambda path: path.write_text(report_markdown(session, figures))}


# Every file a report set holds, declared once: the start check and the publish step both read
# this list, so a file added here is covered by both without another edit.
OUTPUTS = [
    Output(lambda plan: ["results.json"], _document),
    Output(lambda plan: ["REPORT.md"], _report),
    Output(lambda plan: [figure_name(m, g) for m, g in plan.runs("sweep")], _kl_figures),
    Output(findings.figure_names, findings.figure_writers),
]
REPLACES = ("results.json", "REPORT.md", "figures/")  # lac's earlier files a new set supersedes


def report_names(plan: Plan) -> list[str]:
    """Every file a report set of this plan may write."""
    return list(dict.fromkeys(name for out in OUTPUTS for name in out.names(plan)))


def write_report_set(session, folder: Folder) -> tuple[Path, list[str]]:
    """results.json, REPORT.md and figures/ of this session, written into `folder` as one set:
    the folder it went to, and the files that kept it from the folder itself (see Folder)."""
    writers = {name: write for out in OUTPUTS for name, write in out.writers(session).items()}
    return folder.publish(writers, REPLACES, fallback=f"lac-{session.run_id}")
