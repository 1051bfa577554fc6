"""What a rule or a cell check receives cannot be changed, a part's status is checked when made,
and one function builds an experiment's summary for the full grid and for every resample
(issue 34, items 2, 3 and 5)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lac_core.run.settings import FIXTURES
from lac_core.verdicts import claims as registry
from lac_core.verdicts import rules, uncertainty
from lac_core.verdicts.metrics import Summary
from lac_core.verdicts.results import (GEOMETRY_STATS, MARKER_CONDITIONS, SUMMARIES, HostResult,
                                       MarkerResult, SweepResult, full_grid, plain)
from lac_core.verdicts.thresholds import load_thresholds

T = load_thresholds(FIXTURES / "claims.yaml")
PROBES = ("p_last", "g1", "g2")


def _design(n_p: int, n_t: int) -> dict:
    return {"persona_index": tuple(np.repeat(np.arange(n_p), n_t).tolist()),
            "task_index": tuple(np.tile(np.arange(n_t), n_p).tolist())}


def _sweep(n_p=3, n_t=3, n_layers=6, layers=(1, 2, 4), seed=0, holes=0.0) -> SweepResult:
    rng = np.random.default_rng(seed)
    n = n_p * n_t
    add = rng.gamma(1.0, 0.2, (n, len(PROBES), len(layers)))
    null = add * rng.uniform(0.5, 3.0, add.shape)
    geo = {s: rng.uniform(-1, 1, (n, len(PROBES), n_layers)) for s in GEOMETRY_STATS}
    if holes:
        for s in ("cos_x_y", "inter_over_xy"):
            geo[s][rng.random(geo[s].shape) < holes] = np.nan
        geo["cos_xy_sum"][:, :, 0] = np.nan  # layer 0: the embeddings, no angle in any cell
    cells = tuple(f"p{i // n_t}__t{i % n_t}" for i in range(n))
    return SweepResult("m", "g", n_layers, tuple(layers), PROBES, cells, add, null, geo,
                       {c: {"tokens": [1, 2], "text": "x", "eos_in_reference": False}
                        for c in cells}, **_design(n_p, n_t))


def _markers(n_p=3, n_t=3) -> MarkerResult:
    cells = tuple(f"p{i // n_t}__t{i % n_t}" for i in range(n_p * n_t))
    hits = {c: {k: ["arr"] * ((i + j) % 3) for j, k in enumerate(MARKER_CONDITIONS)}
            for i, c in enumerate(cells)}
    return MarkerResult("m", "g", 2, 8, cells, {c: {k: "t" for k in MARKER_CONDITIONS}
                                                for c in cells}, {}, hits, **_design(n_p, n_t))


def _host(n_p=3, n_t=3) -> HostResult:
    cells = tuple(f"p{i // n_t}__t{i % n_t}" for i in range(n_p * n_t))
    kl = {c: {"host": 1.0 + i, "oracle": 0.5 * i, "cached": 0.9 + i, "layers 1,2": 0.2 * i}
          for i, c in enumerate(cells)}
    kl[cells[0]]["host"] = 0.0  # no gap in one cell: left out of the gaps
    return HostResult("m", "g", 2, ((1, 2),), cells, kl, {c: [1] for c in cells},
                      **_design(n_p, n_t))


def _with_section(claim: str):
    return dataclasses.replace(T, sections={**T.sections, claim: None})


# Item 2: read-only ---------------------------------------------------------------------------

def test_a_rule_cannot_write_into_the_summary_it_reads():
    r = _sweep()
    s, before = r.summary, rules.c1(r.summary, T.C1)
    with pytest.raises(TypeError, match="read-only"):
        s.kl_add["p_last"][1] = Summary(0, 0, 0, 0, 0, 9)
    with pytest.raises(TypeError, match="read-only"):
        s.geometry["g1"][2]["cos_x_y"] = Summary(0, 0, 0, 0, 0, 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kl_add = {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kl_add["p_last"][1].median = 0.0
    assert rules.c1(r.summary, T.C1) == before


def test_a_cell_check_cannot_write_into_the_result_it_reads():
    r, m, h = _sweep(), _markers(), _host()
    with pytest.raises(ValueError, match="read-only"):
        r.kl_add[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        r.geometry["cos_x_y"][:] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        r.geometry["cos_x_y"] = np.zeros(3)
    with pytest.raises(AttributeError):
        m.hits[m.cells[0]]["clean"].append("arr")  # a tuple: nothing to append to
    with pytest.raises(TypeError, match="read-only"):
        h.kl[h.cells[1]]["cached"] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.kl_add = np.zeros_like(r.kl_add)


def test_a_rule_that_writes_fails_in_its_own_claim_and_moves_no_other_verdict(monkeypatch):
    """The issue's case: a user rule zeroing kl_add medians flipped C1, C1L and C5 in the session."""
    r = _sweep()
    before = {c: uncertainty.judge(c, r, T).status for c in ("C1", "C1L", "C5")}

    def vandal(summary, t):
        for p in summary.kl_add:
            for k in summary.kl_add[p]:
                summary.kl_add[p][k] = Summary(0.0, 0.0, 0.0, 0.0, 0.0, 9)
        return rules.combine("X", summary.label, [])

    monkeypatch.setitem(registry.CLAIMS, "X", registry.Claim("X", "vandal", "sweep", vandal, {}))
    with pytest.raises(TypeError, match="read-only"):
        uncertainty.judge("X", r, _with_section("X"))
    assert {c: uncertainty.judge(c, r, T).status for c in before} == before


# Item 3: a part's status is checked when it is made --------------------------------------------

@pytest.mark.parametrize("status", ["FAIL", "holds", "PASS", "", None, 1])
def test_an_unknown_status_is_an_error_naming_it_and_the_three_allowed(status):
    with pytest.raises(rules.RuleError) as err:
        rules.Part("p_last", status, 0.1, "detail")
    assert repr(status) in str(err.value)
    assert all(s in str(err.value) for s in rules.STATUSES)


def test_a_typo_never_combines_to_holds():
    with pytest.raises(rules.RuleError):
        rules.combine("X", "m / g", [rules.Part("a", rules.HOLDS, 1.0, ""),
                                     rules.Part("b", "FAIL", -1.0, "")])
    with pytest.raises(rules.RuleError):
        rules.combine("X", "m / g", [("b", "FAILS", -1.0)])  # not a Part at all
    with pytest.raises(rules.RuleError):
        rules.Verdict("X", "m / g", "HOLD", None, ())
    with pytest.raises(rules.RuleError):
        rules.Part("a", rules.HOLDS, "0.1", "")  # a margin that is not a number


# Item 5: one function builds every summary -----------------------------------------------------

def _fields(obj, path=()):
    """Every (path, leaf) of a summary, tables read whole."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, Summary):
        for f in dataclasses.fields(obj):
            yield from _fields(getattr(obj, f.name), (*path, f.name))
    elif hasattr(obj, "items") and not isinstance(obj, Summary):
        for k, v in obj.items():
            yield from _fields(v, (*path, k))
    else:
        yield path, obj


def _old_sweep_summary(r):
    """The full-grid summary as lac built it before (Summary.of per cell slice)."""
    per = {p: {k: Summary.of(r.kl_add[:, pi, li]) for li, k in enumerate(r.layers)}
           for pi, p in enumerate(r.probes)}
    null = {p: {k: Summary.of(r.kl_null[:, pi, li]) for li, k in enumerate(r.layers)}
            for pi, p in enumerate(r.probes)}
    geo = {p: {k: {s: Summary.of(r.geometry[s][:, pi, k]) for s in GEOMETRY_STATS}
               for k in range(r.n_layers)} for pi, p in enumerate(r.probes)}
    return {"kl_add": per, "kl_null": null, "geometry": geo}


def _same(a, b) -> bool:
    return all((x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)))


@settings(max_examples=25, deadline=None)
@given(n_p=st.integers(1, 5), n_t=st.integers(1, 4), seed=st.integers(0, 2**16),
       holes=st.sampled_from([0.0, 0.3, 1.0]))
def test_every_field_of_the_full_grid_summary_is_in_every_resample(n_p, n_t, seed, holes):
    """Whatever a rule can read on the full grid it reads in every resample, built the same way:
    the full grid's numbers are the old Summary.of ones bit for bit, and a resample row that
    holds every cell once gives the full grid's summary again."""
    results = {"sweep": _sweep(n_p, n_t, seed=seed, holes=holes), "markers": _markers(n_p, n_t),
               "host": _host(n_p, n_t)}
    for kind, r in results.items():
        full = r.summary
        idx = np.vstack([uncertainty.resample(*r.design(), resamples=4, seed=seed),
                         full_grid(len(r.cells))])
        boots = SUMMARIES[kind](r, idx)
        want = [path for path, _ in _fields(full)]
        for b in boots:
            assert [path for path, _ in _fields(b)] == want
        for (path, x), (_, y) in zip(_fields(full), _fields(boots[-1])):
            assert x == y or (isinstance(x, Summary) and _same(x, y)) or (
                isinstance(x, float) and math.isnan(x) and math.isnan(y)), path
    old, new = _old_sweep_summary(results["sweep"]), plain(results["sweep"].summary)
    for name in old:
        for p in old[name]:
            for k in old[name][p]:
                o, n = old[name][p][k], new[name][p][k]
                pairs = ((o, n),) if isinstance(o, Summary) else ((o[s], n[s]) for s in o)
                for a, b in pairs:
                    assert _same(a, Summary(**b)), (name, p, k, a, b)


def test_a_rule_reading_any_geometry_stat_gets_intervals(monkeypatch):
    """The issue's case: inter_over_xy was in the full-grid summary but not in the resampled ones
    (KeyError inside judge, and the claim reported as not run)."""
    r = _sweep(4, 3)

    def mine(summary, t):
        g = summary.geometry["p_last"][2]
        v = g["inter_over_xy"].median
        return rules.combine("MINE", summary.label,
                             [rules.Part("p_last", rules.HOLDS if v < 2 else rules.FAILS,
                                         2 - v, f"{v}", {"inter": v,
                                                         "scale": g["delta_scale"].median})])

    monkeypatch.setitem(registry.CLAIMS, "MINE", registry.Claim("MINE", "mine", "sweep", mine, {}))
    v = uncertainty.judge("MINE", r, _with_section("MINE"))
    assert set(v.parts[0].intervals) == {"margin", "inter", "scale"}


def test_the_design_is_recorded_and_resampled_two_way():
    r = _sweep(4, 3)
    assert r.design() == (tuple(np.repeat(np.arange(4), 3)), tuple(np.tile(np.arange(3), 4)))
    assert plain(r)["persona_index"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="persona_index"):
        dataclasses.replace(r, persona_index=()).design()
    idx = uncertainty.resample(*r.design(), resamples=200)
    p = np.asarray(r.persona_index)[idx].reshape(200, 4, 3)
    assert (p == p[:, :, :1]).all()  # whole personas drawn: every task of each drawn persona
