"""Figures of one model (matplotlib, no torch): each builder returns a Figure, which
style.pair saves as PNG and SVG into a report set. Panels without data are left out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..verdicts import paper
from ..verdicts.kinds import Kind
from ..protocol.grids import paper_grid
from . import style
from .style import BAND_ALPHA, COLORS, DEPTH, KL_LABEL

FIG_PROBES = ("p_last", "g1", "g2")


def paper_curves(ax, grid: str, grid_sha256: str, probe: str) -> list:
    """The paper's published median additive KL of the same grid: grey, each paper model with
    its own dash and marker (style.paper_look)."""
    theirs = paper_grid(grid, grid_sha256)
    out = []
    for pm, pg in sorted(paper.SWEEP_FILES):
        if "3b" in pm or pg != theirs:
            continue
        ps = paper.sweep_summary(pm, pg)
        if probe in ps.kl_add:
            ys = [ps.kl_add[probe][k].median for k in ps.layers]
            ax.plot([k / ps.n_layers for k in ps.layers], ys, ms=4, label=f"paper {pm}",
                    **style.paper_look(pm))
            out += ys
    return out


def share_ylim(axes, values, log: bool = True) -> None:
    """One y range for every panel of a row, so panels compare at a glance."""
    vals = [v for v in values if v is not None and np.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return
    lo, hi = min(vals + [style.KL_THRESHOLD]), max(vals + [style.KL_THRESHOLD])
    lim = (lo / 1.6, hi * 1.6) if log else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    for ax in axes:
        ax.set_ylim(*lim)


def shown_probes(kl_add: dict) -> list[str]:
    """The probes a KL figure draws: the paper's three where swept, else the first swept."""
    return [p for p in FIG_PROBES if p in kl_add] or list(kl_add)[:3]


def kl_by_layer_figure(result, normalized: dict | None = None):
    """Figure 1 style, one row: per probe, median additive KL by depth fraction with its p25-p75
    band, the null control, the 0.1 line and the paper's curves of the same grid; last,
    normalized faithfulness F by depth (filled: informative site; the paper ran no null
    control). One legend below the row, over no data."""
    plt, s = style.plt(), result.summary
    probes = shown_probes(s.kl_add)
    f_rows = [p for p in probes if (normalized or {}).get(p)]
    panels = [*probes, *(["F"] if f_rows else [])]
    fig, axd = plt.subplot_mosaic([panels], figsize=(4.2 * len(panels), 4.6), layout="constrained")
    x = [layer / s.n_layers for layer in s.layers]
    ys = []
    for probe in probes:
        ax, add = axd[probe], [s.kl_add[probe][k] for k in s.layers]
        ax.fill_between(x, [a.p25 for a in add], [a.p75 for a in add], alpha=BAND_ALPHA,
                        color=COLORS["additive"], label=style.BAND_LABEL)
        ax.plot(x, [a.median for a in add], "o-", color=COLORS["additive"],
                label=f"{result.model} additive (median)")
        null = [s.kl_null[probe][k].median for k in s.layers] if s.kl_null else []
        if null:
            ax.plot(x, null, "s-", color=COLORS["null"], label="null (h_BB alone)")
        ys += [a.p25 for a in add] + [a.p75 for a in add] + null
        ys += paper_curves(ax, result.grid, result.grid_sha256, probe)
        ax.axhline(style.KL_THRESHOLD, color=COLORS["threshold"], lw=0.8, ls=":",
                   label="0.1 nats (C1)")
        ax.set(yscale="log", title=probe, xlabel=DEPTH, xlim=(0, 1))
    share_ylim([axd[p] for p in probes], ys)
    axd[probes[0]].set_ylabel(KL_LABEL)
    if f_rows:
        f_panel(axd["F"], s, {p: normalized[p] for p in f_rows}, len(result.cells))
    style.legend_below(fig)
    fig.suptitle(f"Additive substitution KL and normalized faithfulness, {result.model}, "
                 f"{result.grid} grid")
    return fig


F_DODGE = 0.012  # depth fraction between the probes' points at one layer, so bars stay apart


def f_panel(ax, s, normalized: dict, n_cells: int) -> None:
    """F by depth, one colour and marker per probe, the probes' points at a layer set a little
    apart; an undefined F (null KL 0) is drawn as undefined."""
    values = []
    for i, (probe, per) in enumerate(normalized.items()):
        color, marker = style.probe_color(probe), style.probe_marker(probe)
        shift = (i - (len(normalized) - 1) / 2) * F_DODGE
        pts = [(int(k) / s.n_layers + shift, v) for k, v in per.items()]
        ok = [(xv, v) for xv, v in pts if v["F"] is not None]
        if ok:
            ax.plot([p[0] for p in ok], [p[1]["F"] for p in ok], "-", color=color,
                    marker=marker, label=f"F, {probe}")
        for xv, v in ok:
            ax.plot([xv], [v["F"]], marker, color=color,
                    mfc=color if v["informative"] else "white")
            if v["interval"]:
                ax.plot([xv, xv], v["interval"], "-", color=color, alpha=0.5, lw=2)
        values += [v["F"] for _x, v in ok]
        for xv, _v in [(xv, v) for xv, v in pts if v["F"] is None]:
            style.undefined(ax, xv, 0.0, f"{probe}: undefined (null KL 0, n={n_cells})")
    style.share_f_limits(ax, values)
    ax.set(xlabel=DEPTH, ylabel=style.F_LABEL, xlim=(0, 1))
    ax.set_title("normalized faithfulness F\n(filled: informative, median null KL >= 0.05;\n"
                 "bars: 95% interval; no paper curve: it has no null runs)", fontsize=8)


@dataclass(frozen=True)
class Heatmap:
    """One persona x task panel of a model's heatmaps. The row it sits in (its grid) and how it
    is drawn (its kind) are fields, so the title is text only: retitling a panel moves it to no
    other row, colour map or scale."""

    grid: str  # the run's label of the grid: one row per grid
    kind: Kind  # Kind.SWEEP: additive KL, its own scale; Kind.MARKERS: a scale per grid's row
    title: str
    matrix: tuple  # (personas, tasks, values)
    paper: tuple | None = None  # the paper's (personas, tasks, values) of the same cells


HEATMAP_CMAPS = {Kind.SWEEP: "viridis", Kind.MARKERS: "magma"}  # the kinds a heatmap draws


def heatmap_rows(panels: list[Heatmap]) -> list[list[Heatmap]]:
    """Panels grouped by grid, in order: a grid's KL panel and its marker panels side by side,
    one row per grid."""
    rows = {}
    for panel in panels:
        rows.setdefault(panel.grid, []).append(panel)
    return list(rows.values())


def heatmaps_figure(model: str, panels: list[Heatmap]):
    """Persona x task heatmaps of one model, one row per grid, centred; each KL panel has its
    own colour scale (grids differ tenfold), a grid's marker panels share one, all from 0, each
    with its colourbar; a panel without a finite value is left out; the paper's value of a cell
    is printed under ours."""
    plt = style.plt()
    panels = [p for p in panels if np.isfinite(p.matrix[2]).any()]
    rows = heatmap_rows(panels)
    ncols = max([len(r) for r in rows] + [1])
    fig = plt.figure(figsize=(5.4 * ncols, 4.8 * max(len(rows), 1)), layout="constrained")
    grid = fig.add_gridspec(max(len(rows), 1), 2 * ncols)  # half columns: short rows centre
    for r, row in enumerate(rows):
        markers = [float(np.nanmax(p.matrix[2])) for p in row if p.kind == Kind.MARKERS]
        for c, panel in enumerate(row):
            start = ncols - len(row) + 2 * c
            top = (max(markers + [1.0]) if panel.kind == Kind.MARKERS
                   else max(float(np.nanmax(panel.matrix[2])), 1e-9))
            _heatmap(fig, fig.add_subplot(grid[r, start:start + 2]), panel, top)
    fig.suptitle(f"Where composition breaks: {model} (rows: persona, columns: task)")
    return fig


def ink(rgb) -> str:
    """Black or white, whichever contrasts more with a cell's colour (WCAG luminance): the
    better of the two is always at least 4.58:1."""
    return "black" if contrast(rgb, (0, 0, 0)) >= contrast(rgb, (1, 1, 1)) else "white"


def luminance(rgb) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a, b) -> float:
    """WCAG contrast ratio of two colours (1 to 21; 4.5 is the floor for small text)."""
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def _heatmap(fig, ax, panel: Heatmap, top) -> None:
    (personas, tasks, values), theirs = panel.matrix, panel.paper
    im = ax.imshow(values, aspect="auto", vmin=0, vmax=top, cmap=HEATMAP_CMAPS[panel.kind])
    ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(len(personas)), personas, fontsize=9)
    small = len(tasks) > 4
    for (i, j), v in np.ndenumerate(values):
        if not np.isfinite(v):
            continue
        color = ink(im.cmap(im.norm(v)))
        ax.text(j, i - (0.15 if theirs else 0), f"{v:.2g}", ha="center", va="center",
                fontsize=8 if small else 9, color=color)
        if theirs is not None and np.isfinite(theirs[2][i, j]):
            ax.text(j, i + 0.25, f"paper {theirs[2][i, j]:.0f}", ha="center", va="center",
                    fontsize=8, color=color, style="italic")
    ax.set_title(panel.title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)


def swap_title(swaps: dict) -> str:
    ns = [str(sw["eligible"]) for sw in swaps.values()]
    return ("persona swap dX_A -> dX_B: share switched, 95% Wilson interval\nover the eligible "
            f"swaps (clean has A's markers), n = {' / '.join(ns) or 0}")


def dose_and_swap_figure(rows: dict, swaps: dict, models=()):
    """Markers and KL to the clean run (axis from 0) against the dose a (one line per model /
    grid), and the swap share against its base rate, each a point with its Wilson interval
    over the eligible swaps, n in the title; an undefined share (no eligible swap) is drawn as
    such. rows: "model / grid" -> dose table; swaps: "model / grid" -> breakdown.swap_share."""
    plt = style.plt()
    fig, (m_ax, k_ax, s_ax) = plt.subplots(1, 3, figsize=(15, 4.8), layout="constrained")
    models = list(models) or [k.split(" / ")[0] for k in rows]
    grids = list(dict.fromkeys(k.split(" / ")[-1] for k in rows))
    for label, table in rows.items():
        model, grid = label.split(" / ")[0], label.split(" / ")[-1]
        look = {"color": style.model_color(model, models),
                "marker": style.GRID_MARKERS[grids.index(grid) % len(style.GRID_MARKERS)]}
        a = [r["a"] for r in table]
        m_ax.plot(a, [r["any_marker"] / r["n_cells"] for r in table], "-", label=label,
                  clip_on=False, **look)  # a share of 0 sits on the axis, seen whole
        k_ax.plot(a, [r["median_kl"] for r in table], "-", label=label, **look)
    m_ax.set(xlabel="dose a (additive + (a - 1) dX)", ylabel="share of cells with a marker",
             title="persona markers vs dose", ylim=style.SHARE_LIM)
    k_ax.set(xlabel="dose a", ylabel="median 10-token KL to clean (nats)",
             title="distance from the clean run vs dose")
    k_ax.set_ylim(0, max([k_ax.get_ylim()[1], 1e-9]))
    for ax in (m_ax, k_ax):
        ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
    names = list(swaps)
    for i, n in enumerate(names):
        for dx, key, color in ((-0.15, "share", COLORS["swap"]),
                               (0.15, "base_rate", COLORS["base_rate"])):
            value, interval = swaps[n][key], swaps[n].get(f"{key}_interval")
            if value is None:
                style.undefined(s_ax, i + dx, 0.02, f"undefined (n={swaps[n]['eligible']})")
                continue
            lo, hi = interval or (value, value)
            s_ax.errorbar([i + dx], [value], yerr=[[value - lo], [hi - value]], fmt="o",
                          color=color, ms=7, capsize=5, lw=2, clip_on=False, zorder=3)
    from matplotlib.lines import Line2D

    s_ax.set_xticks(range(len(names)),
                    [f"{n}\n(n={swaps[n]['eligible']})" for n in names], fontsize=8)
    s_ax.set(ylabel="share of eligible swaps", title=swap_title(swaps), ylim=style.SHARE_LIM,
             xlim=(-0.6, max(len(names), 1) - 0.4))
    s_ax.title.set_fontsize(9)
    style.legend_below(fig, extra=[
        Line2D([], [], color=COLORS["swap"], marker="o",
               label="swap: A's markers gone, B's appear"),
        Line2D([], [], color=COLORS["base_rate"], marker="o",
               label="base rate: B's markers in clean (A, Y)")])
    return fig
