"""Each engine operation against the plain one-at-a-time computation: prefill, decode, capture,
batching under any token budget, and the fast sweep plan against the naive one."""
import dataclasses
import os

import numpy as np
import pytest
import torch
from transformers import DynamicCache, GenerationConfig

from lac_core.engine import forward as engine, kvcache, prefixes
from lac_core.protocol import experiments, passes, plans
from lac_core.engine.forward import Continuation, Engine, Sub, kl_sum, logprobs_of
from lac_core.errors import UsageError
from lac_core.engine.hooks import substitute
from lac_core.engine.kvcache import ROOM, RoomyCache, gather_prefix
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.prompts import N_REF, render

from .conftest import hook_count

GRIDS = {name: resolve_grid(name) for name in ("short", "long")}
TOL = dict(rtol=1e-4, atol=1e-4)


def _prompts(lm, n=4, grid="short", condition="XY"):
    g = GRIDS[grid]
    return [list(render(lm.tokenizer, g.user_text(c, condition)).ids) for c in g.cells[:n]]


def _plain(lm, seq, subs=()):
    """Reference: one full forward of one sequence, substitutions by the hooks directly."""
    with substitute(lm.layers, [list(subs)]), torch.inference_mode():
        return logprobs_of(lm.model(torch.tensor([seq]), use_cache=False).logits[0])


def _vec(lm, seed, scale=4.0):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def test_prefill_equals_a_plain_forward(any_lm):
    """Left-padded rows of different lengths give each prompt's own log-probs, with and without a
    substitution; the substitution changes what follows it."""
    eng = Engine(any_lm)
    prompts = _prompts(any_lm, 3, "long") + _prompts(any_lm, 1, "short")
    layer = any_lm.n_layers // 2
    subs = [[Sub(layer, len(p) - 3, _vec(any_lm, i))] for i, p in enumerate(prompts)]
    plain = eng.prefill(prompts, keep=3).logprobs
    patched = eng.prefill(prompts, subs=subs, keep=3).logprobs
    for i, p in enumerate(prompts):
        torch.testing.assert_close(plain[i], _plain(any_lm, p)[-3:], **TOL)
        torch.testing.assert_close(patched[i], _plain(any_lm, p, subs[i])[-3:], **TOL)
        assert not torch.allclose(patched[i], plain[i])


def test_the_output_head_reads_kept_positions_as_one_block(tiny):
    """The head gets the kept positions contiguous, one or several per row: on transformers'
    strided slice it runs one product per row, each reading the whole head."""
    seen = []
    head = tiny.model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        for keep in (1, 3):
            Engine(tiny).prefill(_prompts(tiny, 3, "long"), keep=keep)
    finally:
        hook.remove()
    rows = [tuple(h.shape) for h in seen if h.shape[0] == 3]  # not a shared prefix's own pass
    assert rows == [(3, 1, tiny.d_model), (3, 3, tiny.d_model)]
    assert all(h.is_contiguous() for h in seen)


def test_prefill_after_a_cached_prefix_equals_a_plain_forward(any_lm):
    """Continuing cached rows (rows repeated, one from each layer up) equals the full sequences."""
    eng = Engine(any_lm)
    prompts = _prompts(any_lm, 2, "long")
    pre = eng.prefill(prompts, keep=0, keep_state=True, capture_tail=4)
    width = max(len(p) for p in prompts)
    tails, rows = [[5, 6, 7], [8, 9, 10], [11, 12, 13]], [0, 1, 0]
    out = eng.prefill(tails, after=Continuation(pre.state, rows, width), keep=3).logprobs
    for k, (r, t) in enumerate(zip(rows, tails)):
        torch.testing.assert_close(out[k], _plain(any_lm, prompts[r] + t)[-3:], **TOL)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_starting_at_a_layer_equals_a_full_patched_forward(any_lm, where):
    """Skipping the layers below a substitution (fed the clean residuals there) and the positions
    before it (the cached prefix) gives the full patched forward; the clean residual gives the clean run."""
    eng, base = Engine(any_lm), hook_count(any_lm.model)  # transformers may keep hooks of its own
    prompt = _prompts(any_lm, 1)[0]
    gen = eng.generate([prompt], 12, keep_logprobs=True, capture_tail=6, keep_state=True)
    seq = prompt + gen.tokens[0][:11]
    layer = {"first": 1, "middle": any_lm.n_layers // 2, "last": any_lm.n_layers - 1}[where]
    p = len(prompt) - 3
    j = 6 + p - len(prompt)
    hidden = gen.residuals[0, layer, j:][None].clone()
    vec = _vec(any_lm, layer, 3.0)
    hidden[0, 0] = vec
    after = Continuation(gen.state, [0], gen.state.column(0, p))
    lp = eng.prefill([seq[p:]], after=after, start_layer=layer, hidden=hidden, keep=len(seq) - p).logprobs
    torch.testing.assert_close(lp[0], _plain(any_lm, seq, [Sub(layer, p, vec)])[p:], **TOL)
    identity = gen.residuals[0, layer, j:][None]
    lp0 = eng.prefill([seq[p:]], after=after, start_layer=layer, hidden=identity, keep=len(seq) - p).logprobs
    torch.testing.assert_close(lp0[0], _plain(any_lm, seq)[p:], **TOL)
    assert hook_count(any_lm.model) == base and all(type(m) is type(any_lm.layers[-1]) for m in any_lm.layers)


def _greedy_without_cache(lm, prompt, n, subs=()):
    """Reference: recompute the whole sequence every step, the substitution at its prompt position."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(_plain(lm, seq, subs)[-1].argmax()))
    return seq[len(prompt):]


def test_decode_from_a_cache_equals_decode_without_one(any_lm):
    eng = Engine(any_lm)
    prompt = _prompts(any_lm, 1, "long")[0]
    sub = Sub(any_lm.n_layers // 2, len(prompt) - 1, _vec(any_lm, 1))
    for subs in ([], [sub]):
        got = eng.generate([prompt], 10, subs=[subs]).tokens[0]
        assert got == _greedy_without_cache(any_lm, prompt, 10, subs)
    assert eng.generate([prompt], 10, subs=[[sub]]).tokens != eng.generate([prompt], 10).tokens \
        or any_lm.spec.source == "tiny"


def test_decode_records_what_a_full_forward_gives(any_lm):
    """The greedy pass's residuals (prompt tail and fed tokens) and per-step log-probs equal one
    full forward of prompt + tokens."""
    eng = Engine(any_lm)
    prompt = _prompts(any_lm, 1)[0]
    gen = eng.generate([prompt], 12, keep_logprobs=True, capture_tail=6)
    seq = prompt + gen.tokens[0][:11]
    full = eng.capture([seq], [list(range(len(prompt) - 6, len(seq)))])[0]
    torch.testing.assert_close(gen.residuals[0], full, **TOL)
    torch.testing.assert_close(gen.logprobs[0], _plain(any_lm, seq)[len(prompt) - 1:], **TOL)


@pytest.mark.parametrize("budget", ["below a row", "a row + 1", "large"])
def test_batched_equals_single_under_any_budget(any_lm, budget):
    """Generation, prefill continuations and captures under a budget give what one row at a time
    gives; a budget below one row runs each row alone."""
    prompts = _prompts(any_lm, 3, "long") + _prompts(any_lm, 2, "short")
    shortest = min(len(p) for p in prompts)
    eng = Engine(any_lm, {"below a row": shortest - 1, "a row + 1": shortest + 1, "large": 100_000}[budget])
    single = Engine(any_lm)
    subs = [[Sub(1, len(p) - 1, _vec(any_lm, i))] for i, p in enumerate(prompts)]
    gen = eng.generate(prompts, 8, subs=subs, keep_logprobs=True)
    for i, p in enumerate(prompts):
        one = single.generate([p], 8, subs=[subs[i]], keep_logprobs=True)
        assert gen.tokens[i] == one.tokens[0]
        torch.testing.assert_close(gen.logprobs[i], one.logprobs[0], **TOL)
    pos = [[0, len(s) // 2, len(s) - 1] for s in prompts]
    torch.testing.assert_close(eng.capture(prompts, pos),
                               torch.cat([single.capture([s], [p]) for s, p in zip(prompts, pos)]), **TOL)
    if budget == "below a row":
        assert eng.cost.calls >= len(prompts) * 8


@pytest.mark.parametrize("budget", [0, -5, 1.5])
def test_a_budget_below_one_token_is_a_usage_error(tiny, budget):
    with pytest.raises(UsageError, match="token budget"):
        Engine(tiny, budget)


@pytest.mark.parametrize("budget, rows", [(1, [[0], [1], [2], [3], [4], [5]]), (30, [[0, 1], [2, 3], [4, 5]]),
                                          (59, [[0, 1], [2, 3], [4, 5]]), (60, [[0, 1, 2, 3], [4, 5]])])
def test_chunks_keep_groups_whole(tiny, budget, rows):
    assert [list(r) for r in Engine(tiny, budget).chunks(6, 15, group=2 if budget > 1 else 1)] == rows


def test_kv_cache_api_keeps_its_meaning(tiny):
    """lac builds caches through Cache's `layers=` constructor with DynamicLayer subclasses and
    iterates (keys, values, ...) per layer (lac_core/engine/kvcache.py); if transformers changes either,
    this fails first. A one-token update writes in place once the layer has room."""
    keys = [torch.randn(2, 2, 5, 16) for _ in range(3)]
    cache = RoomyCache([(k, k + 1) for k in keys])
    assert isinstance(cache, DynamicCache)
    assert cache.get_seq_length() == 5 and len(list(cache)) == 3
    for k, layer in zip(keys, cache):
        assert torch.equal(layer[0], k) and torch.equal(layer[1], k + 1)
    grown = RoomyCache([(k.clone(), k + 1) for k in keys])
    step = [torch.randn(2, 2, 1, 16) for _ in range(ROOM + 1)]
    grown.update(step[0], -step[0], 0)  # full: grows by ROOM
    at = list(grown)[0][0].data_ptr()
    for s in step[1:ROOM + 1]:
        grown.update(s, -s, 0)
        assert list(grown)[0][0].data_ptr() == at  # in place
    k0, v0 = list(grown)[0][:2]
    assert torch.equal(k0, torch.cat([keys[0], *step], dim=-2)) and torch.equal(v0[..., 5:, :],
                                                                              -torch.cat(step, -2))
    grown.update(step[0], step[0], 0)  # out of room again: copies, keeps every position
    assert list(grown)[0][0].data_ptr() != at and grown.get_seq_length(0) == 5 + ROOM + 2
    cut = gather_prefix(cache, [1, 1, 0], 3, start_layer=1)
    first, second = list(cut)[0], list(cut)[1]
    assert first[0].shape[0] == 1 and torch.equal(second[0], keys[1][[1, 1, 0], :, :3])
    other = DynamicCache(ddp_cache_data=[(-k, 1 - k) for k in keys])
    across = gather_prefix([cache, other], [3, 0, 2, 2], 4)  # rows 2, 3 are the second part's
    joined = torch.cat([keys[2] + 1, 1 - keys[2]])
    assert torch.equal(list(across)[2][1], joined[[3, 0, 2, 2], :, :4])
    with pytest.raises(IndexError, match="cache row 4 of 4"):
        gather_prefix([cache, other], [4], 4)


def test_roomy_caches_decode_as_dynamic_caches_do(tiny, monkeypatch):
    """Greedy tokens and log-probs past ROOM steps, from scratch and continuing a kept state,
    bit for bit as with transformers' DynamicCache (which concatenates at every step). The
    continuation copies its prefix here (read in place, it sums in another order: see below)."""
    prompts, n_new = _prompts(tiny, 3), ROOM + 6
    monkeypatch.setattr(Engine, "reads_in_place_of", lambda self, after: False)

    def run():
        eng = Engine(tiny)
        scratch = eng.generate(prompts, n_new, keep_logprobs=True)
        state = eng.prefill([p[:-1] for p in prompts], keep=0, keep_state=True).state
        width = max(len(p) for p in prompts) - 1
        after = eng.generate([[p[-1]] for p in prompts], n_new, keep_logprobs=True,
                             after=Continuation(state, [0, 1, 2], width))
        return scratch, after

    roomy = run()
    monkeypatch.setattr(engine, "empty_cache", DynamicCache)
    monkeypatch.setattr(kvcache, "RoomyCache", lambda data: DynamicCache(ddp_cache_data=data))
    plain = run()
    for a, b in zip(roomy, plain):
        assert a.tokens == b.tokens
        assert torch.equal(a.logprobs, b.logprobs)


def test_continuations_read_in_place_equal_copies(tiny, monkeypatch):
    """A generation continuing a kept prompt pass reads the cached prefix where it is: the same
    tokens and log-probs (to float rounding: two sums added instead of one) as copying it per row,
    rows repeated and out of order, and the prefix costs no budget (here one chunk, not three)."""
    prompts = _prompts(tiny, 3)
    width = max(len(p) for p in prompts) - 1
    rows = [2, 0, 2, 1, 2, 0]
    vec = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(3))
    subs = [[Sub(1, 0, vec)] if k % 2 else [] for k in range(len(rows))]

    def run():  # the pass in one chunk (a pass kept in row chunks is copied from)
        state = Engine(tiny).prefill([p[:-1] for p in prompts], keep=0, keep_state=True).state
        eng = Engine(tiny, token_budget=2 * (width + 1 + ROOM + 6))
        out = eng.generate([[prompts[r][-1]] for r in rows], ROOM + 6, keep_logprobs=True,
                           subs=subs, after=Continuation(state, rows, width))
        return out, eng.cost.calls

    (shared, calls), real = run(), Engine.reads_in_place_of
    monkeypatch.setattr(Engine, "reads_in_place_of", lambda self, after: False)
    copied, copied_calls = run()
    assert shared.tokens == copied.tokens
    torch.testing.assert_close(shared.logprobs, copied.logprobs, rtol=1e-5, atol=1e-4)
    assert calls < copied_calls
    state = Engine(tiny).prefill(prompts, keep=0, keep_state=True).state
    assert real(Engine(tiny), Continuation(state, [0], 3))
    with pytest.raises(ValueError, match="cannot be continued"):
        gather_prefix(kvcache.read_in_place(state.cache, [1, 1], 3), [0], 2)
    with pytest.raises(ValueError, match="cache layer 0 holds"):
        kvcache.read_in_place(state.cache, [0], 10 ** 6)


def test_shared_prefix_scores_and_sums_as_gathered_keys():
    """kvcache.Shared reads each prompt's prefix once for all its rows: scores and weighted sums
    equal those against keys and values gathered per row (to float rounding: another product
    shape may sum in another order)."""
    gen = torch.Generator().manual_seed(0)
    prefix, rows = torch.randn(4, 2, 7, 8, generator=gen), [3, 0, 3, 3, 1]
    slots, slot = torch.tensor([[1, 0, 0], [4, 0, 0], [0, 0, 0], [0, 2, 3]]), \
        torch.tensor([9, 0, 10, 11, 3])
    shared = kvcache.Shared(prefix, None, slots, slot)
    q = torch.randn(len(rows), 2, 3, 8, generator=gen)
    gathered = prefix[rows]
    torch.testing.assert_close(shared.scores(q), q @ gathered.transpose(2, 3))
    w = torch.softmax(torch.randn(len(rows), 2, 3, 7, generator=gen), -1)
    torch.testing.assert_close(shared.weigh(w), w @ gathered)
    cache = RoomyCache([(prefix, prefix)])
    layer = kvcache.read_in_place(cache, rows, 7).layers[0]
    assert torch.equal(layer.slots, slots) and torch.equal(layer.slot, slot)


def test_greedy_ignores_generation_config(tiny):
    eng = Engine(tiny)
    prompt = _prompts(tiny, 1)[0]
    before = eng.generate([prompt], 12).tokens[0]
    cfg = tiny.model.generation_config
    saved = cfg.to_dict()
    try:
        cfg.repetition_penalty, cfg.do_sample, cfg.temperature, cfg.no_repeat_ngram_size = 5.0, True, 0.3, 2
        assert eng.generate([prompt], 12).tokens[0] == before
    finally:
        tiny.model.generation_config = type(cfg).from_dict(saved)
    neutral = GenerationConfig(max_new_tokens=12, do_sample=False, num_beams=1, repetition_penalty=1.0,
                               eos_token_id=None, pad_token_id=tiny.tokenizer.pad_token_id)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=neutral)
    assert ref[0, len(prompt):].tolist() == before


def test_a_sweep_in_cell_chunks_equals_one_pass(tiny, monkeypatch):
    """Cells taken in chunks (bounding the reference pass's memory) give the one-pass numbers."""
    grid = GRIDS["short"]
    whole = experiments.sweep(Engine(tiny), grid)
    monkeypatch.setattr(plans, "REFERENCE_LOGITS", 5 * N_REF * tiny.vocab_size)
    assert [len(c) for c in plans.cell_chunks(len(grid.cells), tiny.vocab_size)] == [4, 4, 4]
    parts = experiments.sweep(Engine(tiny), grid)
    assert parts.references == whole.references
    # each chunk pads to its own longest prompt: float32 rounding moves, within batch invariance
    np.testing.assert_allclose(parts.kl_add, whole.kl_add, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(parts.kl_null, whole.kl_null, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(parts.geometry["delta_scale"], whole.geometry["delta_scale"],
                               rtol=1e-3, atol=1e-6)
    assert parts.cost["forward_tokens"] > whole.cost["forward_tokens"]  # other conditions again


def test_fast_plan_equals_naive_plan(any_lm):
    """The oracle: the batched, prefix-reusing plan gives the per-site plan's KLs and tokens."""
    grid = GRIDS["short"]
    if any_lm.spec.source != "tiny":  # the naive plan is slow on a real model: half the grid is enough
        grid = dataclasses.replace(grid, personas=dict(list(grid.personas.items())[:2]))
    fast = experiments.sweep(Engine(any_lm, 4096), grid, plan="fast")
    naive = experiments.sweep(Engine(any_lm), grid, plan="naive")
    assert fast.references == naive.references
    np.testing.assert_allclose(fast.kl_add, naive.kl_add, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(fast.kl_null, naive.kl_null, rtol=1e-3, atol=2e-5)
    # an angle between deltas within ~1e-3 of |h_BB| is ill-conditioned (float noise ~1e-7 of |h|):
    # there, as with a sliding window shorter than the prompt, the plans agree only on the scale
    sound = (fast.geometry["delta_scale"] > 1e-3) & (naive.geometry["delta_scale"] > 1e-3)
    # the window of 8 hides the persona from most early sites; elsewhere only layer 0 (dX = 0) drops
    assert sound[..., 1:].mean() > (0.25 if any_lm.spec.name == "tiny-gemma3" else 0.95)
    for s in fast.geometry:
        np.testing.assert_allclose(fast.geometry[s][sound], naive.geometry[s][sound], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fast.geometry["delta_scale"], naive.geometry["delta_scale"], rtol=1e-3,
                               atol=1e-6)
    assert fast.cost["forward_tokens"] <= 1.5 * fast.cost["floor_tokens"]
    assert fast.cost["forward_layer_tokens"] <= 1.5 * fast.cost["floor_layer_tokens"]
    assert naive.cost["forward_layer_tokens"] > 3 * fast.cost["forward_layer_tokens"]


def test_kl_sum_is_kl_of_clean_against_intervened():
    """KL(P_clean || P_int) summed over window positions, by hand, and not the reverse direction."""
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    q = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    by_hand = float((p * (p / q).log()).sum())
    reverse = float((q * (q / p).log()).sum())
    got = float(kl_sum(logprobs_of(p.log()), logprobs_of(q.log())))
    assert got == pytest.approx(by_hand, rel=1e-5) and abs(got - reverse) > 0.05
    assert logprobs_of(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)).dtype == torch.float32


def test_a_shared_prefix_runs_once_and_changes_nothing(any_lm):
    """Rows with a common prefix (the chat template's): the prefix runs once and each row's rest
    after it, padding in between; log-probs, captured tails, continuations and greedy tokens
    equal each row alone. A sliding-window model never shares (its window counts columns)."""
    prompts = _prompts(any_lm, 3, "long") + _prompts(any_lm, 1, "short")
    common = len(os.path.commonprefix(prompts))
    assert common > 0
    eng, single = Engine(any_lm), Engine(any_lm)
    out = eng.prefill(prompts, keep=3, capture_tail=2, keep_state=True)
    windowed = any_lm.spec.name in ("tiny-gemma2", "tiny-gemma3")
    plan = prefixes.layout(prompts, 3)
    shared, width = out.state.shared, max(len(p) for p in prompts)
    if windowed:
        assert set(shared) == {0}
    else:
        assert common == plan.common and max(shared) >= common
        assert eng.cost.tokens == plan.positions([len(p) for p in prompts])
    for i, p in enumerate(prompts):  # each row's own positions: real, in order, p_last last
        cols = [out.state.column(i, q) for q in range(shared[i], len(p))]
        assert cols == list(range(width - len(p) + shared[i], width))
        assert out.state.mask[i, cols].all() and int(out.state.mask[i].sum()) == len(p)
        if shared[i]:
            with pytest.raises(ValueError, match="shared prefix"):
                out.state.column(i, shared[i] - 1)
    tails, rows = [[5, 6, 7], [8, 9, 10], [11, 12, 13]], [0, 3, 1]
    after = eng.prefill(tails, after=Continuation(out.state, rows, width), keep=3).logprobs
    for i, p in enumerate(prompts):
        torch.testing.assert_close(out.logprobs[i], _plain(any_lm, p)[-3:], **TOL)
        alone = single.prefill([p], keep=0, capture_tail=2).residuals[0]
        torch.testing.assert_close(out.residuals[i], alone, **TOL)
        assert eng.generate(prompts, 6).tokens[i] == single.generate([p], 6).tokens[0]
    for k, (r, t) in enumerate(zip(rows, tails)):
        torch.testing.assert_close(after[k], _plain(any_lm, prompts[r] + t)[-3:], **TOL)


def _persona_task_prompts(lm, n=6):
    """Distinct XB, XY and BY prompts of the long grid's first cells: persona sentences that
    several tasks repeat after the chat template's common head."""
    g = GRIDS["long"]
    seqs = [tuple(render(lm.tokenizer, g.user_text(c, cond)).ids)
            for c in g.cells[:n] for cond in ("XB", "XY", "BY")]
    return [list(s) for s in dict.fromkeys(seqs)]


def test_persona_segments_run_once_per_group_and_change_nothing(any_lm):
    """Prompts sharing a persona sentence after the common head (prefixes.layout groups them):
    the head runs once, each group's segment once, each row's rest after it. The columns, p_last's
    column, log-probs, captured tails, continuations and greedy tokens equal each row alone, and
    the work is the layout's positions, below one level's."""
    prompts = _persona_task_prompts(any_lm)
    lengths, width = [len(p) for p in prompts], max(len(p) for p in prompts)
    plan = prefixes.layout(prompts, 2)
    assert plan.groups and 1 < len(plan.groups) < len(prompts)
    assert plan.positions(lengths) < prefixes.Layout(plan.common).positions(lengths)
    eng, single = Engine(any_lm), Engine(any_lm)
    out = eng.prefill(prompts, keep=2, capture_tail=2, keep_state=True)
    assert out.state.mask.shape[1] == width
    windowed = any_lm.spec.name in ("tiny-gemma2", "tiny-gemma3")
    if not windowed:
        assert eng.cost.tokens == plan.positions(lengths)
        assert eng.cost.calls == 3
    rows = [0, len(prompts) - 1, 1]
    after = eng.prefill([[5, 6], [7, 8], [9, 10]], after=Continuation(out.state, rows, width), keep=2)
    for i, p in enumerate(prompts):
        assert out.state.column(i, len(p) - 1) == width - 1
        torch.testing.assert_close(out.logprobs[i], _plain(any_lm, p)[-2:], **TOL)
        alone = single.prefill([p], keep=0, capture_tail=2).residuals[0]
        torch.testing.assert_close(out.residuals[i], alone, **TOL)
    gen = eng.generate(prompts, 5).tokens
    assert gen == [single.generate([p], 5).tokens[0] for p in prompts]
    for k, (r, t) in enumerate(zip(rows, [[5, 6], [7, 8], [9, 10]])):
        torch.testing.assert_close(after.logprobs[k], _plain(any_lm, prompts[r] + t)[-2:], **TOL)


def test_layout_keeps_the_kept_tokens_and_the_columns():
    """A property of prefixes.layout over persona x task token grids: every row keeps its last
    `kept` tokens out of shared work, rests fit the widest prompt's columns, and a second level is
    taken only when it saves."""
    head, personas = [1, 2, 3], [[10], [11, 12, 13, 14, 15, 16], [17, 18, 19, 20, 21]]
    tasks = [[30, 31, 32, 33], [40, 41], [50, 51, 52, 53, 54, 55, 56]]
    prompts = [head + p + t + [9] for p in personas for t in tasks]
    lengths = [len(p) for p in prompts]
    for kept in (1, 2, 3, 8):
        plan = prefixes.layout(prompts, kept)
        one = prefixes.Layout(plan.common).positions(lengths)
        assert plan.common == max(0, min(3, min(lengths) - kept))
        for s, members in plan.groups:
            shared = os.path.commonprefix([prompts[r] for r in members])
            assert plan.common + s <= len(shared)
            assert all(lengths[r] - plan.common - s >= kept for r in members)
        assert sorted(r for _, m in plan.groups for r in m) in ([], list(range(len(prompts))))
        if plan.groups:
            assert plan.positions(lengths) <= prefixes.SAVING * one
    assert prefixes.layout(prompts, 1).groups  # the personas are worth sharing here
    assert not prefixes.layout([head + t for t in tasks], 1).groups  # too few rows


def test_scoring_against_references_is_the_kl_of_the_log_probs(tiny, monkeypatch):
    """`against` gives each row's KL sum without returning log-probs, whatever the logits cap."""
    prompts = _prompts(tiny, 4)
    subs = [[Sub(1, len(p) - 2, _vec(tiny, i))] for i, p in enumerate(prompts)]
    eng = Engine(tiny)
    clean = eng.prefill(prompts, keep=3).logprobs
    want = kl_sum(clean, eng.prefill(prompts, subs=subs, keep=3).logprobs).double()
    got = eng.prefill(prompts, subs=subs, keep=3, against=list(clean))
    assert got.logprobs is None and got.kl.dtype == torch.float64
    torch.testing.assert_close(got.kl, want, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(engine, "LOGITS_BUDGET", 1)  # one row per call
    capped = Engine(tiny)
    torch.testing.assert_close(capped.prefill(prompts, subs=subs, keep=3, against=list(clean)).kl,
                               want, rtol=1e-6, atol=1e-7)
    assert capped.cost.calls == len(prompts)  # substituted rows share no prefix: one call each
    with pytest.raises(ValueError, match="2 reference log-probs for 4 rows"):
        eng.prefill(prompts, keep=3, against=list(clean[:2]))


def test_teacher_forced_runs_equal_full_patched_forwards(tiny):
    """Host-style scoring: each run from its lowest substituted layer, fed the plain
    continuation's residuals, equals one full forward of prompt + target with the vectors at
    p_last; the plain continuation equals the unpatched forward."""
    grid = GRIDS["short"]
    prompts = [passes.render_cell(tiny, grid, c) for c in grid.cells[:3]]
    eng = Engine(tiny)
    target = passes.xy_target(eng, grid, prompts)
    n = tiny.n_layers
    runs = [(0, [(1, _vec(tiny, 1))]), (1, [(0, _vec(tiny, 2)), (2, _vec(tiny, 3))]),
            (2, [(2, _vec(tiny, 4)), (1, _vec(tiny, 5))]), (0, [(n - 1, _vec(tiny, 6))])]
    plain, scored = passes.teacher_forced(eng, prompts, "BY", target, runs)

    def full(ci, subs):
        host, p = list(prompts[ci]["BY"].ids), prompts[ci]["BY"].p_last
        seq = host + target.tokens[ci][: passes.HOST_WINDOW - 1]
        lp = _plain(tiny, seq, [Sub(m, p, v) for m, v in subs])[p:]
        return float(kl_sum(target.logprobs[ci], lp))

    for ci in range(len(prompts)):
        assert plain[ci] == pytest.approx(full(ci, []), rel=1e-4, abs=1e-5)
    for k, (ci, subs) in enumerate(runs):
        assert scored[k] == pytest.approx(full(ci, subs), rel=1e-4, abs=1e-5)
    assert len(set(np.round(scored, 6))) == len(runs)  # the vectors matter
