"""The report's "beyond the paper" part: normalized faithfulness F and C6 against C1L, where
composition breaks (heatmaps, failing cells worst first, anti-steering), dose and swap."""
from __future__ import annotations

from . import breakdown, figures
from .style import pair
from ..verdicts import paper, uncertainty
from ..verdicts.kinds import Kind
from ..verdicts.results import plain
from ..protocol.grids import paper_grid


def extra(kind: str, r, thresholds) -> dict:
    """What results.json holds beside a record: its summary, F with intervals, dose and swap."""
    if kind == Kind.STEERING:
        return {"dose_table": breakdown.dose_table(r), "swap_share": breakdown.swap_share(r)}
    out = {"summary": plain(r.summary)}
    if kind == Kind.SWEEP:
        out["faithfulness"] = uncertainty.faithfulness_table(r, thresholds.C6.min_null_kl)
    return out



def by_kind(src, kind: str) -> list:
    return sorted((k, r) for k, r in src.results.items() if k[2] == kind)


DOSE_FIGURE = "figures/dose_and_swap.png"


def heatmap_name(model: str) -> str:
    return f"figures/heatmaps_{model}.png"


def figure_names(plan) -> list[str]:
    """The figures below a plan may write (report.Plan): the start check reads these names."""
    models = dict.fromkeys(m for kind in (Kind.SWEEP, Kind.MARKERS) for m, _g in plan.runs(kind))
    return [*(heatmap_name(m) for m in models), *([DOSE_FIGURE] if plan.runs(Kind.MARKERS) else [])]


def figure_writers(src) -> dict:
    """Report-set file name -> writer, for the heatmaps (per model) and the dose/swap figure,
    each a PNG and its SVG."""
    writers = {}
    for model in dict.fromkeys(k[0] for k in src.results):
        panels = heatmap_panels(src, model)
        if panels:
            writers.update(pair(heatmap_name(model),
                                lambda m=model, p=panels: figures.heatmaps_figure(m, p)))
    steer = by_kind(src, Kind.STEERING)
    if steer:
        rows = {f"{k[0]} / {k[1]}": breakdown.dose_table(r) for k, r in steer}
        swaps = {f"{k[0]} / {k[1]}": breakdown.swap_share(r) for k, r in steer}
        models = list(src.checked.models)
        writers.update(pair(DOSE_FIGURE,
                            lambda: figures.dose_and_swap_figure(rows, swaps, models)))
    return writers


def heatmap_panels(src, model: str) -> list[figures.Heatmap]:
    """A result's key names its grid by the run's label (its record's .grid is the name)."""
    panels = []
    for (m, grid, _k), r in by_kind(src, Kind.SWEEP):
        layer, kls = breakdown.deciding_kl(r, src.thresholds) if m == model else (None, {})
        if kls:
            panels.append(figures.Heatmap(
                grid, Kind.SWEEP, f"{grid}: additive KL (nats), p_last L{layer} (C1's layer)",
                breakdown.matrix(src.grids[grid].cells, kls)))
    for (m, grid, _k), r in by_kind(src, Kind.MARKERS):
        theirs, cells = _paper_hits(r), src.grids[grid].cells
        if m == model:
            for cond in ("clean", "additive", "bare"):
                panels.append(figures.Heatmap(
                    grid, Kind.MARKERS, f"{grid}: distinct markers, {cond}",
                    breakdown.matrix(cells, {c: len(r.hits[c][cond]) for c in r.cells}),
                    breakdown.matrix(cells, {c: len(theirs[c][cond]) for c in r.cells})
                    if theirs else None))
    return panels


def _paper_hits(r) -> dict | None:
    """The paper's own per-cell marker hits (Gemma-2-2B) when the grid's cells are its cells."""
    data = paper.marker_data()["results"]
    if paper_grid(r.grid, r.grid_sha256) != "markers" or set(r.cells) != set(data):
        return None
    names = {"clean": "clean", "additive": "additive", "bare": "bare"}
    return {c: {k: data[c][v]["hits"] for k, v in names.items()} for c in r.cells}


def took(seconds) -> str:
    """An experiment's wall time, or where its result came from."""
    return "from the resume cache" if seconds is None else f"{seconds} s"


def section(src, table, fmt) -> list[str]:
    """REPORT.md lines: F tables and C1L vs C6, where composition breaks, dose and swap."""
    lines = ["## Beyond the paper: normalized localization (C6)", "",
             "F = 1 - median additive KL / median null KL at each site (1: the sum explains all "
             "the site carries; 0: no better than h_BB alone), with its 95% interval (cells "
             "resampled as for the verdicts); * marks informative sites (median null KL >= "
             f"{src.thresholds.C6.min_null_kl}), '-' an undefined F (null KL 0).", ""]
    for (m, g, _k), r in by_kind(src, Kind.SWEEP):
        f = uncertainty.faithfulness_table(r, src.thresholds.C6.min_null_kl)

        def cell(v):
            if v["F"] is None:
                return "-"
            ci = v["interval"]
            return (f"{v['F']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                    + ("*" if v["informative"] else ""))

        lines += [f"#### {m} / {g}", "", *table(["probe", *(f"L{k}" for k in r.layers)],
                                                [[p, *(cell(f[p][k]) for k in r.layers)]
                                                 for p in f]), "", _agreement(src, m, g), ""]
    return lines + _breaks(src, table, fmt) + _dose_swap(src, table)


def _agreement(src, model: str, grid: str) -> str:
    a = src.verdicts.get(("C1L", model, grid), (None,))[0]
    b = src.verdicts.get(("C6", model, grid), (None,))[0]
    if a is None or b is None:
        return "C1L against C6: not both ran."
    if a.status == b.status:
        return f"C1L {a.status}, C6 {b.status}: they agree."
    if a.status == "HOLDS" and b.status == "FAILS":
        return ("C1L HOLDS but C6 FAILS: additivity looks localized in raw KL only because the "
                "site matters more with depth; the share the sum leaves unexplained does not "
                "double.")
    return f"C1L {a.status}, C6 {b.status}: they disagree (C6: {b.explain()})."


def _breaks(src, table, fmt) -> list[str]:
    lines = ["## Where composition breaks", "",
             "Persona x task heatmaps per model: the additive KL at C1's deciding layer (p_last) "
             "and the distinct persona markers under clean / additive / bare (in grey, the "
             "paper's Gemma-2-2B count of the same cell where the grid is the paper's).", ""]
    for model in dict.fromkeys(k[0] for k in src.results):
        if heatmap_panels(src, model):
            lines += [f"![heatmaps {model}]({heatmap_name(model)})", ""]
    rows = []
    for f in src.doc["cell_failures"]:  # worst first, as the run ranked them (resultsfile)
        if f["cells"] and f.get("worst") is not None:
            rows.append([f["check"], f"{f['model']} / {f['grid']}",
                         f"{len(f['cells'])}/{f['n_cells']}",
                         ", ".join(f"{c} ({'?' if s is None else f'{s:.3g}'})"
                                   for c, s in f["worst"][:10])
                         + (f" (severity: {f['severity_error']})"
                            if f.get("severity_error") else "")])
    lines += ["Cells failing a per-cell check, worst first (how far from passing):", "",
              *(table(["check", "model / grid", "failing", "cells (severity)"], rows) if rows
                else ["No cell failed a per-cell check."]), ""]
    anti = []
    for (m, g, _k), r in by_kind(src, Kind.MARKERS):
        a = breakdown.anti_steering(r)
        anti.append([f"{m} / {g}", f"{a['count']}/{a['eligible']}", fmt(a["share"], 3),
                     f"{a['eligible']}/{a['n_cells']}", ", ".join(a["cells"]) or "-"])
    if anti:
        lines += ["Anti-steering: cells whose additive generation holds fewer distinct persona "
                  "markers than the bare task prompt's, among the cells whose clean text has a "
                  "marker:", "",
                  *table(["model / grid", "anti-steering", "share", "cells with clean markers",
                          "cells"], anti), ""]
    return lines


def _dose_swap(src, table) -> list[str]:
    steer = by_kind(src, Kind.STEERING)
    if not steer:
        return []
    lines = ["## How much persona a vector carries: dose and swap", "",
             "Dose: at the marker site (p_last, the layer C3 uses) the additive vector plus "
             "(a - 1) dX; a = 1 is the additive condition (its generation reused). KL: 10-token "
             "window KL to the clean run, teacher-forced on its greedy tokens. Swap: h_AY - dX_A "
             "+ dX_B with B the next persona in the grid (or every other, --lac-swap-pairs all).",
             "", f"![dose and swap]({DOSE_FIGURE})", ""]
    for (m, g, _k), r in steer:
        dose = breakdown.dose_table(r)
        sw = breakdown.swap_share(r)
        lines += [f"#### {m} / {g} (layer {r.layer}, {r.cost.get('forward_tokens')} forward "
                  f"tokens, {took(src.timings.get((m, g, Kind.STEERING)))})", "",
                  *table(["a", "any-marker", "distinct mean", "median KL to clean"],
                         [[f"{x['a']:g}", f"{x['any_marker']}/{x['n_cells']}",
                           f"{x['distinct_mean']:.2f}", x["median_kl"]] for x in dose]), "",
                  f"Swap: {sw['switched']}/{sw['eligible']} swaps (of {sw['swaps']}; those whose "
                  f"clean text has A's markers) lose A's markers and gain B's: share "
                  f"{_pct(sw['share'])}, against a base rate of B's markers in the clean text of "
                  f"{_pct(sw['base_rate'])}; A's markers kept in {sw['own_kept']}, B's appeared in "
                  f"{sw['other_appeared']}." + (f" Switched: {', '.join(sw['cells'])}."
                                                if sw["cells"] else ""), ""]
    return lines


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"

