"""One look for every figure of a report set: the paper's line style, one colour per meaning, the
share axis, and saving a figure as PNG and SVG (matplotlib Agg, no torch)."""
# A reader compares figures side by side: the same thing must look the same in each of them, so
# every figure takes its styles from here and none sets its own colour for a meaning.
from __future__ import annotations

from pathlib import Path

PAPER_STYLE = {"color": "0.4", "lw": 1.3}  # the paper's published curves: grey, everywhere
# ...and each paper model its own dash and marker, the same in every figure (two grey dashes
# alike cannot be told apart); ":" is the threshold's.
PAPER_LOOKS = {"gemma-2-2b-it": {"ls": "--", "marker": "^"},
               "qwen2.5-1.5b-instruct": {"ls": "-.", "marker": "v"},
               "qwen2.5-3b-instruct": {"ls": (0, (6, 2, 1, 2, 1, 2)), "marker": "D"}}
COLORS = {"additive": "C0", "null": "C3", "threshold": "black", "swap": "#CC79A7",
          "base_rate": "#009E73", "undefined": "C3"}
# Okabe-Ito (colour-blind safe), leaving out its blue, vermillion and black, which the additive,
# null and threshold lines of the same figures wear, and its yellow (faint on white).
PROBE_COLORS = {"p_user_last": "#CC79A7", "p_last": "#E69F00", "g1": "#009E73", "g2": "#56B4E9"}
PROBE_MARKERS = {"p_user_last": "^", "p_last": "o", "g1": "s", "g2": "D"}
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


def probe_marker(probe: str) -> str:
    return PROBE_MARKERS.get(probe, "P")


def paper_look(paper_model: str) -> dict:
    """A paper model's line: the paper's grey with that model's own dash and marker."""
    return {**PAPER_STYLE, **PAPER_LOOKS.get(paper_model, {"ls": "--", "marker": "."})}


def legend_below(fig, extra=()) -> None:
    """One legend for the whole figure, below its panels (constrained layout), so it covers
    no data; entries repeated across panels are listed once."""
    seen = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    for handle in extra:
        seen.setdefault(handle.get_label(), handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=min(len(seen), 4), fontsize=8, frameon=False)


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


SVG_SALT = "lac"  # matplotlib's svg.hashsalt: element ids that do not change from run to run


def pair(name: str, build) -> dict:
    """Writers of a figure's PNG (`name`) and SVG: built once, saved twice, then closed."""
    held = {}

    def png(path: Path) -> None:
        held["fig"] = build()
        held["fig"].savefig(path, dpi=110, format="png")

    def svg(path: Path) -> None:
        fig = held.pop("fig", None) or build()
        try:  # no date and ids from a fixed salt: the same figure is the same bytes
            with plt().rc_context({"svg.hashsalt": SVG_SALT}):
                fig.savefig(path, format="svg", metadata={"Date": None})
        finally:
            plt().close(fig)

    return {name: png, svg_name(name): svg}
