"""C3: with h_BB + dX + dY substituted at (mid layer, p_last) during the prompt pass, 80-token greedy
generations keep persona markers near the clean count (>= 0.75 x clean), while the bare task prompt
loses them (<= 0.5 x clean). Precondition: markers in at least 25% of clean generations."""
import pytest


@pytest.mark.claim("C3")
def test_c3_marker_preservation(marker_result, claim_gate):
    claim_gate(marker_result)


def test_cell_additive_keeps_a_marker(marker_cell, marker_result, cell_gate):
    """Per cell: where the clean generation shows a persona marker, the additive one shows one too."""
    cell_gate("additive_keeps_marker", marker_result, marker_cell)
