"""Report sections of the behavioural experiments (markers, host and multi-layer injection)."""
from __future__ import annotations

from . import paper
from .results import MARKER_CONDITIONS


def marker_tables(state) -> list[str]:
    if not state.markers:
        return []
    ps = paper.marker_summary()
    lines = ["## Persona markers (experiment 2)", "",
             "Cells (of 24) whose 80-token greedy generation contains at least one of the persona's markers, "
             "and mean distinct markers per generation. Single words match on word boundaries, phrases as "
             "substrings, stems (`indemnif`) as word prefixes; case-insensitive.", ""]
    for model, r in state.markers.items():
        s = r.summary()
        lines += [f"#### {model} (layer {r.layer}, p_last)", "",
                  "| condition | any-marker | distinct mean | paper Gemma L14 any | paper distinct mean |",
                  "|---|---|---|---|---|"]
        for c in MARKER_CONDITIONS:
            lines.append(f"| {c} | {s.any[c]}/{s.n_cells} | {s.distinct_mean[c]:.2f} | {ps.any[c]}/{ps.n_cells} | "
                         f"{ps.distinct_mean[c]:.2f} |")
        lines += ["", "Per cell (markers found; texts in results.json):", "",
                  "| cell | clean | additive | remove_x | bare |", "|---|---|---|---|---|"]
        for cell in r.cells:
            lines.append(f"| {cell} | " + " | ".join(", ".join(r.hits[cell][c]) or "-" for c in MARKER_CONDITIONS)
                         + " |")
        lines.append("")
    return lines


def host_tables(state) -> list[str]:
    if not state.hosts:
        return []
    ph = paper.host_summary()
    paper_rows = list(ph.median_kl)  # oracle, cached, then the five sets in the paper's layer numbering
    lines = ["## Host injection and multi-layer injection (experiments 3, 4)", "",
             "Median over the 24 marker cells of KL(target || host) on the target's 10 greedy tokens, and the "
             "median gap closed (KL_host - KL_int) / KL_host. Layer sets are the paper's Gemma sets mapped to "
             "this depth (l -> round(l / 26 n)).", ""]
    for model, r in state.hosts.items():
        s = r.summary()
        lines += [f"#### {model} (mid layer {r.layer})", "",
                  "| intervention | median KL | median gap closed | paper (Gemma) | median KL | gap closed |",
                  "|---|---|---|---|---|---|",
                  f"| host, none | {s.median_host:.3f} | - | host, none | {ph.median_host:.3f} | - |"]
        for name, pname in zip(r.interventions(), paper_rows):
            lines.append(f"| {name} | {s.median_kl[name]:.3f} | {s.median_gap_closed[name]:.3f} | {pname} | "
                         f"{ph.median_kl[pname]:.3f} | {ph.median_gap_closed[pname]:.3f} |")
        lines.append("")
    return lines
