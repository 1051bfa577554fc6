"""C6 and normalized faithfulness F on hand-made numbers: every verdict path, F undefined (never 1
or NaN) where the null KL is 0, and the issue's SmolLM2 reading (flat U) failing C6."""
import math

import pytest

from lac_core.verdicts import rules

from .test_rules import T, sweep

LAYERS = (5, 8, 11, 14, 17)


def test_f_is_one_minus_additive_over_null():
    f = rules.faithfulness(sweep({5: 0.01, 8: 0.02, 11: 0.03, 14: 0.1, 17: 0.5},
                                 {5: 0.1, 8: 0.1, 11: 0.3, 14: 0.4, 17: 1.0}))
    assert f["p_last"][5] == pytest.approx(0.9) and f["g2"][17] == pytest.approx(0.5)
    assert f["g1"][14] == pytest.approx(0.75)


def test_f_undefined_where_null_is_zero():
    f = rules.faithfulness(sweep({k: 0.0 for k in LAYERS}, {5: 0.0, 8: 0.0, 11: 0.2, 14: 0.3,
                                                            17: 0.4}))
    assert f["p_last"][5] is None and f["p_last"][8] is None  # not 1, not NaN
    assert f["p_last"][11] == 1.0
    assert rules.faithfulness(sweep({k: 0.1 for k in LAYERS}, None)) == {}


def test_c6_holds_when_unexplained_share_doubles():
    null = {5: 0.01, 8: 0.1, 11: 0.2, 14: 0.5, 17: 1.0}
    add = {5: 0.001, 8: 0.005, 11: 0.02, 14: 0.1, 17: 0.3}  # U: -, 0.05, 0.1, 0.2, 0.3
    v = rules.c6(sweep(add, null), T.C6)
    assert v.status == rules.HOLDS
    n = v.deciding.numbers
    assert (n["shallowest"], n["deepest"]) == (8, 17)  # L5 is not informative (null 0.01)
    assert n["ratio"] == pytest.approx(6.0) and n["F_deepest"] == pytest.approx(0.7)


def test_c6_fails_on_flat_share_while_c1l_holds():
    """The issue's SmolLM2 reading: raw KL grows tenfold, U flat at about 0.11."""
    null = {5: 0.01, 8: 0.03, 11: 0.42, 14: 0.55, 17: 1.5}
    add = {5: 0.001, 8: 0.003, 11: 0.045, 14: 0.06, 17: 0.17}
    s = sweep(add, null)
    assert rules.c1l(s, T.C1L).status == rules.HOLDS
    v = rules.c6(s, T.C6)
    assert v.status == rules.FAILS and v.deciding.numbers["ratio"] < 1.2
    assert v.deciding.margin < 0


def test_c6_at_the_threshold():
    null = {k: 1.0 for k in LAYERS}
    assert rules.c6(sweep({5: 0.1, 8: 0.1, 11: 0.1, 14: 0.1, 17: 0.2}, null),
                    T.C6).status == rules.HOLDS
    assert rules.c6(sweep({5: 0.1, 8: 0.1, 11: 0.1, 14: 0.1, 17: 0.1999}, null),
                    T.C6).status == rules.FAILS


@pytest.mark.parametrize("null, why", [
    (None, "no null control"),
    ({5: 0.01, 8: 0.01, 11: 0.01, 14: 0.01, 17: 1.0}, "needs two"),  # one informative layer
    ({5: 0.1, 8: 0.2, 11: 0.3, 14: 0.4, 17: 0.01}, "the deepest"),  # deepest not informative
])
def test_c6_inconclusive(null, why):
    v = rules.c6(sweep({k: 0.01 for k in LAYERS}, null), T.C6)
    assert v.status == rules.INCONCLUSIVE and why in v.deciding.detail


def test_c6_zero_share_at_the_deepest_fails():
    null = {k: 1.0 for k in LAYERS}
    v = rules.c6(sweep({k: 0.0 for k in LAYERS}, null), T.C6)
    assert v.status == rules.FAILS and "U at the deepest is 0" in v.deciding.detail
    assert not math.isnan(v.deciding.margin)
