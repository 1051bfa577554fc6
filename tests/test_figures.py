"""The report's figures, checked on the matplotlib Figure objects: the same thing looks the same
in every figure (the paper's one line style, one colour per meaning), panels of a row share a
y range, shares sit on 0-1, an undefined share is drawn as undefined, no panel is empty, no
legend covers a panel, probes stay apart for colour-blind readers, each grid's heatmap has its
own colour scale in rows without holes, and every PNG has its SVG."""
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from lac_core.protocol.grids import GRID_DIR, load_grid
from lac_core.report import breakdown, figures, modelsfig, style
from lac_core.report.figures import Heatmap
from lac_core.verdicts import uncertainty
from lac_core.verdicts.kinds import Kind
from lac_core.verdicts.results import GEOMETRY_STATS, SweepResult

matplotlib.use("Agg")
PROBES = ("p_user_last", "p_last", "g1", "g2")
LAYERS = (2, 4, 6)
SHORT = load_grid(GRID_DIR / "short.yaml")  # the paper's grid: its published curves are drawn
KL, MARKERS = Kind.SWEEP, Kind.MARKERS  # the kinds of the heatmaps' panels


def _sweep(model="m1", seed=0, undefined_at=None, grid=SHORT):
    rng = np.random.default_rng(seed)
    n = 6
    add = rng.uniform(0.2, 2.0 + seed, (n, len(PROBES), len(LAYERS)))
    null = add * rng.uniform(1.1, 1.6, add.shape)
    if undefined_at is not None:  # null KL 0 at (p_last, that layer): F undefined there
        null[:, 1, LAYERS.index(undefined_at)] = 0.0
    geo = {s: rng.uniform(0.1, 0.9, (n, len(PROBES), 8)) for s in GEOMETRY_STATS}
    return SweepResult(model, grid.name, 8, LAYERS, PROBES, tuple(f"c{i}" for i in range(n)), add,
                       null, geo, {}, grid_sha256=grid.sha256,
                       persona_index=(0, 0, 0, 1, 1, 1), task_index=(0, 1, 2) * 2)  # 2 x 3


def _f(r):
    return uncertainty.faithfulness_table(r, 0.05)


def _has_data(ax):
    return bool(ax.lines or ax.collections or ax.images or ax.patches)


def _paper_lines(fig):
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_label().startswith("paper ")]


@pytest.fixture(scope="module")
def kl_fig():
    r = _sweep(undefined_at=6)
    fig = figures.kl_by_layer_figure(r, _f(r))
    yield fig
    style.plt().close(fig)


def test_kl_panels_share_one_y_range_and_show_the_band_in_the_legend(kl_fig):
    kl_axes = [ax for ax in kl_fig.axes if ax.get_yscale() == "log"]
    assert len(kl_axes) == 3 and len({ax.get_ylim() for ax in kl_axes}) == 1
    assert style.BAND_LABEL in _legend_texts(kl_fig)


def test_one_colour_per_meaning(kl_fig):
    ax = next(ax for ax in kl_fig.axes if ax.get_title() == "p_last")
    band = ax.collections[0].get_facecolor()[0]
    line = next(ln for ln in ax.lines if "additive" in ln.get_label())
    null = next(ln for ln in ax.lines if "null" in ln.get_label())
    additive = to_rgba(style.COLORS["additive"])[:3]
    assert to_rgba(band)[:3] == to_rgba(line.get_color())[:3] == additive
    assert to_rgba(null.get_color()) == to_rgba(style.COLORS["null"])


def _look(ln):
    return (ln.get_linestyle(), ln.get_marker(), to_rgba(ln.get_color()), ln.get_linewidth())


def test_the_papers_curves_look_the_same_in_every_figure_and_its_models_apart(kl_fig):
    side = modelsfig.models_kl_figure([_sweep("m1"), _sweep("m2", seed=1)])
    assert _paper_lines(kl_fig) and _paper_lines(side)
    looks = {}
    for ln in _paper_lines(kl_fig) + _paper_lines(side):
        assert to_rgba(ln.get_color()) == to_rgba(style.PAPER_STYLE["color"])
        assert ln.get_linewidth() == style.PAPER_STYLE["lw"]
        looks.setdefault(ln.get_label(), set()).add(_look(ln))
    assert len(looks) == 2 and all(len(v) == 1 for v in looks.values())  # one look per model
    (a,), (b,) = looks.values()
    assert a[0] != b[0] and a[1] != b[1]  # the two paper models: another dash, another marker
    style.plt().close(side)


def _overlaps(box, other) -> bool:
    return box.x0 < other.x1 and other.x0 < box.x1 and box.y0 < other.y1 and other.y0 < box.y1


def _legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def _legend_covers_no_panel(fig):
    """Every legend is drawn and lies outside every panel (so over no data point or band)."""
    fig.canvas.draw()
    legends = _legends(fig)
    assert legends
    for legend in legends:
        box = legend.get_window_extent()
        assert not [ax.get_title() for ax in fig.axes if _overlaps(box, ax.get_window_extent())]


def test_no_legend_covers_a_panel(kl_fig):
    sweeps = [_sweep("m1"), _sweep("m2", seed=1)]
    figs = [kl_fig, modelsfig.models_kl_figure(sweeps),
            modelsfig.models_f_figure(sweeps, {(r.model, r.grid): _f(r) for r in sweeps}),
            figures.dose_and_swap_figure(*_dose_and_swap(3))]
    for fig in figs:
        _legend_covers_no_panel(fig)
    for fig in figs[1:]:
        style.plt().close(fig)


# Colour-vision simulation (Machado et al. 2009, severity 1) on linear RGB, then CIELAB distance:
# two probes must stay apart for a reader with red-green colour blindness too.
CVD = {"normal": np.eye(3),
       "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                                 [-0.011820, 0.042940, 0.968881]]),
       "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                               [-0.003882, -0.048116, 1.051998]])}


def _lab(color, vision):
    c = np.array(to_rgba(color)[:3])
    lin = np.clip(CVD[vision] @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4),
                  0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_f_is_a_panel_beside_the_kl_panels_with_probes_apart_for_every_reader(kl_fig):
    f_ax = next(ax for ax in kl_fig.axes if ax.get_ylabel() == style.F_LABEL)
    kl_axes = [ax for ax in kl_fig.axes if ax.get_yscale() == "log"]
    f_box, kl_box = f_ax.get_position(), kl_axes[0].get_position()
    assert f_box.width <= 1.05 * kl_box.width and abs(f_box.y0 - kl_box.y0) < 0.02  # one row
    lines = {ln.get_label(): ln for ln in f_ax.lines if ln.get_label().startswith("F, ")}
    assert set(lines) == {"F, p_last", "F, g1", "F, g2"}
    assert len({ln.get_marker() for ln in lines.values()}) == 3
    for vision in CVD:
        labs = {k: _lab(ln.get_color(), vision) for k, ln in lines.items()}
        gaps = {(a, b): float(np.linalg.norm(labs[a] - labs[b])) for a in labs for b in labs
                if a < b}
        assert min(gaps.values()) >= 15, (vision, gaps)  # delta E 76; 2.3 is just noticeable


def test_f_spans_0_to_1_and_an_undefined_f_is_drawn_as_such(kl_fig):
    f_ax = next(ax for ax in kl_fig.axes if ax.get_ylabel() == style.F_LABEL)
    lo, hi = f_ax.get_ylim()
    assert lo <= 0 and hi >= 1
    notes = [t.get_text() for t in f_ax.texts]
    assert any(t.startswith("p_last: undefined (null KL 0, n=6)") for t in notes)


def test_no_figure_has_an_empty_panel(kl_fig):
    r = _sweep()
    narrow = SweepResult(r.model, r.grid, 8, LAYERS, ("p_last",), r.cells, r.kl_add[:, 1:2],
                         r.kl_null[:, 1:2], {s: v[:, 1:2] for s, v in r.geometry.items()}, {},
                         grid_sha256=r.grid_sha256, persona_index=r.persona_index,
                         task_index=r.task_index)
    only = figures.kl_by_layer_figure(narrow, _f(narrow))
    for fig in (kl_fig, only):
        assert fig.axes and all(_has_data(ax) for ax in fig.axes)
    assert len(only.axes) == 2  # one probe: one KL panel and the F panel, no empty g1 / g2
    style.plt().close(only)


def test_models_f_is_lacs_models_on_a_0_1_axis_with_undefined_marked():
    sweeps = [_sweep("m1", undefined_at=4), _sweep("m2", seed=1)]
    fig = modelsfig.models_f_figure(sweeps, {(r.model, r.grid): _f(r) for r in sweeps},
                                      ["m1", "m2"])
    assert not _paper_lines(fig) and "no null runs" in fig._suptitle.get_text()
    assert all(ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1 for ax in fig.axes)
    assert any("m1: undefined (null KL 0, n=6)" in t.get_text() for ax in fig.axes
               for t in ax.texts)
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    style.plt().close(fig)


Z95 = 1.959964


def _dose_and_swap(eligible):
    """None of `eligible` swaps switched, none with B in clean: both Wilson intervals are
    [0, z^2 / (n + z^2)] (the textbook's zero-successes case)."""
    rows = {"m1 / g": [{"a": a, "any_marker": 1, "n_cells": 4, "median_kl": 2 + a}
                       for a in (0, 0.5, 1, 2)]}
    zero = [0.0, Z95 ** 2 / (eligible + Z95 ** 2)]
    swaps = {"m1 / g": {"eligible": eligible, "switched": 0, "share": 0.0, "base_rate": 0.0,
                        "share_interval": zero, "base_rate_interval": zero}}
    return rows, swaps


def test_models_kl_gives_each_model_its_colour_in_every_figure():
    fig = modelsfig.models_kl_figure([_sweep("m1"), _sweep("m2", seed=1)], ["m1", "m2"])
    dose = figures.dose_and_swap_figure(
        {"m2 / short": [{"a": 1.0, "any_marker": 1, "n_cells": 2, "median_kl": 0.5}]},
        {"m2 / short": {"share": 0.5, "base_rate": 0.25, "eligible": 2}}, ["m1", "m2"])
    kl_color = next(ln.get_color() for ln in fig.axes[0].lines if ln.get_label() == "m2 / short")
    dose_color = next(ln.get_color() for ln in dose.axes[0].lines if ln.get_label() == "m2 / short")
    assert kl_color == dose_color == style.model_color("m2", ["m1", "m2"])
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    assert style.BAND_LABEL in _legend_texts(fig)
    style.plt().close(fig), style.plt().close(dose)


def _legend_texts(fig):
    return [t.get_text() for legend in _legends(fig) for t in legend.get_texts()]


def test_shares_sit_on_0_1_and_an_undefined_swap_share_says_its_n():
    rows = {"m1 / g": [{"a": a, "any_marker": 1, "n_cells": 4, "median_kl": a} for a in (0, 1)]}
    fig = figures.dose_and_swap_figure(rows, {"m1 / g": {"share": None, "base_rate": None,
                                                         "eligible": 0}})
    markers, _kl, swap = fig.axes
    assert markers.get_ylim() == (0.0, 1.0) and swap.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in swap.texts].count("undefined (n=0)") == 2
    assert not [p for p in swap.patches if p.get_height() == 0]  # no bar of height 0 as a value
    style.plt().close(fig)


def test_wilson_interval_matches_the_textbook():
    assert breakdown.wilson(0, 0) is None
    lo, hi = breakdown.wilson(0, 3)
    assert lo == 0 and hi == pytest.approx(Z95 ** 2 / (3 + Z95 ** 2))
    assert breakdown.wilson(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    own = [{"own_hits": [], "other_hits": ["b"], "clean_own_hits": ["a"], "clean_other_hits": []},
           {"own_hits": ["a"], "other_hits": [], "clean_own_hits": ["a"], "clean_other_hits": []},
           {"own_hits": [], "other_hits": [], "clean_own_hits": [], "clean_other_hits": ["b"]}]
    share = breakdown.swap_share(SimpleNamespace(swaps=[{**w, "cell": "c", "other": "o"}
                                                        for w in own]))
    assert share["share_interval"] == breakdown.wilson(1, 2)
    assert share["base_rate_interval"] == breakdown.wilson(0, 2)


def test_the_swap_panel_draws_a_zero_share_with_its_interval_and_n_and_kl_starts_at_0():
    fig = figures.dose_and_swap_figure(*_dose_and_swap(3))  # 0 of 3 eligible swaps switched
    _markers, kl, swap = fig.axes
    assert kl.get_ylim()[0] == 0
    assert "n = 3" in swap.get_title() and "Wilson" in swap.get_title()
    points = [ln for ln in swap.lines if ln.get_marker() == "o"]
    assert [tuple(ln.get_ydata()) for ln in points] == [(0.0,), (0.0,)]  # share, base rate
    assert all(not ln.get_clip_on() for ln in points)  # a 0 on the axis is seen, not cut
    bars = [seg for c in swap.collections for seg in c.get_segments()]
    assert len(bars) == 2 and all(seg[:, 1].max() == pytest.approx(Z95 ** 2 / (3 + Z95 ** 2))
                                  for seg in bars)
    style.plt().close(fig)


def test_heatmaps_have_a_colour_scale_per_grid_and_rows_without_holes():
    personas, tasks = ["a", "b"], ["x", "y"]
    small, large = np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[1.0, 2.0], [3.0, 5.0]])
    hits = np.array([[0, 1], [2, 3.0]])
    panels = [Heatmap("short", KL, "short: additive KL (nats)", (personas, tasks, small)),
              Heatmap("long", KL, "long: additive KL (nats)", (personas, tasks, large)),
              Heatmap("void", KL, "void: additive KL (nats)",
                      (personas, tasks, np.full((2, 2), np.nan))),
              Heatmap("short", MARKERS, "short: distinct markers, clean", (personas, tasks, hits),
                      (personas, tasks, hits)),
              Heatmap("short", MARKERS, "short: distinct markers, bare",
                      (personas, tasks, hits * 2))]
    fig = figures.heatmaps_figure("m", panels)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert set(images) == {p.title for p in panels} - {"void: additive KL (nats)"}
    assert images["short: additive KL (nats)"].get_clim() == (0.0, 0.4)  # short is not washed out
    assert images["long: additive KL (nats)"].get_clim() == (0.0, 5.0)
    assert {images[t].get_clim() for t in images if "markers" in t} == {(0.0, 6.0)}
    bars = {im.colorbar.ax for im in images.values() if im.colorbar is not None}
    assert len(bars) == len(images) and len(fig.axes) == 2 * len(images)  # no empty axes
    fig.canvas.draw()
    rows = {}
    for ax in (ax for ax in fig.axes if ax.images):
        rows.setdefault(round(ax.get_position().y0, 2), []).append(ax.get_position())
    widths = [b.width for boxes in rows.values() for b in boxes]
    centres = []
    for boxes in rows.values():
        boxes.sort(key=lambda b: b.x0)
        assert all(b.x0 - a.x1 < max(widths) for a, b in zip(boxes, boxes[1:]))  # no hole
        centres.append((boxes[0].x0 + boxes[-1].x1) / 2)
    assert len(rows) == 2 and max(centres) - min(centres) < 0.05  # a short row is centred
    assert all(t.get_fontsize() >= 8 for ax in fig.axes if ax.images
               for t in ax.get_xticklabels() + ax.get_yticklabels())
    style.plt().close(fig)


def test_a_heatmap_panel_is_drawn_by_its_kind_and_grid_not_its_title():
    """Issue 37: the marker panels were found by the word 'markers' in their titles and rows by
    the title's prefix; retitled, a marker panel took the KL colour map and a scale of its own.
    Now the panel's kind and grid say it: titles without either word change nothing."""
    personas, tasks = ["a", "b"], ["x", "y"]
    kl, hits = np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[0, 1], [2, 3.0]])
    panels = [Heatmap("g", KL, "one", (personas, tasks, kl)),
              Heatmap("g", MARKERS, "two: persona words", (personas, tasks, hits)),
              Heatmap("g", MARKERS, "three: markers", (personas, tasks, hits * 2))]
    fig = figures.heatmaps_figure("m", panels)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert (images["one"].get_cmap().name, images["one"].get_clim()) == ("viridis", (0.0, 0.4))
    for title in ("two: persona words", "three: markers"):
        assert (images[title].get_cmap().name, images[title].get_clim()) == ("magma", (0.0, 6.0))
    fig.canvas.draw()
    assert len({round(im.axes.get_position().y0, 2) for im in images.values()}) == 1  # one row
    style.plt().close(fig)


def _luminance(rgba):
    c = np.array(rgba[:3])
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def _contrast(a, b):
    """WCAG 2 contrast ratio, text alpha blended over the cell first."""
    alpha = a[3]
    text = [alpha * x + (1 - alpha) * y for x, y in zip(a[:3], b[:3])] + [1.0]
    lo, hi = sorted((_luminance(text), _luminance(b)))
    return (hi + 0.05) / (lo + 0.05)


def test_every_number_on_a_heatmap_is_readable_on_its_cell():
    """WCAG: text on a cell at least 4.5:1 against the cell, opaque, 8 pt or more."""
    personas, tasks = ["a", "b", "c"], ["x", "y", "z"]
    values = np.arange(9.0).reshape(3, 3) / 2  # every shade of the map, dark to light
    panels = [Heatmap("g", KL, "g: additive KL (nats)", (personas, tasks, values)),
              Heatmap("g", MARKERS, "g: distinct markers, clean", (personas, tasks, values),
                      (personas, tasks, values))]
    fig = figures.heatmaps_figure("m", panels)
    texts = 0
    for ax in (ax for ax in fig.axes if ax.images):
        im = ax.images[0]
        for t in ax.texts:
            x, y = t.get_position()
            cell = im.cmap(im.norm(im.get_array()[int(round(y)), int(round(x))]))
            assert t.get_fontsize() >= 8, t.get_text()
            assert _contrast(to_rgba(t.get_color(), t.get_alpha()), cell) >= 4.5, t.get_text()
            texts += 1
    assert texts == 9 + 18  # ours on both, the paper's on the markers panel
    style.plt().close(fig)


def test_every_png_has_its_svg(tmp_path):
    r = _sweep()
    writers = style.pair("figures/kl.png", lambda: figures.kl_by_layer_figure(r, _f(r)))
    assert list(writers) == ["figures/kl.png", "figures/kl.svg"]
    for name, write in writers.items():
        write(tmp_path / name.split("/")[-1])
    assert (tmp_path / "kl.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "kl.svg").read_bytes()[:2000]
