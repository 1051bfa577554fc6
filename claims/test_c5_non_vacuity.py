"""C5 (new, not in the paper): a low additive KL only counts where the site matters. At an
informative early/mid layer (median null KL >= 0.05, h_BB substituted alone) the additive KL
must be <= 0.1 and <= half the null KL. Reported beside C1 everywhere."""
import pytest


@pytest.mark.claim("C5")
def test_c5_non_vacuity(sweep_result, claim_gate):
    claim_gate(sweep_result)
