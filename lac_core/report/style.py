"""One look for every figure of a report set: the paper's line style, one colour per meaning, the
share axis, and saving a figure as PNG and SVG (matplotlib Agg, no torch)."""
# A reader compares figures side by side: the same thing must look the same in each of them, so
# every figure takes its styles from here and none sets its own colour for a meaning.
from __future__ import annotations

from pathlib import Path

PAPER_STYLE = {"color": "0.45", "ls": "--", "lw": 1.3}  # the paper's published curves, everywhere
PAPER_MARKERS = {"gemma-2-2b-it": "^", "qwen2.5-1.5b-instruct": "v", "qwen2.5-3b-instruct": "D"}
COLORS = {"additive": "C0", "null": "C3", "threshold": "black", "swap": "C6",
          "base_rate": "C9", "undefined": "C3"}
PROBE_COLORS = {"p_user_last": "C4", "p_last": "C1", "g1": "C2", "g2": "C8"}
MODEL_PALETTE = ("#7570b3", "#a6761d", "#1b9e77", "#e7298a", "#e6ab02", "#66a61e", "#1f78b4")
GRID_MARKERS = ("o", "s", "^", "D", "v")
BAND_ALPHA = 0.22
BAND_LABEL = "p25-p75 band over cells"
SHARE_LIM = (0.0, 1.0)  # a share is drawn on 0-1, whatever its values
KL_THRESHOLD = 0.1  # C1's bound in nats, drawn as a reference line
DEPTH = "depth fraction (layer / n_layers)"
KL_LABEL = "median 10-token KL (nats)"
F_LABEL = "F = 1 - KL_add / KL_null"


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def model_color(model: str, models) -> str:
    """A model's colour, the same in every figure of a run (its place in the run's models)."""
    order = list(dict.fromkeys(models))
    i = order.index(model) if model in order else len(order)
    return MODEL_PALETTE[i % len(MODEL_PALETTE)]


def probe_color(probe: str) -> str:
    return PROBE_COLORS.get(probe, "C5")


def band_handle():
    """The legend entry of the band (a proxy: one entry, not one per line)."""
    from matplotlib.patches import Patch

    return Patch(color="0.3", alpha=BAND_ALPHA + 0.1, label=BAND_LABEL)


def share_f_limits(ax, values) -> None:
    """F is a share with 1 at the top; it falls below 0 where the sum does worse than h_BB
    alone, so the axis always spans 0-1 and reaches down to the lowest point drawn."""
    low = min([0.0, *(v for v in values if v is not None)])
    ax.set_ylim(low - 0.05, SHARE_LIM[1] + 0.05)
    for y in SHARE_LIM:
        ax.axhline(y, color=COLORS["threshold"], lw=0.8, ls=":")


def undefined(ax, x: float, y: float, text: str) -> None:
    """An undefined share is drawn as such (a cross and its reason), never dropped."""
    ax.plot([x], [y], "x", color=COLORS["undefined"], ms=8, mew=2)
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 6), fontsize=7,
                color=COLORS["undefined"], rotation=90, va="bottom")


def svg_name(name: str) -> str:
    return name[: -len(".png")] + ".svg" if name.endswith(".png") else name + ".svg"


def with_svg(names) -> list[str]:
    """A figure set's names: every PNG with its SVG beside it."""
    return [n for name in names for n in ((name, svg_name(name)) if name.endswith(".png")
                                          else (name,))]


def pair(name: str, build) -> dict:
    """Writers of a figure's PNG (`name`) and SVG: built once, saved twice, then closed."""
    held = {}

    def png(path: Path) -> None:
        held["fig"] = build()
        held["fig"].savefig(path, dpi=110, format="png")

    def svg(path: Path) -> None:
        fig = held.pop("fig", None) or build()
        try:
            fig.savefig(path, format="svg")
        finally:
            plt().close(fig)

    return {name: png, svg_name(name): svg}
