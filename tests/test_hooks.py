"""The intervention core: capture reads exactly the residual entering a layer, substitution writes
exactly one vector and nothing else, and no hook outlives its block."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lac_core.engine.forward import Engine, logprobs_of
from lac_core.errors import NonFiniteResidualError
from lac_core.engine.hooks import Sub, capture, on_layer, start_at, substitute
from lac_core.protocol.grids import resolve_grid
from lac_core.protocol.prompts import render

from .conftest import hook_count

GRID = resolve_grid("short")
HSET = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seq(lm, cell_index=0, condition="XY"):
    cell = GRID.cells[cell_index]
    return list(render(lm.tokenizer, GRID.user_text(cell, condition)).ids)


def _forward(lm, seq, subs=()):
    with substitute(lm.layers, [list(subs)]), torch.inference_mode():
        return logprobs_of(lm.model(torch.tensor([seq]), use_cache=False).logits[0])


def test_identity_substitution_gives_exactly_zero_kl(any_lm):
    """Writing back the clean residual itself must change nothing, bit for bit."""
    seq = _seq(any_lm)
    p = len(seq) - 1
    h = Engine(any_lm).capture([seq], [[p]])  # [1, L, 1, d]
    clean = _forward(any_lm, seq)
    for layer in range(any_lm.n_layers):
        assert torch.equal(clean, _forward(any_lm, seq, [Sub(layer, p, h[0, layer, 0])])), f"layer {layer}"


def test_capture_equals_output_hidden_states(any_lm):
    seq = _seq(any_lm, 1)
    positions = list(range(len(seq)))
    h = Engine(any_lm).capture([seq], [positions])[0]  # [L, T, d]
    with torch.inference_mode():
        out = any_lm.model(torch.tensor([seq]), output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == any_lm.n_layers + 1  # the last entry is after the final norm: not a layer input
    for layer in range(any_lm.n_layers):
        torch.testing.assert_close(h[layer], hs[layer][0].float(), rtol=0, atol=0)


@HSET
@given(data=st.data())
def test_substitution_touches_only_its_site(tiny, data):
    """Logits before the substituted position are bitwise unchanged; the residual entering the
    substituted layer at that position is exactly the vector written; other positions are untouched."""
    seq = _seq(tiny, data.draw(st.integers(0, len(GRID.cells) - 1)))
    layer = data.draw(st.integers(0, tiny.n_layers - 1), label="layer")
    p = data.draw(st.integers(1, len(seq) - 1), label="position")
    scale = data.draw(st.floats(0.5, 5.0), label="scale")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    vec = torch.randn(tiny.d_model, generator=gen) * scale
    clean = _forward(tiny, seq)
    with substitute(tiny.layers, [[Sub(layer, p, vec)]]), capture(tiny.layers, [layer]) as store:
        with torch.inference_mode():
            logits = tiny.model(torch.tensor([seq])).logits
    torch.testing.assert_close(store[layer][0][0, p], vec, rtol=0, atol=0)
    lp = logprobs_of(logits[0])
    assert torch.equal(lp[:p], clean[:p])
    assert not torch.equal(lp[p:], clean[p:])


@HSET
@given(rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30)), min_size=1, max_size=6, unique=True))
def test_per_row_positions(tiny, rows):
    """Different positions per batch row land on the right (row, position) and nowhere else."""
    seqs = [_seq(tiny, i) for i in range(3)]
    width = min(len(s) for s in seqs)
    rows = [(r, p % width) for r, p in rows]
    ids = torch.tensor([s[:width] for s in seqs])
    vecs = torch.arange(len(rows) * tiny.d_model, dtype=torch.float32).reshape(len(rows), -1)
    subs = [[Sub(2, p, v) for (r, p), v in zip(rows, vecs) if r == row] for row in range(3)]
    with capture(tiny.layers, [2]) as before, torch.inference_mode():
        tiny.model(ids)
    with substitute(tiny.layers, subs), capture(tiny.layers, [2]) as after, torch.inference_mode():
        tiny.model(ids)
    expect = before[2][0].clone()
    for (r, p), v in zip(rows, vecs):
        expect[r, p] = v
    torch.testing.assert_close(after[2][0], expect, rtol=0, atol=0)


def test_hooks_removed_after_exception(any_lm):
    seq = _seq(any_lm)
    base = hook_count(any_lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(any_lm.layers, range(any_lm.n_layers)), substitute(
                any_lm.layers, [[Sub(1, 0, torch.zeros(any_lm.d_model))]]):
            assert hook_count(any_lm.model) == base + any_lm.n_layers + 2  # write + read-back
            raise RuntimeError("boom")
    assert hook_count(any_lm.model) == base
    bad = Sub(1, 0, torch.zeros(any_lm.d_model + 1))  # wrong width
    with pytest.raises(RuntimeError):
        _forward(any_lm, seq, [bad])  # the hook itself raises mid-forward
    assert hook_count(any_lm.model) == base


def test_non_finite_residual_is_an_error(tiny):
    seq = _seq(tiny)
    layer0 = tiny.layers[0]
    weight = next(p for n, p in layer0.named_parameters() if "o_proj" in n)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(NonFiniteResidualError, match="layer 1"):
            Engine(tiny).capture([seq], [[0]])
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert torch.isfinite(Engine(tiny).capture([seq], [[0]])).all()


def test_start_at_puts_every_layer_back(tiny):
    """Skipping layers swaps modules for the block only, exceptions included, and checks its range."""
    before = list(tiny.layers)
    hidden = torch.zeros(1, 3, tiny.d_model)
    with pytest.raises(RuntimeError, match="boom"):
        with start_at(tiny.layers, tiny.n_layers // 2, hidden):
            assert tiny.layers[0] is not before[0] and tiny.layers[tiny.n_layers // 2] is before[tiny.n_layers // 2]
            raise RuntimeError("boom")
    assert list(tiny.layers) == before
    for bad in (0, tiny.n_layers):
        with pytest.raises(ValueError, match="start layer"):
            with start_at(tiny.layers, bad, hidden):
                pass
    assert list(tiny.layers) == before


def test_start_at_feeds_the_given_residual(tiny):
    """What enters the start layer is the given residual, whatever the tokens below said."""
    seq = _seq(tiny)
    layer = tiny.n_layers // 2
    given = torch.randn(1, len(seq), tiny.d_model, generator=torch.Generator().manual_seed(3))
    with start_at(tiny.layers, layer, given), capture(tiny.layers, [layer]) as store, torch.inference_mode():
        tiny.model(torch.tensor([seq]), use_cache=False)
    torch.testing.assert_close(store[layer][0], given)


def test_vectors_are_placed_on_the_layer_they_enter():
    """One helper places every captured or substituted vector: on the residual's device, in its dtype."""
    hidden = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    out = on_layer(torch.ones(4, dtype=torch.float32), hidden)
    assert out.dtype == torch.bfloat16 and out.device == hidden.device


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_stop_greedy_decoding(tiny, bad):
    """One inf or nan logit in a row stops generation with an error, before any token is taken."""
    head = tiny.model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head[7].fill_(bad)
        with pytest.raises(NonFiniteResidualError, match="non-finite logits"):
            Engine(tiny).generate([_seq(tiny)], 3)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert len(Engine(tiny).generate([_seq(tiny)], 3).tokens[0]) == 3
