"""Figures of the report (matplotlib, no torch); reportset.py writes them as part of a set."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..verdicts import paper
from ..protocol.grids import paper_grid

FIG_PROBES = ("p_last", "g1", "g2")


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path.name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kl_by_layer(result, path: Path, normalized: dict | None = None) -> str:
    """Figure 1 style: median additive KL by depth fraction, p25-p75 band, null dashed, the 0.1
    line, and the paper's Gemma / Qwen-1.5B curves of the same grid in grey. Below, normalized
    faithfulness F by depth, one line per probe (filled: informative site; the paper ran no null
    control, so it has no F to show)."""
    plt = _plt()
    s = result.summary
    fig, axd = plt.subplot_mosaic([list(FIG_PROBES), ["F"] * len(FIG_PROBES)],
                                  figsize=(12, 7), height_ratios=(1, 0.9))
    x = [layer / s.n_layers for layer in s.layers]
    for probe in FIG_PROBES:
        ax = axd[probe]
        if probe not in s.kl_add:
            continue
        add = [s.kl_add[probe][k] for k in s.layers]
        ax.fill_between(x, [a.p25 for a in add], [a.p75 for a in add], alpha=0.25, color="C0")
        ax.plot(x, [a.median for a in add], "o-", color="C0", label=f"{result.model} additive")
        ax.plot(x, [s.kl_null[probe][k].median for k in s.layers], "s--", color="C3",
                label="null (h_BB alone)")
        for (pm, pg), style in zip(sorted(paper.SWEEP_FILES), (":", "-.", "--", ":", "-.")):
            ps = paper.sweep_summary(pm, pg) if "3b" not in pm and \
                pg == paper_grid(result.grid, result.grid_sha256) else None
            if ps and probe in ps.kl_add:
                ax.plot([k / ps.n_layers for k in ps.layers],
                        [ps.kl_add[probe][k].median for k in ps.layers], style, color="grey",
                        label=f"paper {pm}")
        ax.axhline(0.1, color="k", lw=0.8, ls=":", label="0.1 nats")
        ax.set_yscale("log")
        ax.set_title(probe)
        ax.set_xlabel("depth fraction (layer / n_layers)")
    axd[FIG_PROBES[0]].set_ylabel("median 10-token KL (nats)")
    axd[FIG_PROBES[-1]].legend(fontsize=7, loc="lower right")
    _f_panel(axd["F"], s, normalized or {})
    fig.suptitle(f"Additive substitution KL and normalized faithfulness, {result.model}, "
                 f"{result.grid} grid")
    fig.tight_layout()
    return _save(fig, path)


def _f_panel(ax, s, normalized: dict) -> None:
    for i, probe in enumerate(FIG_PROBES):
        per = normalized.get(probe)
        if not per:
            continue
        pts = [(k / s.n_layers, v["F"], v["informative"], v["interval"]) for k, v in per.items()
               if v["F"] is not None]
        if not pts:
            continue
        xs, fs = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, fs, "-", color=f"C{i}", label=f"{probe}")
        for xv, fv, informative, ci in pts:
            ax.plot([xv], [fv], "o", color=f"C{i}", mfc=f"C{i}" if informative else "white")
            if ci:
                ax.plot([xv, xv], ci, "-", color=f"C{i}", alpha=0.35, lw=3)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhline(0.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("depth fraction (layer / n_layers)")
    ax.set_ylabel("F = 1 - KL_add / KL_null")
    ax.set_title("normalized faithfulness F by depth (filled: informative, median null KL >= "
                 "0.05; bars: 95% interval; the paper has no null runs, so no grey curve)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower left")


def heatmaps(model: str, panels: list[tuple[str, tuple, tuple | None]], path: Path) -> str:
    """Persona x task heatmaps of one model: `panels` is [(title, (personas, tasks, values),
    the paper's (personas, tasks, values) or None)]; KL panels on the first row, marker panels
    on the second, on one colour scale from 0 so clean / additive / bare compare at a glance;
    the paper's value of a cell is printed under ours in grey."""
    plt = _plt()
    rows = [r for r in ([p for p in panels if "markers" not in p[0]],
                        [p for p in panels if "markers" in p[0]]) if r]
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(5.2 * ncols, 4.6 * len(rows)),
                             squeeze=False)
    top = max([float(np.nanmax(v)) for t, (_p, _t, v), _ in panels if "markers" in t] + [1.0])
    for r, row in enumerate(rows):
        for c in range(ncols):
            if c >= len(row):
                axes[r][c].axis("off")
                continue
            _heatmap(fig, axes[r][c], *row[c], top)
    fig.suptitle(f"Where composition breaks: {model} (rows: persona, columns: task)")
    fig.tight_layout()
    return _save(fig, path)


def _heatmap(fig, ax, title, matrix, theirs, top) -> None:
    personas, tasks, values = matrix
    scale = dict(vmin=0, vmax=top, cmap="magma") if "markers" in title else {"cmap": "viridis"}
    im = ax.imshow(values, aspect="auto", **scale)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(personas)), personas, fontsize=8)
    lo, hi = im.get_clim()
    small = len(tasks) > 4
    for (i, j), v in np.ndenumerate(values):
        if not np.isfinite(v):
            continue
        ax.text(j, i - (0.15 if theirs else 0), f"{v:.2g}", ha="center", va="center",
                fontsize=6 if small else 8, color="white" if v < (lo + hi) / 2 else "black")
        if theirs is not None and np.isfinite(theirs[2][i, j]):
            ax.text(j, i + 0.25, f"paper {theirs[2][i, j]:.0f}", ha="center", va="center",
                    fontsize=6, color="grey")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)


def dose_and_swap(rows: dict, swaps: dict, path: Path) -> str:
    """Markers and KL to the clean run against the dose a (one line per model), and the swap
    share against its base rate. rows: model -> dose table; swaps: model -> swap share."""
    plt = _plt()
    fig, (m_ax, k_ax, s_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (model, table) in enumerate(rows.items()):
        a = [r["a"] for r in table]
        m_ax.plot(a, [r["any_marker"] / r["n_cells"] for r in table], "o-", color=f"C{i}",
                  label=model)
        k_ax.plot(a, [r["median_kl"] for r in table], "o-", color=f"C{i}", label=model)
    m_ax.set(xlabel="dose a (additive + (a - 1) dX)", ylabel="share of cells with a marker",
             title="persona markers vs dose")
    k_ax.set(xlabel="dose a", ylabel="median 10-token KL to clean (nats)",
             title="distance from the clean run vs dose")
    m_ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    k_ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    m_ax.legend(fontsize=8)
    names = list(swaps)
    pos = np.arange(len(names))
    s_ax.bar(pos - 0.2, [swaps[n]["share"] or 0 for n in names], 0.4, label="A gone, B appears")
    s_ax.bar(pos + 0.2, [swaps[n]["base_rate"] or 0 for n in names], 0.4, color="grey",
             label="base rate: B in clean (A, Y)")
    s_ax.set_xticks(pos, names, fontsize=8)
    s_ax.set(ylabel="share of swaps (clean has A's markers)", title="persona swap dX_A -> dX_B",
             ylim=(0, 1))
    s_ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
