"""One prompt pass shared by an experiment's residuals, target, generations and teacher-forced
windows (experiments.PromptPass) gives what separate passes give, for less work."""
import numpy as np
import pytest
import torch

from lac_core.protocol import experiments
from lac_core.engine.forward import Engine
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.prompts import CONDITIONS

GRID = resolve_grid("example")


def test_p_last_residuals_are_each_prompts_own(any_lm):
    """Read from the left-padded pass (system prompt once), each residual equals a forward of
    its prompt alone, at its last position."""
    eng = Engine(any_lm)
    prompts, h = experiments.p_last_residuals(eng, GRID)
    for ci, cp in enumerate(prompts):
        for k, cond in enumerate(CONDITIONS):
            ids = list(cp[cond].ids)
            alone = Engine(any_lm).capture([ids], [[len(ids) - 1]])[0, :, 0]
            torch.testing.assert_close(h[ci, k], alone, rtol=1e-4, atol=1e-4)
    assert not torch.equal(h[:, 0], h[:, 3])  # BB and XY differ


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_one_shared_pass_equals_separate_passes(lac_models, arch):
    """markers and host_injection without residuals (or target) run one pass for everything;
    given them, each runs its own. Tokens are identical, KLs within the batch-invariance
    tolerance, and the shared runs push fewer tokens than residuals + target + experiment."""
    lm = lac_models(f"tiny-{arch}")
    shared_m, shared_h = Engine(lm), Engine(lm)
    m = experiments.markers(shared_m, GRID, n_new=10)
    h = experiments.host_injection(shared_h, GRID)
    apart = Engine(lm)
    res = experiments.p_last_residuals(apart, GRID)
    target = experiments.xy_target(apart, GRID, res[0])
    m2 = experiments.markers(apart, GRID, residuals=res, n_new=10)
    h2 = experiments.host_injection(apart, GRID, residuals=res, target=target)
    assert m.tokens == m2.tokens
    assert h.target_tokens == h2.target_tokens
    a = np.array([list(h.kl[c].values()) for c in h.cells])
    b = np.array([list(h2.kl[c].values()) for c in h2.cells])
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)
    assert shared_m.cost.tokens + shared_h.cost.tokens < apart.cost.tokens
