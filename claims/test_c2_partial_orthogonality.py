"""C2: cos(dX, dY) stays well below cos(dXY, dX + dY): persona and task directions are partially
separable, and their sum points where the composite goes (every swept layer, p_last/g1/g2)."""
import pytest


@pytest.mark.claim("C2")
def test_c2_partial_orthogonality(sweep_result, claim_gate):
    claim_gate(sweep_result)


def test_cell_sum_beats_alignment(sweep_cell, sweep_result, cell_gate):
    """Per cell, at every swept layer and probe: cos(dXY, dX + dY) > cos(dX, dY)."""
    cell_gate("sum_beats_alignment", sweep_result, sweep_cell)
