"""C1': the additive regime is local: the median KL at the deepest swept layer is at least twice
the median KL at the shallowest, at p_last, g1 and g2."""
import pytest


@pytest.mark.claim("C1L")
def test_c1l_localization(sweep_result, claim_gate):
    claim_gate(sweep_result)
