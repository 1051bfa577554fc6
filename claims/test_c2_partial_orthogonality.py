"""C2: cos(dX, dY) stays well below cos(dXY, dX + dY): persona and task directions are partially
separable, and their sum points where the composite goes (every swept layer, p_last/g1/g2)."""
import pytest


@pytest.mark.claim("C2")
def test_c2_partial_orthogonality(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("C2", sweep_result, lm.spec.name, sweep_grid)


def test_cell_sum_beats_alignment(lm, sweep_grid, sweep_cell, sweep_result, cell_gate):
    """Per cell, at every swept layer and probe: cos(dXY, dX + dY) > cos(dX, dY)."""
    cell_gate("sum_beats_alignment", sweep_result, lm.spec.name, sweep_grid, sweep_cell)
