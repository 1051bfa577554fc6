"""The decision rules on synthetic summaries: every verdict path, and the combination order."""
import dataclasses
import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lac_core.verdicts import expected as baselines
from lac_core.verdicts import rules
from lac_core.errors import FixtureError
from lac_core.verdicts.metrics import Summary, geometry
from lac_core.verdicts.results import HostSummary, MarkerSummary, SweepSummary
from lac_core.run.settings import FIXTURES
from lac_core.verdicts.thresholds import load_thresholds

T = load_thresholds(FIXTURES / "claims.yaml")
PROBES = ("p_last", "g1", "g2")


def _s(x):
    return Summary(x, x, x, x, x, 12)


def sweep(kl: dict, null: dict | None = None, cos_xy=0.2, cos_sum=0.9, n_layers=20, layers=(5, 8, 11, 14, 17)):
    """kl/null: layer -> median (same for every probe)."""
    geo = {p: {layer: {"cos_x_y": _s(cos_xy), "cos_xy_sum": _s(cos_sum), "inter_over_xy": _s(0.3)}
               for layer in layers} for p in PROBES}
    return SweepSummary("synthetic", n_layers, layers, {p: {k: _s(v) for k, v in kl.items()} for p in PROBES},
                        None if null is None else {p: {k: _s(v) for k, v in null.items()} for p in PROBES}, geo)


GOOD = {5: 0.01, 8: 0.03, 11: 0.2, 14: 0.5, 17: 1.0}


def test_c1_holds_and_fails_at_threshold():
    assert rules.c1(sweep(GOOD), T.C1).status == rules.HOLDS
    edge = {**GOOD, 5: 0.10, 8: 0.10}
    assert rules.c1(sweep(edge), T.C1).status == rules.HOLDS
    over = {**GOOD, 5: 0.1001, 8: 0.2}
    v = rules.c1(sweep(over), T.C1)
    assert v.status == rules.FAILS and "0.1001" in v.explain()


def test_c1_ignores_layers_beyond_the_band():
    kl = {5: 0.5, 8: 0.5, 11: 0.5, 14: 0.01, 17: 0.01}  # 14/20 = 0.7 > 0.55
    assert rules.c1(sweep(kl), T.C1).status == rules.FAILS


def test_c1_inconclusive_without_band_layers():
    s = sweep({14: 0.01, 17: 0.01}, layers=(14, 17))
    assert rules.c1(s, T.C1).status == rules.INCONCLUSIVE


def test_c1l():
    assert rules.c1l(sweep(GOOD), T.C1L).status == rules.HOLDS
    flat = {k: 0.05 for k in GOOD}
    v = rules.c1l(sweep(flat), T.C1L)
    assert v.status == rules.FAILS and v.deciding.numbers["ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("cos_xy, cos_sum, status", [
    (0.2, 0.9, rules.HOLDS), (0.55, 0.95, rules.FAILS), (0.2, 0.79, rules.FAILS), (0.5, 0.79, rules.FAILS),
    (0.45, 0.8, rules.HOLDS), (0.5, 0.85, rules.HOLDS), (-0.3, 0.8, rules.HOLDS),
])
def test_c2(cos_xy, cos_sum, status):
    assert rules.c2(sweep(GOOD, cos_xy=cos_xy, cos_sum=cos_sum), T.C2).status == status


def test_c2_gap_is_checked_on_its_own():
    """With the default thresholds the 0.3 gap follows from the other two; a stricter gap must bite."""
    strict = dataclasses.replace(T.C2, min_difference=0.5)
    v = rules.c2(sweep(GOOD, cos_xy=0.45, cos_sum=0.85), strict)
    assert v.status == rules.FAILS and "difference 0.400" in v.deciding.detail


def test_c2_nan_is_inconclusive():
    assert rules.c2(sweep(GOOD, cos_xy=math.nan), T.C2).status == rules.INCONCLUSIVE


def test_c5_paths():
    null = {5: 0.2, 8: 0.3, 11: 0.5, 14: 1, 17: 2}
    assert rules.c5(sweep(GOOD, null), T.C5).status == rules.HOLDS
    assert rules.c5(sweep(GOOD, None), T.C5).status == rules.INCONCLUSIVE
    tiny_null = {k: 0.01 for k in GOOD}
    v = rules.c5(sweep(GOOD, tiny_null), T.C5)
    assert v.status == rules.INCONCLUSIVE and "no informative layer" in v.deciding.detail
    close = {5: 0.015, 8: 0.05, 11: 0.3, 14: 1, 17: 2}  # additive not <= half the null where informative
    assert rules.c5(sweep({**GOOD, 8: 0.04}, close), T.C5).status == rules.FAILS


def test_fails_beats_inconclusive_beats_holds():
    p = lambda n, s, m: rules.Part(n, s, m, "")  # noqa: E731
    assert rules.combine("X", "s", [p("a", rules.HOLDS, 1), p("b", rules.INCONCLUSIVE, 0),
                                    p("c", rules.FAILS, -1)]).deciding.name == "c"
    assert rules.combine("X", "s", [p("a", rules.HOLDS, 1), p("b", rules.INCONCLUSIVE, 0)]).status == rules.INCONCLUSIVE
    v = rules.combine("X", "s", [p("a", rules.HOLDS, 1), p("b", rules.HOLDS, 0.1)])
    assert v.status == rules.HOLDS and v.deciding.name == "b"


def _markers(clean, additive, remove_x, bare, n=24):
    return MarkerSummary("m", n, {"clean": clean, "additive": additive, "remove_x": remove_x, "bare": bare}, {})


def test_c3_c3r():
    assert rules.c3(_markers(16, 14, 15, 1), T.C3).status == rules.HOLDS
    assert rules.c3(_markers(16, 11, 15, 1), T.C3).status == rules.FAILS
    assert rules.c3(_markers(16, 14, 15, 9), T.C3).status == rules.FAILS
    assert rules.c3(_markers(5, 5, 5, 0), T.C3).status == rules.INCONCLUSIVE
    assert rules.c3r(_markers(16, 14, 12, 1), T.C3R).status == rules.HOLDS
    assert rules.c3r(_markers(16, 14, 11, 1), T.C3R).status == rules.FAILS


def test_c4():
    host = {f"c{i}": 3.0 for i in range(5)}
    ok = HostSummary.of("h", host, {"oracle": {k: 2.6 for k in host}, "cached": {k: 2.8 for k in host}})
    assert rules.c4(ok, T.C4).status == rules.HOLDS
    closes = HostSummary.of("h", host, {"oracle": {k: 1.0 for k in host}})
    assert rules.c4(closes, T.C4).status == rules.FAILS
    small = HostSummary.of("h", {k: 0.2 for k in host}, {"oracle": {k: 0.1 for k in host}})
    assert rules.c4(small, T.C4).status == rules.INCONCLUSIVE


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50))
def test_summary_is_ordered(values):
    s = Summary.of(values)
    assert s.min <= s.p25 <= s.median <= s.p75 <= s.max and s.n == len(values)


@given(st.integers(1, 8), st.integers(0, 2**16))
def test_geometry_exact_when_additive(d, seed):
    """If h_XY = h_BB + dX + dY exactly, cos(dXY, dX+dY) = 1 and the interaction is 0."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bb, dx, dy = rng.normal(size=(3, d + 1))
    g = geometry(bb, bb + dx, bb + dy, bb + dx + dy)
    assert g["cos_xy_sum"] == pytest.approx(1.0) and g["inter_over_xy"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(geometry(bb, bb, bb + dy, bb + dy)["cos_x_y"])  # dX = 0: angle undefined


@given(st.integers(1, 8), st.integers(0, 2**16))
def test_geometry_keeps_the_norms_it_is_made_of(d, seed):
    """|h_BB|, |dX|, |dY|, |dXY| and |Inter| are kept per cell (issue 35.6: "the persona direction
    is larger than the task direction" needs |dX| and |dY|), and are what the ratios are made of."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bb, xb, by, xy = rng.normal(size=(4, d + 1))
    g = geometry(bb, xb, by, xy)
    norm = np.linalg.norm
    want = {"norm_bb": norm(bb), "norm_dx": norm(xb - bb), "norm_dy": norm(by - bb),
            "norm_dxy": norm(xy - bb), "norm_inter": norm(xy - xb - by + bb)}
    assert {k: float(g[k]) for k in want} == pytest.approx(want)
    assert g["delta_scale"] == pytest.approx(min(want["norm_dx"], want["norm_dy"]) / want["norm_bb"])
    assert g["inter_over_xy"] == pytest.approx(want["norm_inter"] / want["norm_dxy"])


def test_baseline_gate_fires_on_a_perturbed_result():
    v = rules.c1(sweep(GOOD), T.C1)
    base = baselines.make_baselines(baselines.quantities({"C1": v}))
    assert baselines.drift(base, baselines.quantities({"C1": v})) == []
    moved = rules.c1(sweep({**GOOD, 5: 0.05}), T.C1)
    msgs = baselines.drift(base, baselines.quantities({"C1": moved}))
    assert any("C1/p_last/median: baseline 0.01, now 0.03, tolerance 0.002" in m for m in msgs)
    down = rules.c1(sweep({**GOOD, 5: 0.0}), T.C1)  # two-sided: a drop beyond tolerance fails too
    assert baselines.drift(base, baselines.quantities({"C1": down}))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["C1"].pop("max_median_kl"), "missing key C1.max_median_kl"),
    (lambda d: d["C2"].update(max_cos=0.4), "unknown key C2.max_cos"),
    (lambda d: d.pop("C4"), "missing section 'C4'"),
    (lambda d: d.update(C9={}), "unknown section 'C9'"),
    (lambda d: d["C3"].update(min_clean_fraction=0.25), "C3.min_clean_fraction must be {value"),
    (lambda d: d["C1"].update(probes="p_last"), "C1.probes must be a list of strings"),
])
def test_bad_thresholds_name_the_file_and_key(tmp_path, mutate, message):
    data = yaml.safe_load((FIXTURES / "claims.yaml").read_text())
    mutate(data)
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(FixtureError, match=str(bad)) as err:
        load_thresholds(bad)
    assert message in str(err.value)


def test_thresholds_are_typed_and_frozen():
    assert T.C1.max_median_kl == 0.10 and T.C1.probes == ("p_last", "g1", "g2")
    assert T.markers.stems == ("indemnif",) and "essentially clean" in T.why["C1"]["max_median_kl"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        T.C1.max_median_kl = 1.0


def test_a_probe_left_out_of_the_sweep_is_inconclusive_not_a_pass():
    full = sweep(GOOD, {5: 0.2, 8: 0.3, 11: 0.5, 14: 1, 17: 2})
    s = dataclasses.replace(full, **{name: {p: v for p, v in getattr(full, name).items() if p != "g2"}
                                     for name in ("kl_add", "kl_null", "geometry")})
    for rule, t in ((rules.c1, T.C1), (rules.c1l, T.C1L), (rules.c2, T.C2), (rules.c5, T.C5)):
        v = rule(s, t)
        assert v.status == rules.INCONCLUSIVE, v.explain()
        assert any(p.name.startswith("g2") and p.status == rules.INCONCLUSIVE for p in v.parts)


@pytest.mark.parametrize("claim", ["C1", "C1L", "C5", "C6"])
def test_a_part_decided_at_no_swept_layer_names_no_cells(claim):
    """Qwen2.5-Coder's C5 on the short grid is INCONCLUSIVE at g2 with no informative layer: its
    part holds no layer, and naming the cells against it raised ValueError (hidden by the
    strict xfail until the message was built before the xfail)."""
    from types import SimpleNamespace

    import numpy as np

    from lac_core.verdicts.claims import against
    from lac_core.verdicts.rules import Part

    shape = (3, 2, 2)
    result = SimpleNamespace(probes=("p_last", "g2"), layers=(6, 10), kl_add=np.ones(shape),
                             kl_null=np.ones(shape),
                             geometry={"cos_x_y": np.zeros((3, 2, 24)),
                                       "cos_xy_sum": np.ones((3, 2, 24))})
    part = Part(name="g2", status="INCONCLUSIVE", margin=float("nan"),
                detail="no informative layer in the band", numbers={})
    assert against(claim, part, result, SimpleNamespace(**{claim: None})) == []
