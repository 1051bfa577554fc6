"""The whole short-grid sweep (five layers, four probes, additive + null) through the fast plan and
the straightforward per-site plan, in the same run, with the work each computes against the floor:
token positions pushed through the model, and token-layers (positions x decoder layers run; the
fast plan skips the layers below each substitution). The floor is what the protocol must evaluate:
every distinct clean prefix once, through every layer, and each substituted run from its probe on,
from its layer up (plans.floor_tokens)."""
import numpy as np

from lac_core.protocol import experiments
from lac_core.engine.forward import Engine
from lac_core.protocol.grids import resolve_grid

_SEEN = {}


def _sweep(benchmark, lm, plan, record, peak_rss):
    grid = resolve_grid("short")
    with peak_rss() as mem:
        result = benchmark.pedantic(lambda: experiments.sweep(Engine(lm), grid, plan=plan), rounds=1, iterations=1)
    cost = result.cost
    record(f"sweep {lm.spec.name} short grid", f"{plan} plan", benchmark,
           forward_tokens=cost["forward_tokens"], floor_tokens=cost["floor_tokens"],
           tokens_over_floor=round(cost["forward_tokens"] / cost["floor_tokens"], 3),
           layer_tokens_over_floor=round(cost["forward_layer_tokens"] / cost["floor_layer_tokens"], 3),
           forward_calls=cost["forward_calls"], peak_rss_delta_mb=mem.delta)
    _SEEN[(lm.spec.name, plan)] = result
    return result


def test_sweep_fast(benchmark, bench_lm, record, peak_rss):
    r = _sweep(benchmark, bench_lm, "fast", record, peak_rss)
    assert r.cost["forward_tokens"] <= 1.5 * r.cost["floor_tokens"]
    assert r.cost["forward_layer_tokens"] <= 1.5 * r.cost["floor_layer_tokens"]


def test_sweep_naive(benchmark, bench_lm, record, peak_rss):
    r = _sweep(benchmark, bench_lm, "naive", record, peak_rss)
    fast = _SEEN.get((bench_lm.spec.name, "fast"))
    if fast is not None:  # identical numbers, whatever the speed
        np.testing.assert_allclose(fast.kl_add, r.kl_add, rtol=1e-3, atol=2e-5)
        np.testing.assert_allclose(fast.kl_null, r.kl_null, rtol=1e-3, atol=2e-5)
        assert fast.references == r.references
