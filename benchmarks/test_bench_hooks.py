"""Hook overhead: a plain forward vs the same forward with a capture hook on every layer, with one
substitution, and with the same capture done by nnsight, at two shapes the fast plan uses: a
capture pass (16 right-padded rows of 64 tokens) and a batch of substituted runs (96 rows of 12).

Two measures, both taken in the same run:
- end to end, interleaved: the variants run in turn, in a shuffled order, round after round; each
  round gives a ratio to its own plain forward and the median of those ratios is reported (a
  drifting machine moves a whole round, not one variant);
- inside the hooks: the hooks a context registers are called directly, one forward's worth,
  and their time is divided by the plain forward's (what the hooks add, free of the forward's noise).
"""
import random
import statistics
import time

import pytest
import torch

from lac_core.engine.forward import Engine
from lac_core.engine.hooks import Sub, capture, substitute

from .conftest import RESULTS

SHAPES = {"capture pass 16x64": (16, 64), "substituted runs 96x12": (96, 12)}


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request):
    return request.param


@pytest.fixture(scope="module")
def batch(bench_lm, shape):
    rows, length = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    return torch.randint(10, min(bench_lm.model.config.vocab_size, 5000), (rows, length), generator=gen)


def _plain(lm, ids):
    with torch.inference_mode():
        return lm.model(ids, use_cache=False, logits_to_keep=1)


def _contexts(lm, ids):
    rows, length = ids.shape
    index = torch.full((rows, 4), length - 1)
    subs = [[Sub(lm.n_layers // 2, length - 1, torch.zeros(lm.d_model))]]
    return {"capture (lac)": lambda: capture(lm.layers, range(lm.n_layers), index),
            "substitute (lac)": lambda: substitute(lm.layers, subs)}


def test_nnsight_capture_gives_our_numbers(bench_lm, batch):
    nnsight = pytest.importorskip("nnsight")
    outs = _nnsight_capture(bench_lm, nnsight.NNsight(bench_lm.model), batch)
    rows, length = batch.shape
    mine = Engine(bench_lm).capture(batch.tolist(), [list(range(length - 4, length))] * rows)
    torch.testing.assert_close(torch.stack([o.float() for o in outs], 1), mine)


def _nnsight_capture(lm, wrapped, ids):
    import nnsight

    with torch.inference_mode(), wrapped.trace(ids, use_cache=False, logits_to_keep=1):
        outs = nnsight.save([])
        for layer in wrapped.model.layers:
            outs.append(layer.input[:, -4:])
    return outs


def test_hook_overhead_interleaved(benchmark, bench_lm, batch, shape, rounds):
    nnsight = pytest.importorskip("nnsight")
    wrapped = nnsight.NNsight(bench_lm.model)
    contexts = _contexts(bench_lm, batch)

    def hooked(make):
        def run():
            with make():
                _plain(bench_lm, batch)
        return run

    variants = {"plain": lambda: _plain(bench_lm, batch),
                **{name: hooked(make) for name, make in contexts.items()},
                "capture (nnsight)": lambda: _nnsight_capture(bench_lm, wrapped, batch)}
    times = {k: [] for k in variants}
    order = list(variants)
    rng = random.Random(0)

    def all_rounds():
        for name in order:  # warm-up
            variants[name]()
        for _ in range(2 * rounds):
            rng.shuffle(order)
            for name in order:
                t = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t)

    benchmark.pedantic(all_rounds, rounds=1, iterations=1)
    group = f"hooks {bench_lm.spec.name} {shape}"
    for name, ts in times.items():
        ratios = [t / p for t, p in zip(ts, times["plain"])]
        RESULTS.setdefault(group, {})[name] = {
            "min": min(ts), "median_paired_ratio": round(statistics.median(ratios), 4),
            "ratio_of_minima": round(min(ts) / min(times["plain"]), 4), "rounds": len(ts)}
    benchmark.extra_info.update({k: v["median_paired_ratio"] for k, v in RESULTS[group].items()})
    assert all(len(ts) == 2 * rounds for ts in times.values())


def test_time_inside_hooks(benchmark, bench_lm, batch, shape, rounds):
    """Call the registered hooks directly, one forward's worth of calls, on a residual of the batch's shape."""
    rows, length = batch.shape
    hidden = torch.randn(rows, length, bench_lm.d_model, dtype=bench_lm.model.dtype)
    group = f"hooks {bench_lm.spec.name} {shape} inside hooks"

    def measure():
        plain = min(_timed(lambda: _plain(bench_lm, batch)) for _ in range(rounds))
        RESULTS.setdefault(group, {})["plain forward"] = {"min": plain}
        for name, make in _contexts(bench_lm, batch).items():
            with make():
                calls = [(layer, list(layer._forward_pre_hooks.values()), list(layer._forward_hooks.values()))
                         for layer in bench_lm.layers if layer._forward_pre_hooks or layer._forward_hooks]
                assert calls, "the context registered no hooks"

                def one_forward_of_hooks():  # as torch runs them: pre-hooks may replace the args
                    for layer, pre, post in calls:
                        args, kwargs = (hidden,), {}
                        for hook in pre:
                            out = hook(layer, args, kwargs)
                            args, kwargs = out if out is not None else (args, kwargs)
                        for hook in post:  # the substitution's read-back
                            hook(layer, args, kwargs, None)

                inside = min(_timed(one_forward_of_hooks) for _ in range(10 * rounds))
            RESULTS[group][name] = {"min": inside, "share_of_forward": round(inside / plain, 5)}

    benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v.get("share_of_forward") for k, v in RESULTS[group].items()})
    assert len(RESULTS[group]) == 3 and all(v["min"] > 0 for v in RESULTS[group].values())


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
