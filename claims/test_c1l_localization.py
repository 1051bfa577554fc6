"""C1': the additive regime is local: the median KL at the deepest swept layer is at least twice
the median KL at the shallowest, at p_last, g1 and g2."""
from lac_core import rules


def test_c1l_localization(lm, sweep_grid, sweep_summary, thresholds, claim_gate):
    claim_gate("C1L", rules.c1l(sweep_summary, thresholds.C1L), lm.spec.name, sweep_grid)
