"""Forward passes: batched captures, substituted windows, greedy decoding. All torch lives here and in hooks.

Conventions: a sequence is a list of token ids; positions are indices into it.
Teacher-forced batches are right-padded (a causal model never lets a real
token see a pad that comes after it, so no mask is needed and positions are
exactly those of the unpadded sequence); generation batches are left-padded
with an attention mask and explicit position ids.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .errors import NonFiniteResidualError
from .hooks import Patch, capture, make_patches, substitute
from .models import LoadedModel

from . import DEFAULT_TOKEN_BUDGET  # noqa: E402  (re-exported: the engine's memory knob)


@dataclass
class Counter:
    """Token positions pushed through the model (rows x length per call), for the cost accounting."""

    tokens: int = 0
    calls: int = 0

    def add(self, rows: int, length: int) -> None:
        self.tokens += rows * length
        self.calls += 1


COUNTER = Counter()


def _run(lm: LoadedModel, input_ids: torch.Tensor, **kw):
    COUNTER.add(*input_ids.shape)
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
        out[idx] = torch.stack([store[layer][0].cpu() for layer in layers], dim=1)
    return out


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
    """Greedy output plus what substituted runs need to reuse it as a clean prefix."""

    tokens: list[list[int]]
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # [rows, width + steps] attention mask of the cached positions
    offsets: list[int] | None = None  # left-padding per row: prompt position p sits at column offset + p


def suffix_logprobs(lm: LoadedModel, gen: Generation, cells: list[int], column: int,
                    suffixes: list[list[int]], row_patches: list[list[list[tuple[int, torch.Tensor]]]],
                    window_start: int) -> torch.Tensor:
    """Substituted runs that reuse the clean prefix cached by `gen`.

    For each selected cache row (cell), its cached positions before `column` are the prefix;
    `suffixes[i]` is run after it once per entry of `row_patches[i]`, whose (layer, vector) pairs
    are written at the first suffix position (the probe). A substitution at position p cannot
    change anything before p, so nothing before it is computed again.
    Returns float32 log-probs [cells, runs, window, V] from suffix index `window_start` on.
    """
    runs = len(row_patches[0])
    if any(len(r) != runs for r in row_patches) or len({len(s) for s in suffixes}) != 1:
        raise ValueError("every cell needs the same number of runs and the same suffix length")
    n = len(cells)
    past = copy.deepcopy(gen.cache)
    past.batch_select_indices(torch.tensor(cells, device=lm.device))
    past.crop(column - past.get_seq_length())
    past.batch_repeat_interleave(runs)
    length = len(suffixes[0])
    prefix_mask = gen.mask[cells, :column].repeat_interleave(runs, dim=0)
    mask = torch.cat([prefix_mask, torch.ones(n * runs, length, dtype=torch.long)], dim=1)
    pos = (mask.cumsum(-1) - 1)[:, column:]
    ids = torch.tensor(suffixes, dtype=torch.long).repeat_interleave(runs, dim=0)
    entries = [
        (layer, i * runs + j, 0, vec)
        for i, cell_runs in enumerate(row_patches) for j, patches in enumerate(cell_runs) for layer, vec in patches
    ]
    dev = lm.device
    with substitute(lm.layers, make_patches(entries) if entries else {}):
        logits = _run(lm, ids, past_key_values=past, attention_mask=mask.to(dev), position_ids=pos.to(dev),
                      use_cache=True, logits_to_keep=length - window_start).logits
    return window_logprobs(logits).reshape(n, runs, length - window_start, -1)


def greedy(lm: LoadedModel, prompts: list[list[int]], n_new: int, *, stop_at_eos: bool = False,
           prompt_patches: list[tuple[int, int, int, torch.Tensor]] | None = None,
           keep_cache: bool = False):
    """Greedy decoding (argmax, no sampling, no penalties, generation_config ignored), batched.

    `prompt_patches` are (layer, row, position-in-prompt, vector) applied during the prompt
    pass only; later tokens see their effect through the KV cache, nothing more.
    Rows are left-padded; each row stops at EOS when `stop_at_eos` (its later tokens dropped).
    Returns the new tokens per row, or a Generation holding also the cache when `keep_cache`.
    """
    pad = _pad_id(lm)
    eos = lm.tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    offsets = [width - len(p) for p in prompts]
    ids = torch.tensor([[pad] * o + list(p) for o, p in zip(offsets, prompts)], dtype=torch.long)
    mask = torch.tensor([[0] * o + [1] * len(p) for o, p in zip(offsets, prompts)], dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dev = lm.device
    cache = DynamicCache(config=lm.model.config)
    shifted = [(layer, row, offsets[row] + p, vec) for layer, row, p, vec in (prompt_patches or [])]
    with substitute(lm.layers, make_patches(shifted) if shifted else {}):
        out = _run(lm, ids, attention_mask=mask.to(dev), position_ids=pos.to(dev),
                   past_key_values=cache, use_cache=True, logits_to_keep=1)
    tokens = []
    done = torch.zeros(len(prompts), dtype=torch.bool)
    last_pos = pos[:, -1]
    for step in range(n_new):
        nxt = out.logits[:, -1].float().argmax(-1).cpu()
        if not torch.isfinite(out.logits[:, -1]).all():
            raise NonFiniteResidualError("non-finite logits during greedy decoding; try float32 or bfloat16")
        tokens.append(nxt)
        if stop_at_eos and eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
        if step == n_new - 1:
            break
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], dim=1)
        last_pos = last_pos + 1
        out = _run(lm, nxt[:, None], attention_mask=mask.to(dev), position_ids=last_pos[:, None].to(dev),
                   past_key_values=cache, use_cache=True)
    steps = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in prompts]
    result = []
    for row in steps:
        if stop_at_eos and eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        result.append(row)
    if keep_cache:
        return Generation(tokens=result, cache=cache, mask=mask, offsets=offsets)
    return result
