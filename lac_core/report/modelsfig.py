"""The figures of one run's models side by side (COMPARE.md's), drawn only when two or more
models ran a sweep: additive KL by depth fraction for every model beside the paper's curves, and
F by depth for lac's models alone (the paper published no null runs, so it has no F to draw).
Matplotlib, no torch."""
from __future__ import annotations

from . import style
from .figures import paper_curves, share_ylim, shown_probes
from .style import BAND_ALPHA, DEPTH, GRID_MARKERS, KL_LABEL


def _probes(sweeps) -> list[str]:
    return list(dict.fromkeys(p for r in sweeps for p in shown_probes(r.summary.kl_add)))


def _look(r, models, grids) -> dict:
    return {"color": style.model_color(r.model, models),
            "marker": GRID_MARKERS[grids.index(r.grid) % len(GRID_MARKERS)]}


def models_kl_figure(sweeps: list, models=()):
    """One panel per probe (a probe no model swept has none), every model's median additive KL
    with its band, and the paper's published curves of each paper grid that ran."""
    plt = style.plt()
    models = list(models) or [r.model for r in sweeps]
    grids = list(dict.fromkeys(r.grid for r in sweeps))
    probes = _probes(sweeps)
    fig, axes = plt.subplots(1, len(probes), figsize=(4.6 * len(probes) + 1, 4.8), squeeze=False,
                             layout="constrained")
    ys = []
    for ax, probe in zip(axes[0], probes):
        seen = set()
        for r in sweeps:
            s = r.summary
            if probe not in s.kl_add:
                continue
            x, add = [k / s.n_layers for k in s.layers], [s.kl_add[probe][k] for k in s.layers]
            look = _look(r, models, grids)
            ax.fill_between(x, [a.p25 for a in add], [a.p75 for a in add], alpha=BAND_ALPHA,
                            color=look["color"])
            ax.plot(x, [a.median for a in add], "-", label=f"{r.model} / {r.grid}", **look)
            ys += [a.p25 for a in add] + [a.p75 for a in add]
            if (r.grid, r.grid_sha256) not in seen:
                seen.add((r.grid, r.grid_sha256))
                ys += paper_curves(ax, r.grid, r.grid_sha256, probe)
        ax.axhline(style.KL_THRESHOLD, color=style.COLORS["threshold"], lw=0.8, ls=":",
                   label="0.1 nats (C1)")
        ax.set(yscale="log", title=probe, xlabel=DEPTH, xlim=(0, 1))
    share_ylim(axes[0], ys)
    axes[0][0].set_ylabel(KL_LABEL)
    style.legend_below(fig, extra=[style.band_handle()])
    fig.suptitle("Median additive KL by depth fraction, every model (grey, one dash and marker "
                 "per paper model: the paper's published curves on the same grid)")
    return fig


def models_f_figure(sweeps: list, tables: dict, models=()):
    """F = 1 - KL_add / KL_null by depth, one panel per probe, lac's models only; `tables` maps
    (model, grid) to the faithfulness table. An undefined F is drawn as undefined."""
    plt = style.plt()
    models = list(models) or [r.model for r in sweeps]
    grids = list(dict.fromkeys(r.grid for r in sweeps))
    probes = [p for p in _probes(sweeps)
              if any(tables.get((r.model, r.grid), {}).get(p) for r in sweeps)]
    fig, axes = plt.subplots(1, max(len(probes), 1), figsize=(4.6 * max(len(probes), 1) + 1, 4.6),
                             squeeze=False, layout="constrained")
    values = []
    for ax, probe in zip(axes[0], probes):
        for r in sweeps:
            per = tables.get((r.model, r.grid), {}).get(probe) or {}
            pts = [(int(k) / r.summary.n_layers, v["F"]) for k, v in per.items()]
            ok = [(x, f) for x, f in pts if f is not None]
            if ok:
                ax.plot(*zip(*ok), "-", label=f"{r.model} / {r.grid}", **_look(r, models, grids))
            values += [f for _x, f in ok]
            for x, _f in [p for p in pts if p[1] is None]:
                style.undefined(ax, x, 0.0, f"{r.model}: undefined (null KL 0, n={len(r.cells)})")
        ax.set(title=probe, xlabel=DEPTH, xlim=(0, 1))
    for ax in axes[0][:len(probes)]:
        style.share_f_limits(ax, values)  # one range for every panel
    if not probes:
        axes[0][0].remove()
    else:
        axes[0][0].set_ylabel(style.F_LABEL)
        style.legend_below(fig)
    fig.suptitle("Normalized faithfulness F by depth fraction, lac's models only: the paper "
                 "published no null runs, so it has no F to compare")
    return fig
