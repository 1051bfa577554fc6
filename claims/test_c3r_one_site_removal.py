"""C3R: removing dX at one site (h_XY - dX at mid layer, p_last) barely changes the persona markers:
remove-X any-marker count >= 0.75 x clean (same precondition as C3)."""
import pytest


@pytest.mark.claim("C3R")
def test_c3r_one_site_removal_is_weak(marker_result, claim_gate):
    claim_gate(marker_result)
