"""Grouped eager attention against transformers' eager: the same arithmetic, no K/V copies."""
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.llama import modeling_llama

from lac_core.engine.attention import GROUPED, grouped_eager, reads_in_place
from lac_core.engine.forward import Engine
from lac_core.errors import UsageError
from lac_core.models import load
from lac_core.run.settings import Settings
from lac_core.models.tiny import ARCHITECTURES


class _Module(torch.nn.Module):
    def __init__(self, groups: int, head_dim: int):
        super().__init__()
        self.num_key_value_groups, self.head_dim = groups, head_dim


@pytest.mark.parametrize("softcap", [None, 50.0])
@pytest.mark.parametrize("q_len", [1, 7])
def test_grouped_equals_eager_on_random_heads(softcap, q_len):
    """Scores, soft-cap, additive mask and weighted sum as transformers' eager (Gemma 2's when
    soft-capped), for decode (one query) and prefill shapes."""
    torch.manual_seed(0)
    b, heads, kv, keys, d = 3, 6, 2, 11, 8
    q, k, v = torch.randn(b, heads, q_len, d), torch.randn(b, kv, keys, d), torch.randn(b, kv, keys, d)
    mask = torch.zeros(b, 1, q_len, keys)
    mask[0, ..., :4] = torch.finfo(torch.float32).min  # a left-padded row
    module = _Module(heads // kv, d)
    ref = modeling_gemma2.eager_attention_forward if softcap else modeling_llama.eager_attention_forward
    extra = dict(softcap=softcap) if softcap else {}
    want, want_w = ref(module, q, k, v, mask, scaling=d ** -0.5, **extra)
    got, got_w = grouped_eager(module, q, k, v, mask, scaling=d ** -0.5, **extra)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-6, atol=1e-6)
    assert got.shape == want.shape == (b, q_len, heads, d)


@contextmanager
def _attention(lm, name):
    before = lm.model.config._attn_implementation
    lm.model.set_attn_implementation(name)
    try:
        yield
    finally:
        lm.model.set_attn_implementation(before)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grouped_model_matches_eager_and_generates_the_same_tokens(arch, lac_models):
    """A whole tiny model (Gemma 2 with its soft-cap, Gemma 3 with a sliding window shorter than
    the prompts): logits within float32 rounding of eager, identical greedy tokens from a cache."""
    lm = lac_models(f"tiny-{arch}")
    assert lm.model.config._attn_implementation == GROUPED  # the default
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [20, 21, 22]]
    runs = {}
    for name in ("eager", GROUPED):
        with _attention(lm, name):
            eng = Engine(lm)
            runs[name] = (eng.prefill(prompts, keep=3).logprobs, eng.generate(prompts, 12).tokens)
    torch.testing.assert_close(runs[GROUPED][0], runs["eager"][0], rtol=1e-5, atol=1e-5)
    assert runs[GROUPED][1] == runs["eager"][1]


def test_attention_setting():
    with pytest.raises(UsageError, match="--lac-attention 'flash'"):
        Settings(attention="flash")
    lm = load("tiny-llama", Settings(attention="eager").load_options())
    assert lm.provenance["attn_implementation"] == lm.model.config._attn_implementation == "eager"


def test_prefixes_are_read_in_place_only_where_known_to_work(tiny):
    """Only lac's grouped attention reads a kept prefix in place, and only on the model types whose
    attention was checked to hand the cache's keys and values over untouched."""
    assert reads_in_place(tiny.model.config)
    for impl, model_type in ((GROUPED, "mistral"), ("eager", "llama"), ("sdpa", "llama")):
        assert not reads_in_place(SimpleNamespace(_attn_implementation=impl,
                                                  model_type=model_type))
