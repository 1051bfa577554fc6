"""The report set of a session: results.json, REPORT.md and figures (no torch)."""
# Every table is built by `table`; every number comes from the session that writes it.
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from . import paper, rules
from .figures import kl_by_layer
from .results import MARKER_CONDITIONS, jsonable

SCHEMA = "lac-results/2 (see docs/SCHEMA.md)"
KINDS = {"sweep": "sweeps", "markers": "markers", "host": "host_injection"}


def fmt(x, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


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
            doc[KINDS[kind]].append({**asdict(r), "summary": asdict(r.summary)})
    return jsonable(doc)


def _cell(session, claim: str, model: str, grid: str) -> str:
    v, exp = session.verdicts.get((claim, model, grid), (None, None))
    if v is not None:
        return v.status + ("" if exp in (None, v.status) else f" (expected {exp})")
    why = session.grids[grid].not_run(claim)
    return f"not run: {why}" if why else "-"


def verdict_matrix(session) -> list[str]:
    """Claims x (model, grid): a verdict, 'not run' with the reason, or '-' (no test ran it)."""
    models = list(dict.fromkeys(m for (_c, m, _g) in session.verdicts))
    cols = [(m, g) for m in models for g in session.grids]
    rows = [[claim, *(_cell(session, claim, m, g) for m, g in cols)] for claim in rules.CLAIMS]
    return table(["claim", *(f"{m} / {g}" for m, g in cols)], rows)


def claim_details(session) -> list[str]:
    theirs = paper.verdicts(session.thresholds)
    rows = []
    for (claim, m, g), (v, _exp) in sorted(session.verdicts.items()):
        d, pv = v.deciding, theirs.get((claim, paper.PAPER_MODEL, g))
        pd = f"{pv.status}: {pv.deciding.name}: {pv.deciding.detail}" if pv and pv.deciding else "-"
        rows.append([claim, f"{m} / {g}", v.status, d.name if d else "-", d.detail if d else "",
                     d.margin if d else None, pd])
    return table(["claim", "model / grid", "verdict", "deciding part", "numbers", "margin",
                  "paper (Gemma-2-2B, same rule)"], rows)


def sweep_section(r, seconds=None) -> list[str]:
    s, c = r.summary, r.cost
    head = (f"#### {r.model} / {r.grid} grid ({len(r.cells)} cells, plan {r.plan}, "
            f"{seconds} s, {c.get('forward_tokens')} forward tokens "
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


def marker_section(r, seconds=None) -> list[str]:
    s, ps = r.summary, paper.marker_summary()
    counts = [[c, f"{s.any[c]}/{s.n_cells}", f"{s.distinct_mean[c]:.2f}",
               f"{ps.any[c]}/{ps.n_cells}", f"{ps.distinct_mean[c]:.2f}"]
              for c in MARKER_CONDITIONS]
    cells = [[cell, *(", ".join(r.hits[cell][c]) or "-" for c in MARKER_CONDITIONS)]
             for cell in r.cells]
    return [f"#### {r.model} / {r.grid} (layer {r.layer}, p_last)", "",
            *table(["condition", "any-marker", "distinct mean", "paper Gemma L14 any",
                    "paper distinct mean"], counts), "",
            "Per cell (markers found; texts in results.json):", "",
            *table(["cell", *MARKER_CONDITIONS], cells), ""]


def host_section(r, seconds=None) -> list[str]:
    s, ph = r.summary, paper.host_summary()
    rows = [["host, none", f"{s.median_host:.3f}", "-", "host, none", f"{ph.median_host:.3f}", "-"]]
    for name, pname in zip(r.interventions(), ph.median_kl):  # the paper's sets, its own numbering
        rows.append([name, f"{s.median_kl[name]:.3f}", f"{s.median_gap_closed[name]:.3f}", pname,
                     f"{ph.median_kl[pname]:.3f}", f"{ph.median_gap_closed[pname]:.3f}"])
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
             f"- numpy {run['numpy']}, {run['platform']}",
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
    lines = [f"# lac report: run {session.run_info()['run_id']}", "",
             "Every number below comes from this one run (settings and versions in Provenance).",
             "",
             "## Verdicts (claims x models)", "", *verdict_matrix(session), "",
             "## Claim by claim", "", *claim_details(session), ""]
    for kind, (title, section, intro) in SECTIONS.items():
        results = sorted((k, r) for k, r in session.results.items() if k[2] == kind)
        lines += [title, "", *([intro, ""] if intro else [])] if results else []
        for key, r in results:
            lines += section(r, session.timings.get(key))
            if key in figures:
                lines += [f"![additive KL by layer, {r.model} {r.grid}](figures/{figures[key]})",
                          ""]
    return "\n".join(lines + provenance(session)) + "\n"


def write_report_set(session, out: Path) -> None:
    """results.json, REPORT.md and figures/ of this session into `out`, each file atomically;
    figures of earlier runs that this one does not redraw are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("figures/kl_by_layer_*.png"):
        stale.unlink()
    figures = {key: kl_by_layer(r, out / "figures" / f"kl_by_layer_{key[0]}_{key[1]}.png")
               for key, r in session.results.items() if key[2] == "sweep"}
    _atomic(out / "results.json", json.dumps(results_document(session), indent=1, allow_nan=False))
    _atomic(out / "REPORT.md", report_markdown(session, figures))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
