"""Beyond the paper, measured rather than claimed: how much persona the vectors carry at the
marker site. Dose: additive + (a - 1) dX for a in {0, 0.5, 1, 2}; swap: h_AY - dX_A + dX_B with B
the next persona (--lac-swap-pairs all: every other). The report reads the numbers; these tests
check that what it reads is whole and sane."""
import math

from lac_core.report import breakdown


def test_dose_response_is_measured(lm, marker_grid, marker_result, steering_result):
    s = steering_result
    assert [float(a) for a in s.dose] == [float(a) for a in s.doses] and 1.0 in s.doses
    for a, per_cell in s.dose.items():
        assert set(per_cell) == set(marker_result.cells), a
        for cell, v in per_cell.items():
            assert math.isfinite(v["kl"]) and v["kl"] > -1e-5, (a, cell, v["kl"])
    for cell in marker_result.cells:  # a = 1 is the additive condition, not a second generation
        assert s.dose["1.0"][cell]["tokens"] == marker_result.tokens[cell]["additive"]


def test_persona_swap_is_measured(lm, marker_grid, marker_result, steering_result):
    s = steering_result
    assert len(s.swaps) >= len(marker_result.cells)
    for w in s.swaps:
        assert w["other"] != w["persona"] and math.isfinite(w["kl"]) and w["kl"] > -1e-5, w["cell"]
    share = breakdown.swap_share(s)
    assert share["eligible"] == sum(bool(w["clean_own_hits"]) for w in s.swaps)
