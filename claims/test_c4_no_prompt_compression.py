"""C4: a cached vector is no compressed persona prompt. Injecting h_BB + dX + dY, or even the oracle
h_XY, at (mid layer, p_last) of the persona-free host prompt closes at most a third of the host-to-
target KL gap (median over cells), and clamping the additive predictions at many layers at once does
not do better. Precondition: median KL(host) >= 0.5."""
import pytest


@pytest.mark.claim("C4")
def test_c4_no_prompt_compression(host_result, claim_gate):
    claim_gate(host_result)


def test_cell_oracle_no_worse_than_nothing(host_cell, host_result, cell_gate):
    """Per cell: the host really differs from the target (KL > 0, finite) and writing the target's own
    residual into the host does not make it worse than no intervention, beyond a tolerance."""
    cell_gate("oracle_no_worse", host_result, host_cell)
