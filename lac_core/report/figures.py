"""Figures of one model (matplotlib, no torch): each builder returns a Figure, which
style.pair saves as PNG and SVG into a report set. Panels without data are left out."""
from __future__ import annotations

import numpy as np

from ..verdicts import paper
from ..protocol.grids import paper_grid
from . import style
from .style import BAND_ALPHA, COLORS, DEPTH, KL_LABEL, PAPER_MARKERS, PAPER_STYLE

FIG_PROBES = ("p_last", "g1", "g2")


def paper_curves(ax, grid: str, grid_sha256: str, probe: str) -> list:
    """The paper's published median additive KL of the same grid, in the paper's one style."""
    theirs = paper_grid(grid, grid_sha256)
    out = []
    for pm, pg in sorted(paper.SWEEP_FILES):
        if "3b" in pm or pg != theirs:
            continue
        ps = paper.sweep_summary(pm, pg)
        if probe in ps.kl_add:
            ys = [ps.kl_add[probe][k].median for k in ps.layers]
            ax.plot([k / ps.n_layers for k in ps.layers], ys, marker=PAPER_MARKERS.get(pm, "."),
                    ms=4, label=f"paper {pm}", **PAPER_STYLE)
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
    """Figure 1 style: median additive KL by depth fraction with its p25-p75 band, the null
    control, the 0.1 line and the paper's curves of the same grid; below, normalized
    faithfulness F by depth (filled: informative site; the paper ran no null control)."""
    plt, s = style.plt(), result.summary
    probes = shown_probes(s.kl_add)
    f_rows = [p for p in probes if (normalized or {}).get(p)]
    layout = [probes] + ([["F"] * len(probes)] if f_rows else [])
    fig, axd = plt.subplot_mosaic(layout, figsize=(4 * len(probes) + 1, 3.6 * len(layout)))
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
    axd[probes[-1]].legend(fontsize=7, loc="lower right")
    if f_rows:
        f_panel(axd["F"], s, {p: normalized[p] for p in f_rows}, len(result.cells))
    fig.suptitle(f"Additive substitution KL and normalized faithfulness, {result.model}, "
                 f"{result.grid} grid")
    fig.tight_layout()
    return fig


def f_panel(ax, s, normalized: dict, n_cells: int) -> None:
    """F by depth, one line per probe; an undefined F (null KL 0) is drawn as undefined."""
    values = []
    for probe, per in normalized.items():
        color = style.probe_color(probe)
        pts = [(int(k) / s.n_layers, v) for k, v in per.items()]
        ok = [(xv, v) for xv, v in pts if v["F"] is not None]
        if ok:
            ax.plot([p[0] for p in ok], [p[1]["F"] for p in ok], "-", color=color, label=probe)
        for xv, v in ok:
            ax.plot([xv], [v["F"]], "o", color=color, mfc=color if v["informative"] else "white")
            if v["interval"]:
                ax.plot([xv, xv], v["interval"], "-", color=color, alpha=0.35, lw=3)
        values += [v["F"] for _x, v in ok]
        for xv, _v in [(xv, v) for xv, v in pts if v["F"] is None]:
            style.undefined(ax, xv, 0.0, f"{probe}: undefined (null KL 0, n={n_cells})")
    style.share_f_limits(ax, values)
    ax.set(xlabel=DEPTH, ylabel=style.F_LABEL, xlim=(0, 1))
    ax.set_title("normalized faithfulness F by depth (filled: informative, median null KL >= "
                 "0.05; bars: 95% interval; the paper has no null runs, so no paper curve)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower left")


def heatmaps_figure(model: str, panels: list[tuple[str, tuple, tuple | None]]):
    """Persona x task heatmaps of one model: `panels` is [(title, (personas, tasks, values),
    the paper's (personas, tasks, values) or None)]. KL panels on the first row share one
    colour scale, marker panels on the second another, both from 0; a panel without a finite
    value is left out; the paper's value of a cell is printed under ours in grey."""
    plt = style.plt()
    panels = [p for p in panels if np.isfinite(p[1][2]).any()]
    grids = dict.fromkeys(p[0].split(":")[0] for p in panels if "markers" in p[0])
    rows = [r for r in ([p for p in panels if "markers" not in p[0]],
                        *([p for p in panels if "markers" in p[0] and p[0].startswith(f"{g}:")]
                          for g in grids)) if r]
    ncols = max([len(r) for r in rows] + [1])
    fig, axes = plt.subplots(max(len(rows), 1), ncols, figsize=(5.4 * ncols, 4.8 * len(rows)),
                             squeeze=False)
    tops = {kind: max([float(np.nanmax(v)) for t, (_p, _t, v), _ in panels
                       if ("markers" in t) == kind] + [1.0 if kind else 1e-9])
            for kind in (True, False)}  # one scale for every KL panel, one for every marker one
    for r, row in enumerate(rows):
        top = tops["markers" in row[0][0]]
        for c in range(ncols):
            if c >= len(row):
                axes[r][c].remove()
                continue
            _heatmap(fig, axes[r][c], *row[c], top)
    if not rows:
        axes[0][0].remove()
    fig.suptitle(f"Where composition breaks: {model} (rows: persona, columns: task)")
    fig.tight_layout()
    return fig


def _heatmap(fig, ax, title, matrix, theirs, top) -> None:
    personas, tasks, values = matrix
    cmap = "magma" if "markers" in title else "viridis"
    im = ax.imshow(values, aspect="auto", vmin=0, vmax=top, cmap=cmap)
    ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(len(personas)), personas, fontsize=9)
    small = len(tasks) > 4
    for (i, j), v in np.ndenumerate(values):
        if not np.isfinite(v):
            continue
        r, g, b, _a = im.cmap(im.norm(v))
        ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(j, i - (0.15 if theirs else 0), f"{v:.2g}", ha="center", va="center",
                fontsize=7 if small else 9, color=ink)
        if theirs is not None and np.isfinite(theirs[2][i, j]):
            ax.text(j, i + 0.25, f"paper {theirs[2][i, j]:.0f}", ha="center", va="center",
                    fontsize=7, color=ink, style="italic", alpha=0.75)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)


def dose_and_swap_figure(rows: dict, swaps: dict, models=()):
    """Markers and KL to the clean run against the dose a (one line per model / grid), and the
    swap share against its base rate; an undefined share (no eligible swap) is drawn as such.
    rows: "model / grid" -> dose table; swaps: "model / grid" -> swap share."""
    plt = style.plt()
    fig, (m_ax, k_ax, s_ax) = plt.subplots(1, 3, figsize=(14, 4))
    models = list(models) or [k.split(" / ")[0] for k in rows]
    grids = list(dict.fromkeys(k.split(" / ")[-1] for k in rows))
    for label, table in rows.items():
        model, grid = label.split(" / ")[0], label.split(" / ")[-1]
        look = {"color": style.model_color(model, models),
                "marker": style.GRID_MARKERS[grids.index(grid) % len(style.GRID_MARKERS)]}
        a = [r["a"] for r in table]
        m_ax.plot(a, [r["any_marker"] / r["n_cells"] for r in table], "-", label=label, **look)
        k_ax.plot(a, [r["median_kl"] for r in table], "-", label=label, **look)
    m_ax.set(xlabel="dose a (additive + (a - 1) dX)", ylabel="share of cells with a marker",
             title="persona markers vs dose", ylim=style.SHARE_LIM)
    k_ax.set(xlabel="dose a", ylabel="median 10-token KL to clean (nats)",
             title="distance from the clean run vs dose")
    for ax in (m_ax, k_ax):
        ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
    m_ax.legend(fontsize=8)
    names = list(swaps)
    for i, n in enumerate(names):
        for dx, key, color in ((-0.2, "share", COLORS["swap"]),
                               (0.2, "base_rate", COLORS["base_rate"])):
            value = swaps[n][key]
            if value is None:
                style.undefined(s_ax, i + dx, 0.02, f"undefined (n={swaps[n]['eligible']})")
            else:
                s_ax.bar(i + dx, value, 0.4, color=color)
    from matplotlib.patches import Patch

    s_ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20, ha="right")
    s_ax.legend(handles=[Patch(color=COLORS["swap"], label="A gone, B appears"),
                         Patch(color=COLORS["base_rate"], label="base rate: B in clean (A, Y)")],
                fontsize=8)
    s_ax.set(ylabel="share of swaps (clean has A's markers)", title="persona swap dX_A -> dX_B",
             ylim=style.SHARE_LIM, xlim=(-0.7, max(len(names), 1) - 0.3))
    fig.tight_layout()
    return fig
