"""Dose and swap (steering.py) on the tiny models: a = 1 is the additive condition bit for bit,
a swap with B = A reproduces the clean run, and the shares read what the generations hold."""
import numpy as np
import pytest
import torch

from lac_core.report import breakdown
from lac_core.engine.forward import Engine
from lac_core.protocol.experiments import markers, p_last_residuals
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.steering import dose_vector, partners, steering

GRID = resolve_grid("example")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def run(request, lac_models):
    lm = lac_models(f"tiny-{request.param}")
    eng = Engine(lm)
    res = p_last_residuals(eng, GRID)
    m = markers(eng, GRID, residuals=res, n_new=12)
    return lm, res, m


def test_dose_one_is_the_additive_vector_bit_for_bit(run):
    _lm, (_p, h), m = run
    bb, xb, by = h[:, 0, m.layer], h[:, 1, m.layer], h[:, 2, m.layer]
    additive = xb + by - bb
    assert torch.equal(dose_vector(additive, xb - bb, 1.0), additive)
    assert not torch.equal(dose_vector(additive, xb - bb, 2.0), additive)


def test_dose_one_regenerated_equals_the_additive_generation(run):
    lm, res, m = run
    s = steering(Engine(lm), GRID, m, residuals=res, doses=(1.0,), regenerate_a1=True)
    reused = steering(Engine(lm), GRID, m, residuals=res, doses=(1.0,))
    for cell in m.cells:
        assert s.dose["1.0"][cell]["tokens"] == m.tokens[cell]["additive"]
        assert reused.dose["1.0"][cell]["tokens"] == m.tokens[cell]["additive"]
        assert reused.dose["1.0"][cell]["kl"] == s.dose["1.0"][cell]["kl"]
    assert reused.cost["forward_tokens"] < s.cost["forward_tokens"]  # a = 1 not generated twice


def test_swap_with_itself_reproduces_the_clean_run(run):
    lm, res, m = run
    same = {p: [p] for p in GRID.personas}
    s = steering(Engine(lm), GRID, m, residuals=res, doses=(), pairs=same)
    assert len(s.swaps) == len(m.cells)
    for sw in s.swaps:
        assert sw["tokens"] == m.tokens[sw["cell"]]["clean"]
        assert abs(sw["kl"]) <= 1e-6


def test_partners_next_wraps_and_all_pairs():
    nxt = partners(GRID)
    keys = list(GRID.personas)
    assert nxt[keys[-1]] == [keys[0]] and all(nxt[a] != [a] for a in keys)
    assert all(len(v) == len(keys) - 1 and a not in v for a, v in partners(GRID, "all").items())


def test_doses_scored_and_shares_computed(run):
    lm, res, m = run
    s = steering(Engine(lm), GRID, m, residuals=res)
    assert set(s.dose) == {"0.0", "0.5", "1.0", "2.0"}
    kls = np.array([v["kl"] for d in s.dose.values() for v in d.values()])
    assert np.all(np.isfinite(kls)) and np.all(kls > -1e-5)
    table = breakdown.dose_table(s)
    assert [row["a"] for row in table] == [0.0, 0.5, 1.0, 2.0]
    share = breakdown.swap_share(s)
    assert share["swaps"] == len(m.cells) and 0 <= share["eligible"] <= share["swaps"]
