"""Eager attention without copying grouped keys and values (the default; eager stays available)."""
# transformers' eager attention repeats each key/value head for every query head that shares it
# (`repeat_kv`): a copy of the whole KV cache per layer per forward, which made 27% of greedy
# decoding time on SmolLM2 (3 KV heads for 9 query heads). "grouped" does the same arithmetic (the
# same scores, scaling, optional tanh soft-cap, additive mask, float32 softmax, weighted sum) on
# the query heads grouped by the KV head they read, so nothing is copied. Measured against eager
# on SmolLM2 and Qwen2.5-Coder-0.5B in README ("What attention costs"). It is registered through
# transformers' public AttentionInterface / AttentionMaskInterface (the eager mask). A prefix read
# in place is scored the same way, by one product per prompt for all the rows continuing it; its
# weighted sum is added to the rows' own, which may round differently from one sum.
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from .kvcache import Shared

GROUPED = "lac_grouped_eager"
# --lac-attention -> transformers' name
IMPLEMENTATIONS = {"grouped": GROUPED, "eager": "eager", "sdpa": "sdpa"}
# A continuation can read a kept prompt's keys and values in place (kvcache.Shared: its cache
# layers return them in two parts) only where the model hands what its cache returns straight to
# the attention function, untouched: checked in transformers' modeling files of these model
# types, and run by tests/test_engine.py on a tiny model of each. Any other model copies them.
IN_PLACE_MODEL_TYPES = frozenset({"llama", "qwen2", "gemma2", "gemma3_text"})


def reads_in_place(config) -> bool:
    """Whether continuations on a model of this config may read a kept prefix in place."""
    return (config._attn_implementation == GROUPED
            and getattr(config, "model_type", None) in IN_PLACE_MODEL_TYPES)


def grouped_eager(module, query: torch.Tensor, key, value, attention_mask: torch.Tensor | None,
                  dropout: float = 0.0, scaling: float | None = None,
                  softcap: float | None = None, **_):
    """query [b, heads, q, d], key/value [b, kv_heads, k, d] or kvcache.Shared (a prefix read in
    place, then each row's own positions) -> ([b, q, heads, d], weights)."""
    b, heads, q, d = query.shape
    shared = isinstance(key, Shared)
    own_k, own_v = (key.own, value.own) if shared else (key, value)
    kv_heads = own_k.shape[1]
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    grouped = query.reshape(b, kv_heads, (heads // kv_heads) * q, d)  # heads h -> KV head h // rep
    scores = torch.matmul(grouped, own_k.transpose(2, 3))
    if shared:  # prefix columns (read per prompt: rounding may differ), then the row's own
        scores = torch.cat([key.scores(grouped), scores], -1)
    scores = scores.view(b, heads, q, -1) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    grouped_weights = weights.view(b, kv_heads, -1, scores.shape[-1])
    if shared:  # two sums added: float rounding may differ from one sum over every column
        c = key.prefix.shape[-2]
        out = value.weigh(grouped_weights[..., :c]) + torch.matmul(grouped_weights[..., c:], own_v)
    else:
        out = torch.matmul(grouped_weights, value)
    return out.view(b, heads, q, d).transpose(1, 2).contiguous(), weights


AttentionInterface.register(GROUPED, grouped_eager)
ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, eager_mask)
