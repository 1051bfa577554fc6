"""C1: near answer formation, h_BB + dX + dY substituted in an early/mid layer leaves the output
essentially clean (median 10-token KL <= 0.1 nats at p_last, g1 and g2), on both grids."""
import pytest


@pytest.mark.claim("C1")
def test_c1_additive_sufficiency(sweep_result, claim_gate):
    claim_gate(sweep_result)


def test_cell_additive_no_worse_than_null(sweep_cell, sweep_result, cell_gate):
    """Per cell, where C1 is decided for each probe: the additive prediction costs no more than
    substituting h_BB alone (cells.additive_vs_null)."""
    cell_gate("additive_vs_null", sweep_result, sweep_cell)
