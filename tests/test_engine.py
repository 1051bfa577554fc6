"""Batched, cached and fast paths give what the plain one-at-a-time computation gives."""
import dataclasses

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from lac_core import engine, experiments
from lac_core.hooks import Patch, hook_count, make_patches, substitute
from lac_core.prompts import load_grids, render

GRIDS = load_grids()


def _prompts(lm, n=4, grid="short", condition="XY"):
    g = GRIDS[grid]
    return [list(render(lm.tokenizer, g.user_text(c, condition)).ids) for c in g.cells[:n]]


def test_capture_batch_equals_one_at_a_time(any_lm):
    seqs = _prompts(any_lm, 4, "long") + _prompts(any_lm, 2, "short")
    pos = [[0, len(s) // 2, len(s) - 1] for s in seqs]
    batched = engine.capture_residuals(any_lm, seqs, pos, token_budget=10_000)
    single = torch.cat([engine.capture_residuals(any_lm, [s], [p]) for s, p in zip(seqs, pos)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_greedy_batch_equals_one_at_a_time(any_lm):
    prompts = _prompts(any_lm, 3, "long") + _prompts(any_lm, 3, "short")
    batched = engine.greedy(any_lm, prompts, 12)
    assert batched == [engine.greedy(any_lm, [p], 12)[0] for p in prompts]


def _greedy_without_cache(lm, prompt, n, patches):
    """Reference: recompute the whole sequence every step, the patch applied at its prompt position."""
    seq = list(prompt)
    for _ in range(n):
        with substitute(lm.layers, make_patches(patches)), torch.inference_mode():
            logits = lm.model(torch.tensor([seq])).logits
        seq.append(int(logits[0, -1].float().argmax()))
    return seq[len(prompt):]


def test_greedy_kv_cache_agrees_under_prompt_intervention(any_lm):
    prompts = _prompts(any_lm, 2)
    layer = any_lm.n_layers // 2
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(i)
        vec = torch.randn(any_lm.d_model, generator=gen) * 4
        patches = [(layer, 0, len(prompt) - 1, vec)]
        cached = engine.greedy(any_lm, [prompt], 10, prompt_patches=patches)[0]
        assert cached == _greedy_without_cache(any_lm, prompt, 10, patches)
        assert cached != engine.greedy(any_lm, [prompt], 10)[0] or any_lm.spec.source == "tiny"


def test_batched_prompt_intervention_equals_single(any_lm):
    """Per-row prompt patches land on each row's own (left-padded) position."""
    prompts = _prompts(any_lm, 3, "long")
    layer = 1
    vecs = [torch.randn(any_lm.d_model, generator=torch.Generator().manual_seed(i)) * 4 for i in range(3)]
    patches = [(layer, r, len(p) - 1, v) for r, (p, v) in enumerate(zip(prompts, vecs))]
    batched = engine.greedy(any_lm, prompts, 8, prompt_patches=patches)
    single = [engine.greedy(any_lm, [p], 8, prompt_patches=[(layer, 0, len(p) - 1, v)])[0]
              for p, v in zip(prompts, vecs)]
    assert batched == single


def test_greedy_from_a_shared_prefix_equals_full_prompts(any_lm):
    """Rows continuing a cached prompt prefix (rows repeating it, one patched at p_last) generate
    what the full prompts generate."""
    prompts = _prompts(any_lm, 2, "long") + _prompts(any_lm, 1, "short")
    layer = any_lm.n_layers // 2
    vec = torch.randn(any_lm.d_model, generator=torch.Generator().manual_seed(7)) * 4
    full = engine.greedy(any_lm, [prompts[0], prompts[0], prompts[1], prompts[2]], 10,
                         prompt_patches=[(layer, 1, len(prompts[0]) - 1, vec)])
    pre = engine.greedy(any_lm, [p[:-1] for p in prompts], 1, keep_cache=True)
    shared = engine.greedy(any_lm, [[prompts[r][-1]] for r in (0, 0, 1, 2)], 10, prefix=pre,
                           prefix_rows=[0, 0, 1, 2], prompt_patches=[(layer, 1, 0, vec)])
    assert shared == full
    assert shared[0] != shared[1] or any_lm.spec.source == "tiny"


def test_greedy_ignores_generation_config(tiny):
    prompt = _prompts(tiny, 1)[0]
    before = engine.greedy(tiny, [prompt], 12)[0]
    cfg = tiny.model.generation_config
    saved = cfg.to_dict()
    try:
        cfg.repetition_penalty, cfg.do_sample, cfg.temperature, cfg.no_repeat_ngram_size = 5.0, True, 0.3, 2
        assert engine.greedy(tiny, [prompt], 12)[0] == before
    finally:
        tiny.model.generation_config = type(cfg).from_dict(saved)
    neutral = GenerationConfig(max_new_tokens=12, do_sample=False, num_beams=1, repetition_penalty=1.0,
                               eos_token_id=None, pad_token_id=tiny.tokenizer.pad_token_id)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=neutral)
    assert ref[0, len(prompt):].tolist() == before


def test_fast_plan_equals_naive_plan(any_lm):
    """The oracle: the batched, prefix-reusing plan gives the per-site plan's KLs and tokens."""
    grid = GRIDS["short"]
    if any_lm.spec.source != "tiny":  # the naive plan is slow on a real model: half the grid is enough
        grid = dataclasses.replace(grid, personas=dict(list(grid.personas.items())[:2]))
    fast = experiments.sweep(any_lm, grid, plan="fast", token_budget=4096)
    naive = experiments.sweep(any_lm, grid, plan="naive")
    assert fast.references == naive.references
    np.testing.assert_allclose(fast.kl_add, naive.kl_add, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(fast.kl_null, naive.kl_null, rtol=1e-3, atol=2e-5)
    for s in fast.geometry:
        np.testing.assert_allclose(fast.geometry[s], naive.geometry[s], rtol=1e-3, atol=1e-4)
    assert fast.cost["forward_tokens"] <= 1.5 * fast.cost["floor_tokens"]
    assert fast.cost["forward_layer_tokens"] <= 1.5 * fast.cost["floor_layer_tokens"]
    assert naive.cost["forward_layer_tokens"] > 3 * fast.cost["forward_layer_tokens"]


def _reference_pass(lm, n_new=12):
    grid = GRIDS["short"]
    prompt = list(render(lm.tokenizer, grid.user_text(grid.cells[0], "XY")).ids)
    gen = engine.greedy(lm, [prompt], n_new, keep_cache=True, keep_logprobs=True, capture_tail=6)
    return prompt, gen, prompt + gen.tokens[0][: n_new - 1]


def test_reference_pass_captures_and_logprobs_equal_a_full_forward(any_lm):
    """What the greedy pass records (residuals of the prompt tail and of fed tokens, each step's
    log-probs) is what one full forward of prompt + tokens gives."""
    prompt, gen, seq = _reference_pass(any_lm)
    positions = list(range(len(prompt) - 6, len(seq)))
    full = engine.capture_residuals(any_lm, [seq], [positions])[0]
    torch.testing.assert_close(gen.residuals[0], full, rtol=1e-4, atol=1e-4)
    lp = engine.forward_logprobs(any_lm, seq, len(prompt) - 1, len(seq))
    torch.testing.assert_close(gen.logprobs[0, : len(seq) - len(prompt) + 1], lp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_starting_at_a_layer_equals_a_full_patched_forward(any_lm, where):
    """Skipping the layers below a substitution (fed the clean residuals there) and the positions
    before it (the cached prefix) gives the full patched forward's log-probs."""
    prompt, gen, seq = _reference_pass(any_lm)
    layer = {"first": 1, "middle": any_lm.n_layers // 2, "last": any_lm.n_layers - 1}[where]
    p = len(prompt) - 3  # a probe inside the prompt; the suffix runs to the end of seq
    vec = torch.randn(any_lm.d_model, generator=torch.Generator().manual_seed(layer)) * 3
    j = gen.residual_index(0, p)
    hidden = gen.residuals[0, layer, j:][None].clone()
    hidden[0, 0] = vec
    keep = len(seq) - p
    lp, _ = engine.extend(any_lm, gen, [0], gen.column(0, p), [seq[p:]], start_layer=layer, hidden=hidden, keep=keep)
    patch = {layer: Patch(torch.tensor([0]), torch.tensor([p]), vec[None])}
    full = engine.forward_logprobs(any_lm, seq, p, len(seq), patch)
    torch.testing.assert_close(lp[0], full, rtol=1e-4, atol=1e-4)
    identity = gen.residuals[0, layer, j:][None]  # writing back the clean residual gives the clean run
    lp0, _ = engine.extend(any_lm, gen, [0], gen.column(0, p), [seq[p:]], start_layer=layer, hidden=identity,
                           keep=keep)
    torch.testing.assert_close(lp0[0], engine.forward_logprobs(any_lm, seq, p, len(seq)), rtol=1e-4, atol=1e-4)
    assert hook_count(any_lm.model) == 0 and all(type(m) is type(any_lm.layers[-1]) for m in any_lm.layers)


def test_extend_repeats_cache_rows_and_captures(tiny):
    """Rows may share a cached prefix; captured suffix residuals equal those of full forwards."""
    prompts = _prompts(tiny, 2, "long")
    gen = engine.greedy(tiny, prompts, 1, keep_cache=True)
    width = max(len(p) for p in prompts)
    tails = [[5, 6], [7, 8], [9, 10]]
    rows = [0, 1, 0]
    _, res = engine.extend(tiny, gen, rows, width, tails, capture_all=True)
    for k, (r, t) in enumerate(zip(rows, tails)):
        seq = prompts[r] + t
        full = engine.capture_residuals(tiny, [seq], [[len(seq) - 2, len(seq) - 1]])[0]
        torch.testing.assert_close(res[k], full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("budget", [1, 50, 10_000])
def test_chunks_respect_budget(budget):
    lengths = [5, 40, 12, 33, 7, 60]
    seen = []
    for batch in engine.chunks(lengths, budget):
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= budget
        seen += batch
    assert seen == list(range(len(lengths)))
