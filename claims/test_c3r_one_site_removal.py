"""C3R: removing dX at one site (h_XY - dX at mid layer, p_last) barely changes the persona markers:
remove-X any-marker count >= 0.75 x clean (same precondition as C3)."""
from lac_core import rules


def test_c3r_one_site_removal_is_weak(lm, marker_grid, marker_result, thresholds, claim_gate):
    claim_gate("C3R", rules.c3r(marker_result.summary, thresholds.C3R), lm.spec.name, marker_grid)
