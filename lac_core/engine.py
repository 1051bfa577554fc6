"""Forward passes: batched captures, substituted windows, greedy decoding. All torch lives here and in hooks.

Conventions: a sequence is a list of token ids; positions are indices into it.
Teacher-forced batches are right-padded (a causal model never lets a real
token see a pad that comes after it, so no mask is needed and positions are
exactly those of the unpadded sequence); generation batches are left-padded
with an attention mask and explicit position ids.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .errors import NonFiniteResidualError
from .hooks import Patch, capture, make_patches, start_at, substitute
from .models import LoadedModel

from . import DEFAULT_TOKEN_BUDGET  # noqa: E402  (re-exported: the engine's memory knob)


@dataclass
class Counter:
    """Work pushed through the model, for the cost accounting: token positions (rows x length per
    call) and token-layers (positions x decoder layers actually run)."""

    tokens: int = 0
    layer_tokens: int = 0
    calls: int = 0

    def add(self, rows: int, length: int, layers: int) -> None:
        self.tokens += rows * length
        self.layer_tokens += rows * length * layers
        self.calls += 1


COUNTER = Counter()


def _run(lm: LoadedModel, input_ids: torch.Tensor, start_layer: int = 0, **kw):
    COUNTER.add(*input_ids.shape, lm.n_layers - start_layer)
    with torch.inference_mode():
        return lm.model(input_ids=input_ids.to(lm.device), **kw)


def _pad_right(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def chunks(lengths: list[int], token_budget: int):
    """Split row indices into consecutive batches whose padded size stays within the token budget."""
    batch: list[int] = []
    width = 0
    for i, n in enumerate(lengths):
        if batch and max(width, n) * (len(batch) + 1) > token_budget:
            yield batch
            batch, width = [], 0
        batch.append(i)
        width = max(width, n)
    if batch:
        yield batch


def capture_residuals(lm: LoadedModel, seqs: list[list[int]], positions: list[list[int]],
                      layers=None, token_budget: int = DEFAULT_TOKEN_BUDGET) -> torch.Tensor:
    """Residuals entering `layers` at per-row positions: float32 tensor [rows, len(layers), k, d]."""
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    out = torch.empty(len(seqs), len(layers), len(positions[0]), lm.d_model)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for chunk in chunks([len(seqs[i]) for i in order], token_budget):
        idx = [order[i] for i in chunk]
        ids = _pad_right([seqs[i] for i in idx], _pad_id(lm))
        index = torch.tensor([positions[i] for i in idx], dtype=torch.long)
        with capture(lm.layers, layers, index) as store:
            _run(lm, ids, use_cache=False, logits_to_keep=1)  # only residuals are wanted
        out[idx] = _stacked(store, layers)
    return out


def _stacked(store: dict[int, list[torch.Tensor]], layers) -> torch.Tensor:
    """[rows, len(layers), k, d] on the CPU from a capture store that saw one forward call."""
    return torch.stack([store[layer][0].cpu() for layer in layers], dim=1)


def window_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax over the vocabulary (never in the model's half precision)."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_sum(logp_ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Sum over window positions of KL(P_ref || P), in nats; inputs [..., T, V] float32 log-probs."""
    return (logp_ref.exp() * (logp_ref - logp)).sum(dim=(-1, -2))


def forward_logprobs(lm: LoadedModel, seq: list[int], start: int, stop: int,
                     patches: dict[int, Patch] | None = None) -> torch.Tensor:
    """Full forward of one sequence (optionally patched); float32 log-probs at positions [start, stop)."""
    ids = torch.tensor([seq], dtype=torch.long)
    with substitute(lm.layers, patches or {}):
        logits = _run(lm, ids, use_cache=False).logits
    return window_logprobs(logits[0, start:stop])


@dataclass
class Generation:
    """Greedy output plus what later runs need to reuse it as a clean prefix.

    `residuals` (when captured) holds the residual entering every layer at the last `tail` prompt
    positions and at every generated token fed back in: [rows, n_layers, tail + fed, d] float32.
    `logprobs` (when kept) are the float32 log-probs of every step: [rows, steps, V]; step k scores
    position len(prompt) - 1 + k.
    """

    tokens: list[list[int]]
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # [rows, width + steps] attention mask of the cached positions
    offsets: list[int] | None = None  # left-padding per row: prompt position p sits at column offset + p
    lengths: list[int] | None = None  # prompt length per row
    residuals: torch.Tensor | None = None
    tail: int = 0
    logprobs: torch.Tensor | None = None

    def column(self, row: int, position: int) -> int:
        """Cache column of a position of the row's sequence (prompt, then generated tokens)."""
        return self.offsets[row] + position

    def residual_index(self, row: int, position: int) -> int:
        """Index into `residuals[row, layer]` of a position of the row's sequence."""
        j = self.tail + position - self.lengths[row]
        if not 0 <= j < self.residuals.shape[2]:
            raise IndexError(f"position {position} of row {row} was not captured (tail {self.tail})")
        return j


def _prefix_cache(lm: LoadedModel, cache: DynamicCache, rows: list[int], column: int,
                  start_layer: int = 0) -> DynamicCache:
    """A new cache holding, for each output row, the first `column` cached positions of cache row
    `rows[i]` (rows may repeat). Layers below `start_layer` will not run: they get a one-row
    placeholder of the right length, since only their length is read (for the masks)."""
    new = DynamicCache(config=lm.model.config)
    idx = torch.tensor(rows, dtype=torch.long, device=lm.device)
    for i, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        if keys.shape[-2] < column or layer.get_seq_length() != keys.shape[-2]:
            raise ValueError(f"cache layer {i} holds {keys.shape[-2]} positions, {column} needed "
                             "(a sliding-window layer shorter than the prompt cannot be reused)")
        pick = idx[:1] if i < start_layer else idx
        new.update(keys[pick, :, :column], values[pick, :, :column], i)
    return new


def _continuation(lm: LoadedModel, gen: Generation, rows: list[int], column: int, length: int,
                  start_layer: int = 0):
    """Cache, attention mask and position ids for `length` new tokens per row after the first
    `column` cached columns of cache row `rows[i]` of `gen`."""
    past = _prefix_cache(lm, gen.cache, rows, column, start_layer)
    mask = torch.cat([gen.mask[rows, :column], torch.ones(len(rows), length, dtype=torch.long)], dim=1)
    return past, mask, (mask.cumsum(-1) - 1)[:, column:]


def extend(lm: LoadedModel, gen: Generation, rows: list[int], column: int, tokens: list[list[int]], *,
           patches: list[tuple[int, int, int, torch.Tensor]] | None = None, start_layer: int = 0,
           hidden: torch.Tensor | None = None, capture_all: bool = False, keep: int = 0):
    """Run `tokens[i]` after the first `column` cached columns of cache row `rows[i]` of `gen`.

    A change at position p cannot alter anything before p, and a change entering layer l cannot
    alter layers below l: so only the positions after the cached prefix are computed, and with
    `start_layer` > 0 only the layers from it, fed the given `hidden` ([rows, length, d], the
    residual entering `start_layer`). `patches` are (layer, row, suffix position, vector).
    Returns (float32 log-probs of the last `keep` positions [rows, keep, V] or None,
             residuals entering every layer [rows, n_layers, length, d] or None).
    """
    if len({len(t) for t in tokens}) != 1:
        raise ValueError("every suffix must have the same length")
    if capture_all and start_layer:
        raise ValueError("capturing every layer needs every layer run (start_layer 0)")
    past, mask, pos = _continuation(lm, gen, rows, column, len(tokens[0]), start_layer)
    dev = lm.device
    with ExitStack() as stack:
        if patches:
            stack.enter_context(substitute(lm.layers, make_patches(patches)))
        if start_layer:
            h = hidden.to(device=dev, dtype=lm.model.dtype)
            stack.enter_context(start_at(lm.layers, start_layer, h))
        store = stack.enter_context(capture(lm.layers, range(lm.n_layers))) if capture_all else None
        out = _run(lm, torch.tensor(tokens, dtype=torch.long), start_layer, past_key_values=past,
                   attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                   logits_to_keep=max(keep, 1))
    logprobs = window_logprobs(out.logits) if keep else None
    residuals = _stacked(store, range(lm.n_layers)) if capture_all else None
    return logprobs, residuals


def greedy(lm: LoadedModel, prompts: list[list[int]], n_new: int, *, stop_at_eos: bool = False,
           prompt_patches: list[tuple[int, int, int, torch.Tensor]] | None = None,
           keep_cache: bool = False, capture_tail: int = 0, keep_logprobs: bool = False,
           prefix: Generation | None = None, prefix_rows: list[int] | None = None):
    """Greedy decoding (argmax, no sampling, no penalties, generation_config ignored), batched.

    `prompt_patches` are (layer, row, position-in-prompt, vector) applied during the prompt
    pass only; later tokens see their effect through the KV cache, nothing more.
    Rows are left-padded; each row stops at EOS when `stop_at_eos` (its later tokens dropped).
    `capture_tail` > 0 records the residuals entering every layer at the last `capture_tail`
    prompt positions and at every generated token fed back; `keep_logprobs` keeps each step's
    float32 log-probs. Returns the new tokens per row, or a Generation holding also the cache
    (and captures) when `keep_cache`.
    With `prefix` (a Generation of prompt passes only, e.g. `greedy(..., 1, keep_cache=True)`),
    row i continues cache row `prefix_rows[i]` (rows may repeat) and `prompts` are the rest of
    each prompt, all of one length; patch positions then count from the first of those tokens.
    A prompt shared by several rows is so computed once.
    """
    pad = _pad_id(lm)
    eos = lm.tokenizer.eos_token_id
    dev = lm.device
    if prefix is None:
        width = max(len(p) for p in prompts)
        if capture_tail > min(len(p) for p in prompts):
            raise ValueError(f"capture_tail {capture_tail} exceeds the shortest prompt")
        offsets = [width - len(p) for p in prompts]
        ids = torch.tensor([[pad] * o + list(p) for o, p in zip(offsets, prompts)], dtype=torch.long)
        mask = torch.tensor([[0] * o + [1] * len(p) for o, p in zip(offsets, prompts)], dtype=torch.long)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=lm.model.config)
        lengths = [len(p) for p in prompts]
        shift = offsets
    else:
        width = len(prompts[0])
        column = prefix.mask.shape[1]
        if len({len(p) for p in prompts}) != 1 or capture_tail or prefix.cache.get_seq_length() != column:
            raise ValueError("a prefix needs continuations of one length, no capture, and a prompt-only prefix")
        cache, mask, pos = _continuation(lm, prefix, prefix_rows, column, width)
        ids = torch.tensor(prompts, dtype=torch.long)
        offsets = [prefix.offsets[r] for r in prefix_rows]
        lengths = [prefix.lengths[r] + width for r in prefix_rows]
        shift = [0] * len(prompts)
    all_layers = range(lm.n_layers)
    captured: list[torch.Tensor] = []  # [rows, n_layers, k, d] per forward call

    def run(ids_, tail_index, **kw):
        with ExitStack() as stack:
            store = stack.enter_context(capture(lm.layers, all_layers, tail_index)) if capture_tail else None
            out_ = _run(lm, ids_, past_key_values=cache, use_cache=True, **kw)
        if capture_tail:
            captured.append(_stacked(store, all_layers))
        return out_

    shifted = [(layer, row, shift[row] + p, vec) for layer, row, p, vec in (prompt_patches or [])]
    tail_index = torch.arange(width - capture_tail, width).expand(len(prompts), -1) if capture_tail else None
    with substitute(lm.layers, make_patches(shifted) if shifted else {}):
        out = run(ids, tail_index, attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=1)
    tokens, logprobs = [], []
    done = torch.zeros(len(prompts), dtype=torch.bool)
    last_pos = pos[:, -1]
    for step in range(n_new):
        logits = out.logits[:, -1]
        if not torch.isfinite(logits).all():
            raise NonFiniteResidualError("non-finite logits during greedy decoding; try float32 or bfloat16")
        if keep_logprobs:
            logprobs.append(window_logprobs(logits).cpu())
        nxt = logits.float().argmax(-1).cpu()
        tokens.append(nxt)
        if stop_at_eos and eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
        if step == n_new - 1:
            break
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], dim=1)
        last_pos = last_pos + 1
        out = run(nxt[:, None], None, attention_mask=mask.to(dev), position_ids=last_pos[:, None].to(dev))
    steps = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in prompts]
    result = []
    for row in steps:
        if stop_at_eos and eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        result.append(row)
    if keep_cache:
        return Generation(tokens=result, cache=cache, mask=mask, offsets=offsets,
                          lengths=lengths,
                          residuals=torch.cat(captured, dim=2) if captured else None, tail=capture_tail,
                          logprobs=torch.stack(logprobs, dim=1) if logprobs else None)
    return result
