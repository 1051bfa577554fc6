"""C6 (new, not in the paper): C1L's question in normalized form. Where the site is informative
(median null KL >= 0.05), the share the sum leaves unexplained, U = median additive KL / median
null KL (F = 1 - U), must at least double from the shallowest informative to the deepest swept
layer. C1L can hold while C6 fails: then localization is in the size of the effect, not in how
additive it is."""
import pytest


@pytest.mark.claim("C6")
def test_c6_normalized_localization(sweep_result, claim_gate):
    claim_gate(sweep_result)
