"""A user's own per-cell metric over the sweep's residuals (docs/own-claim.md): computed with the
sweep, read by a rule like lac's own statistics (intervals included), keyed into the resume
cache by its source, and checked before any model loads. Hostile metrics, generated, are refused
by name, never kept."""
import importlib.util
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from lac_core.engine.forward import Engine
from lac_core.errors import UsageError
from lac_core.protocol import experiments
from lac_core.protocol.grids import load_grid
from lac_core.run.session import Session
from lac_core.run.settings import Settings
from lac_core.verdicts import claims as registry
from lac_core.verdicts import rules, uncertainty
from lac_core.verdicts.claims import CellMetric, MetricError, register_metric
from lac_core.verdicts.metrics import Summary


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    """2 personas x 2 tasks: real residuals of more than two cells, at a quarter of the example
    grid's cost."""
    path = tmp_path_factory.mktemp("grid") / "small.yaml"
    path.write_text("baseline: {persona: a person, task: Help.}\n"
                    "personas: {cook: a cook, pilot: a pilot}\n"
                    "tasks: {bake: Bake bread., tax: Explain taxes.}\n")
    return load_grid(path)


@pytest.fixture(autouse=True)
def no_metrics(monkeypatch):
    """Each test starts with no metric registered, and leaves none behind."""
    monkeypatch.setattr(registry, "METRICS", {})


def norm_dx_again(h_bb, h_xb, h_by, h_xy):
    """|dX|, as lac computes it: the metric's values must equal lac's own statistic."""
    return np.linalg.norm(h_xb - h_bb, axis=-1)


def test_a_metric_joins_the_sweep_its_summaries_and_its_intervals(monkeypatch, lac_models,
                                                                 small_grid):
    lm = lac_models("tiny-llama")
    metric = register_metric(CellMetric("dx_again", "|dX| once more", norm_dx_again))
    grid = small_grid
    r = experiments.sweep(Engine(lm), grid, metrics=(metric,))
    np.testing.assert_array_equal(r.geometry["dx_again"], r.geometry["norm_dx"])
    layer = r.layers[0]
    s = r.summary.geometry["p_last"][layer]["dx_again"]
    assert s == Summary.of(r.geometry["dx_again"][:, r.probes.index("p_last"), layer])

    def rule(summary, t):  # reads the metric, as a user's rule does
        m = summary.geometry["p_last"][layer]["dx_again"].median
        return rules.combine("MINE", summary.label, [rules.Part("p_last", rules.HOLDS, m, "m",
                                                               {"dx": m})])

    monkeypatch.setitem(registry.CLAIMS, "MINE", registry.Claim(
        "MINE", "mine", "sweep", rule, {}))
    v = uncertainty.judge("MINE", r, type("T", (), {"MINE": None})())
    lo, hi = v.parts[0].intervals["dx"]
    assert lo < s.median < hi  # an interval from the two-way resamples, around the full grid's
    plain = experiments.sweep(Engine(lm), grid)  # without the metric: lac's numbers, unchanged
    assert "dx_again" not in plain.geometry
    for name in plain.geometry:
        np.testing.assert_array_equal(plain.geometry[name], r.geometry[name])
    np.testing.assert_array_equal(plain.kl_add, r.kl_add)


def test_a_metric_that_raises_on_the_real_residuals_fails_the_sweep_by_name(lac_models,
                                                                           small_grid):
    def only_two_cells(h_bb, h_xb, h_by, h_xy):
        if h_bb.shape[0] > 2:
            raise ValueError("more cells than I can take")
        return np.zeros(h_bb.shape[:3])

    metric = register_metric(CellMetric("two_cells", "breaks on a real grid", only_two_cells))
    with pytest.raises(MetricError, match=r"cell metric two_cells \(.*test_metrics.py\) raised "
                                          r"ValueError: more cells than I can take"):
        experiments.sweep(Engine(lac_models("tiny-llama")), small_grid, metrics=(metric,))


def _module(path, body: str):
    path.write_text(body)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


METRIC_FILE = ("import numpy as np\n\ndef m(h_bb, h_xb, h_by, h_xy):\n"
               "    return np.linalg.norm(h_by - h_bb, axis=-1) * {scale}\n")


def test_the_sweeps_resume_key_holds_each_metrics_source_and_only_the_sweeps(tmp_path):
    (tmp_path / "expected").mkdir()
    session = Session.start(Settings(models=("tiny-llama",), grids=("example",),
                                     report_dir=tmp_path / "reports",
                                     expected_dir=tmp_path / "expected"), args=["claims/"])
    plain = {k: session.result_key("tiny-llama", "example", k, {}) for k in ("sweep", "host")}
    assert "metrics" not in plain["sweep"]  # no metric: the keys a run had before
    first = _module(tmp_path / "mine.py", METRIC_FILE.format(scale=1))
    register_metric(CellMetric("dy_scaled", "|dY| scaled", first.m))
    keyed = session.result_key("tiny-llama", "example", "sweep", {"metrics": tuple(
        registry.METRICS.values())})
    (entry,) = keyed["metrics"]
    assert entry["name"] == "dy_scaled" and entry["function"] == "m"
    assert keyed["params"] == plain["sweep"]["params"]  # the function itself is never keyed
    assert session.result_key("tiny-llama", "example", "host", {}) == plain["host"]
    edited = _module(tmp_path / "mine.py", METRIC_FILE.format(scale=2))
    registry.METRICS.clear()
    register_metric(CellMetric("dy_scaled", "|dY| scaled", edited.m))
    again = session.result_key("tiny-llama", "example", "sweep", {})
    assert again["metrics"][0]["source_sha256"] != entry["source_sha256"]  # an edit recomputes


def test_a_metric_without_a_source_file_is_refused():
    code = compile("def m(h_bb, h_xb, h_by, h_xy):\n    return h_bb.sum(-1)\n", "<prompt>", "exec")
    where = {}
    exec(code, where)
    with pytest.raises(UsageError, match="no source file lac can hash"):
        register_metric(CellMetric("typed", "typed at a prompt", where["m"]))
    assert not registry.METRICS


def test_a_name_of_lacs_own_or_a_second_function_under_a_taken_name_is_refused():
    with pytest.raises(UsageError, match="lac computes a statistic of that name"):
        register_metric(CellMetric("norm_dx", "shadows lac's", norm_dx_again))
    register_metric(CellMetric("mine", "first", norm_dx_again))
    register_metric(CellMetric("mine", "first", norm_dx_again))  # the same again: a no-op
    with pytest.raises(UsageError, match="registered already"):
        register_metric(CellMetric("mine", "second", lambda *h: h[0].sum(-1)))


SHAPE = registry.TRIAL_SHAPE[:3]
WRONG_VALUES = st.one_of(
    hnp.arrays(st.sampled_from([np.float64, np.float32, np.int64]),
               hnp.array_shapes(min_dims=0, max_dims=4)).filter(lambda a: a.shape != SHAPE),
    hnp.arrays(st.sampled_from([np.bool_, np.complex128, object, "U3"]), st.just(SHAPE)),
    st.none(), st.text(max_size=5), st.floats(),
    st.lists(st.floats(), max_size=4),
    st.builds(lambda: np.zeros(SHAPE).tolist()),  # the right values, as a list
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=WRONG_VALUES, name=st.text(alphabet="ab_1-./ é", min_size=1, max_size=8))
def test_generated_wrong_metrics_are_refused_by_name_and_never_kept(value, name):
    """Whatever a metric returns that is not a number per [cell, layer, probe], or raises, it is
    refused at registration naming the metric (or its bad name); nothing is registered."""
    registry.METRICS.clear()

    def returns(h_bb, h_xb, h_by, h_xy):
        return value

    def raises(h_bb, h_xb, h_by, h_xy):
        raise RuntimeError("broken")

    for fn in (returns, raises):
        with pytest.raises(UsageError) as err:
            register_metric(CellMetric(name, "generated", fn))
        assert repr(name) in str(err.value) or f"cell metric {name} " in str(err.value)
        assert not registry.METRICS


@settings(max_examples=100, deadline=None)
@given(values=hnp.arrays(st.sampled_from([np.float64, np.float32, np.int32]), st.just(SHAPE)))
def test_generated_right_shaped_numbers_are_kept_as_float64(values):
    """NaN and inf included: they are undefined values, left out of summaries and counted."""
    registry.METRICS.clear()
    metric = register_metric(CellMetric("given", "generated", lambda *h: values))
    out = metric.values(*(np.zeros(registry.TRIAL_SHAPE),) * 4)
    assert out.dtype == np.float64 and out.shape == SHAPE
    np.testing.assert_array_equal(out, values.astype(np.float64))
    s = Summary.of(out[:, 0, 0])
    assert s.n == int(np.isfinite(out[:, 0, 0]).sum()) and (s.n or math.isnan(s.median))
