"""Figures of the report (matplotlib, no torch); reportset.py writes them as part of a set."""
from __future__ import annotations

from pathlib import Path

from . import paper

FIG_PROBES = ("p_last", "g1", "g2")


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path.name


def kl_by_layer(result, path: Path) -> str:
    """Figure 1 style: median additive KL by depth fraction, p25-p75 band, null dashed, the 0.1
    line, and the paper's Gemma / Qwen-1.5B curves of the same grid in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    fig, axes = plt.subplots(1, len(FIG_PROBES), figsize=(12, 3.6), sharey=True)
    x = [layer / s.n_layers for layer in s.layers]
    for ax, probe in zip(axes, FIG_PROBES):
        if probe not in s.kl_add:
            continue
        add = [s.kl_add[probe][k] for k in s.layers]
        ax.fill_between(x, [a.p25 for a in add], [a.p75 for a in add], alpha=0.25, color="C0")
        ax.plot(x, [a.median for a in add], "o-", color="C0", label=f"{result.model} additive")
        ax.plot(x, [s.kl_null[probe][k].median for k in s.layers], "s--", color="C3",
                label="null (h_BB alone)")
        for (pm, pg), style in zip(sorted(paper.SWEEP_FILES), (":", "-.", "--", ":", "-.")):
            ps = paper.sweep_summary(pm, pg) if pg == result.grid and "3b" not in pm else None
            if ps and probe in ps.kl_add:
                ax.plot([k / ps.n_layers for k in ps.layers],
                        [ps.kl_add[probe][k].median for k in ps.layers], style, color="grey",
                        label=f"paper {pm}")
        ax.axhline(0.1, color="k", lw=0.8, ls=":", label="0.1 nats")
        ax.set_yscale("log")
        ax.set_title(probe)
        ax.set_xlabel("depth fraction (layer / n_layers)")
    axes[0].set_ylabel("median 10-token KL (nats)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Additive substitution KL, {result.model}, {result.grid} grid")
    fig.tight_layout()
    return _save(fig, path)
