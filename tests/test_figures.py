"""The report's figures, checked on the matplotlib Figure objects: the same thing looks the same
in every figure (the paper's one line style, one colour per meaning), panels of a row share a
y range, shares sit on 0-1, an undefined share is drawn as undefined, no panel is empty, KL
heatmaps share one colour scale, and every PNG has its SVG."""
import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from lac_core.protocol.grids import GRID_DIR, load_grid
from lac_core.report import comparefig, figures, style
from lac_core.verdicts import uncertainty
from lac_core.verdicts.results import GEOMETRY_STATS, SweepResult

matplotlib.use("Agg")
PROBES = ("p_user_last", "p_last", "g1", "g2")
LAYERS = (2, 4, 6)
SHORT = load_grid(GRID_DIR / "short.yaml")  # the paper's grid: its published curves are drawn


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


def _legend_texts(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


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


def test_the_papers_curves_look_the_same_in_every_figure(kl_fig):
    compare = comparefig.compare_kl_figure([_sweep("m1"), _sweep("m2", seed=1)])
    lines = _paper_lines(kl_fig) + _paper_lines(compare)
    assert _paper_lines(kl_fig) and _paper_lines(compare)
    for ln in lines:
        assert ln.get_linestyle() == style.PAPER_STYLE["ls"]
        assert to_rgba(ln.get_color()) == to_rgba(style.PAPER_STYLE["color"])
        assert ln.get_linewidth() == style.PAPER_STYLE["lw"]
    style.plt().close(compare)


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


def test_compare_f_is_lacs_models_on_a_0_1_axis_with_undefined_marked():
    sweeps = [_sweep("m1", undefined_at=4), _sweep("m2", seed=1)]
    fig = comparefig.compare_f_figure(sweeps, {(r.model, r.grid): _f(r) for r in sweeps},
                                      ["m1", "m2"])
    assert not _paper_lines(fig) and "no null runs" in fig._suptitle.get_text()
    assert all(ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1 for ax in fig.axes)
    assert any("m1: undefined (null KL 0, n=6)" in t.get_text() for ax in fig.axes
               for t in ax.texts)
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    style.plt().close(fig)


def test_compare_kl_gives_each_model_its_colour_in_every_figure():
    fig = comparefig.compare_kl_figure([_sweep("m1"), _sweep("m2", seed=1)], ["m1", "m2"])
    dose = figures.dose_and_swap_figure(
        {"m2 / short": [{"a": 1.0, "any_marker": 1, "n_cells": 2, "median_kl": 0.5}]},
        {"m2 / short": {"share": 0.5, "base_rate": 0.25, "eligible": 2}}, ["m1", "m2"])
    kl_color = next(ln.get_color() for ln in fig.axes[0].lines if ln.get_label() == "m2 / short")
    dose_color = next(ln.get_color() for ln in dose.axes[0].lines if ln.get_label() == "m2 / short")
    assert kl_color == dose_color == style.model_color("m2", ["m1", "m2"])
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    assert style.BAND_LABEL in _legend_texts(fig)
    style.plt().close(fig), style.plt().close(dose)


def test_shares_sit_on_0_1_and_an_undefined_swap_share_says_its_n():
    rows = {"m1 / g": [{"a": a, "any_marker": 1, "n_cells": 4, "median_kl": a} for a in (0, 1)]}
    fig = figures.dose_and_swap_figure(rows, {"m1 / g": {"share": None, "base_rate": None,
                                                         "eligible": 0}})
    markers, _kl, swap = fig.axes
    assert markers.get_ylim() == (0.0, 1.0) and swap.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in swap.texts].count("undefined (n=0)") == 2
    assert not [p for p in swap.patches if p.get_height() == 0]  # no bar of height 0 as a value
    style.plt().close(fig)


def test_kl_heatmaps_share_one_colour_scale_and_empty_panels_are_left_out():
    personas, tasks = ["a", "b"], ["x", "y"]
    small, large = np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[1.0, 2.0], [3.0, 5.0]])
    panels = [("g1: additive KL (nats)", (personas, tasks, small), None),
              ("g2: additive KL (nats)", (personas, tasks, large), None),
              ("g3: additive KL (nats)", (personas, tasks, np.full((2, 2), np.nan)), None),
              ("g1: distinct markers, clean", (personas, tasks, np.array([[0, 1], [2, 3.0]])),
               None)]
    fig = figures.heatmaps_figure("m", panels)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert set(images) == {p[0] for p in panels} - {"g3: additive KL (nats)"}
    kl = [im for t, im in images.items() if "KL" in t]
    assert {im.get_clim() for im in kl} == {(0.0, 5.0)}
    assert images["g1: distinct markers, clean"].get_clim()[0] == 0
    assert all(_has_data(ax) for ax in fig.axes)
    assert all(t.get_fontsize() >= 8 for ax in fig.axes if ax.images
               for t in ax.get_xticklabels() + ax.get_yticklabels())
    style.plt().close(fig)


def test_every_png_has_its_svg(tmp_path):
    r = _sweep()
    writers = style.pair("figures/kl.png", lambda: figures.kl_by_layer_figure(r, _f(r)))
    assert list(writers) == ["figures/kl.png", "figures/kl.svg"]
    for name, write in writers.items():
        write(tmp_path / name.split("/")[-1])
    assert (tmp_path / "kl.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "kl.svg").read_bytes()[:2000]
