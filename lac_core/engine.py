"""Forward passes under a token budget: prefill, greedy decode steps and residual capture."""
# The only module that calls a model (hooks.py holds the hooks it uses). Three operations, one
# return type each: `prefill` (prompts from scratch or after cached rows, optionally substituted,
# optionally from a layer up) -> Prefill; `decode` (greedy steps from a cache) -> Decoded;
# `capture` (residuals entering layers) -> tensor; `generate` chains prefill and decode. Each call
# splits its rows so that rows x (cached + new positions) stays within the token budget (a row
# longer than the budget runs alone) and adds its work to the engine's Cost. Prompts are left-
# padded with a mask and explicit position ids; captures run right-padded (a causal model never
# lets a real token see a later pad).
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from . import DEFAULT_TOKEN_BUDGET
from .errors import LacError, NonFiniteResidualError, UsageError
from .hooks import Sub, start_at, substitute
from .hooks import capture as capture_hook
from .kvcache import concat_rows, empty_cache, gather_prefix

__all__ = ["Sub", "Cost", "Engine", "State", "Prefill", "Decoded", "kl_sum", "logprobs_of"]


@dataclass
class Cost:
    """Work pushed through the model: token positions (rows x length per call), token-layers
    (positions x decoder layers actually run) and calls."""

    tokens: int = 0
    layer_tokens: int = 0
    calls: int = 0

    def add(self, rows: int, length: int, layers: int) -> None:
        self.tokens += rows * length
        self.layer_tokens += rows * length * layers
        self.calls += 1


@dataclass
class State:
    """A batch's cached positions: row r's sequence position p sits at column offsets[r] + p."""

    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [rows, columns] 1 where a real token is cached
    offsets: list[int]
    logits: torch.Tensor  # [rows, V] next-token logits after the last position

    def column(self, row: int, position: int) -> int:
        return self.offsets[row] + position


@dataclass
class Prefill:
    state: State | None  # kept when asked for
    logprobs: torch.Tensor | None  # [rows, keep, V] float32, the last `keep` positions
    residuals: torch.Tensor | None  # [rows, n_layers, tail, d] float32, the captured tail


@dataclass
class Decoded:
    tokens: list[list[int]]  # per row; cut after EOS when stopping at EOS
    logprobs: torch.Tensor | None = None  # [rows, steps, V] float32: step k predicts token k
    residuals: torch.Tensor | None = None  # [rows, n_layers, k, d]: captured tail, then fed tokens
    state: State | None = None


def logprobs_of(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax over the vocabulary (never in the model's half precision)."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_sum(logp_ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Sum over window positions of KL(P_ref || P) in nats; inputs [..., T, V] float32 log-probs."""
    return (logp_ref.exp() * (logp_ref - logp)).sum(dim=(-1, -2))


def _stacked(store: dict, layers) -> torch.Tensor:
    """[rows, len(layers), k, d] on the CPU from a capture store, calls joined along positions."""
    return torch.stack([torch.cat(store[layer], dim=1).cpu() for layer in layers], dim=1)


def _cat(parts: list, dim: int = 0):
    return torch.cat(parts, dim=dim) if parts and parts[0] is not None else None


@dataclass
class Engine:
    """One model under one token budget, counting the work it does."""

    lm: object  # models.LoadedModel
    token_budget: int = DEFAULT_TOKEN_BUDGET
    cost: Cost = field(default_factory=Cost)
    progress: object = None  # a progress.Progress, told how far long parts are

    def tick(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress.tick(fraction)

    def __post_init__(self):
        if not isinstance(self.token_budget, int) or self.token_budget < 1:
            raise UsageError(f"token budget must be a positive integer, got {self.token_budget!r}; "
                             "pass --lac-token-budget N with N >= 1")

    def chunks(self, n_rows: int, footprint: int, group: int = 1) -> list[range]:
        """Consecutive row ranges of whole groups whose rows x footprint stays within the budget."""
        per = group * max(1, self.token_budget // (group * max(footprint, 1)))
        return [range(at, min(at + per, n_rows)) for at in range(0, n_rows, per)]

    def _run(self, ids: torch.Tensor, start_layer: int = 0, **kw):
        self.cost.add(*ids.shape, self.lm.n_layers - start_layer)
        with torch.inference_mode():
            return self.lm.model(input_ids=ids.to(self.lm.device), **kw)

    def _pad(self) -> int:
        tok = self.lm.tokenizer
        return next(int(c) for c in (tok.pad_token_id, tok.eos_token_id, 0) if c is not None)

    def capture(self, seqs: list[list[int]], positions: list[list[int]], layers=None):
        """Residuals entering `layers` at per-row positions: float32 [rows, len(layers), k, d]."""
        lm = self.lm
        layers = list(range(lm.n_layers)) if layers is None else list(layers)
        out = torch.empty(len(seqs), len(layers), len(positions[0]), lm.d_model)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together
        for batch in _by_length([len(seqs[i]) for i in order], self.token_budget):
            idx = [order[i] for i in batch]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([list(seqs[i]) + [self._pad()] * (width - len(seqs[i]))
                                for i in idx])
            index = torch.tensor([positions[i] for i in idx], dtype=torch.long)
            with capture_hook(lm.layers, layers, index) as store:
                self._run(ids, use_cache=False, logits_to_keep=1)  # only residuals are wanted
            out[idx] = _stacked(store, layers)
        return out

    def prefill(self, prompts: list[list[int]], *, subs: list[list[Sub]] | None = None,
                after: tuple[State, list[int], int] | None = None, start_layer: int = 0,
                hidden: torch.Tensor | None = None, keep: int = 1, capture_tail: int = 0,
                keep_state: bool = False, width: int = 0, group: int = 1) -> Prefill:
        """Run `prompts`, one row each; the float32 log-probs of their last `keep` positions."""
        # From scratch, prompts are left-padded to a common width (at least `width`). With
        # `after=(state, rows, column)` row i continues the first `column` cached columns of
        # `state` row `rows[i]` (rows may repeat; the prompts then have one length). `subs[i]` are
        # row i's substitutions, positions counted in its prompt. With `start_layer` > 0 only the
        # layers from it run, fed `hidden` ([rows, length, d], the residual entering it): nothing
        # below a substitution can change. `capture_tail` records the residuals entering every
        # layer at each row's last positions. Rows are split in whole `group`s, never inside one.
        width = max(width, *(len(p) for p in prompts))
        if after is not None and len({len(p) for p in prompts}) != 1:
            raise ValueError("continuations of cached rows must all have one length")
        if capture_tail > min(len(p) for p in prompts):
            raise ValueError(f"capture_tail {capture_tail} exceeds the shortest prompt")
        args = (prompts, subs, after, start_layer, hidden, keep, capture_tail, keep_state, width)
        footprint = (after[2] if after else 0) + width
        parts = [self._prefill(list(rows), *args)
                 for rows in self.chunks(len(prompts), footprint, group)]
        return Prefill(_merge([p.state for p in parts]) if keep_state else None,
                       _cat([p.logprobs for p in parts]), _cat([p.residuals for p in parts]))

    def _prefill(self, rows, prompts, subs, after, start_layer, hidden, keep, tail, keep_state,
                 width) -> Prefill:
        lm, dev, n = self.lm, self.lm.device, self.lm.n_layers
        prompts = [list(prompts[i]) for i in rows]
        if after is None:
            offsets = [width - len(p) for p in prompts]
            ids = torch.tensor([[self._pad()] * o + p for o, p in zip(offsets, prompts)])
            mask = torch.tensor([[0] * o + [1] * len(p) for o, p in zip(offsets, prompts)])
            pos, cache, shift = (mask.cumsum(-1) - 1).clamp(min=0), empty_cache(), offsets
        else:
            state, cache_rows, column = after
            picked = [cache_rows[i] for i in rows]
            cache = gather_prefix(state.cache, picked, column, start_layer)
            new = torch.ones(len(rows), width, dtype=torch.long)
            mask = torch.cat([state.mask[picked, :column], new], 1)
            pos, ids = (mask.cumsum(-1) - 1)[:, column:], torch.tensor(prompts)
            offsets, shift = [state.offsets[r] for r in picked], [0] * len(rows)
        entries = [[Sub(s.layer, shift[k] + s.position, s.vector) for s in subs[i]]
                   for k, i in enumerate(rows)] if subs else []
        with ExitStack() as stack:
            if any(entries):
                stack.enter_context(substitute(lm.layers, entries))
            if start_layer:
                stack.enter_context(start_at(lm.layers, start_layer, hidden[rows]))
            at = torch.arange(ids.shape[1] - tail, ids.shape[1]).expand(len(rows), -1)
            store = stack.enter_context(capture_hook(lm.layers, range(n), at)) if tail else None
            logits = self._run(ids, start_layer, cache=cache, attention_mask=mask.to(dev),
                               position_ids=pos.to(dev), use_cache=True,
                               logits_to_keep=max(keep, 1)).logits
        if keep_state and not start_layer and cache.get_seq_length() != mask.shape[1]:
            raise LacError("the model did not fill the KV cache it was given as `cache=`: lac "
                           "needs transformers >= 5.24 (an older one ignores the keyword)")
        return Prefill(State(cache, mask, offsets, logits[:, -1]) if keep_state else None,
                       logprobs_of(logits[:, -keep:]) if keep else None,
                       _stacked(store, range(n)) if tail else None)

    def decode(self, state: State, n_new: int, *, stop_at_eos: bool = False,
               keep_logprobs: bool = False, capture: bool = False, on_step=None) -> Decoded:
        """`n_new` greedy tokens (argmax; the model's generation config is never read): the first
        from `state.logits`, each later one after feeding the previous back through the cache."""
        lm, dev = self.lm, self.lm.device
        eos, rows = lm.tokenizer.eos_token_id, len(state.offsets)
        mask, logits = state.mask, state.logits
        last = (mask.cumsum(-1) - 1)[:, -1]
        tokens, logprobs, captured = [], [], []
        done = torch.zeros(rows, dtype=torch.bool)
        for step in range(n_new):
            if not torch.isfinite(logits).all():
                raise NonFiniteResidualError("non-finite logits during greedy decoding; "
                                             "run in bfloat16 or float32")
            if keep_logprobs:
                logprobs.append(logprobs_of(logits).cpu())
            nxt = logits.float().argmax(-1).cpu()
            tokens.append(nxt)
            if stop_at_eos and eos is not None:
                done |= nxt == eos
                if bool(done.all()):
                    break
            if step == n_new - 1:
                break
            mask, last = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1), last + 1
            with ExitStack() as stack:
                store = stack.enter_context(capture_hook(lm.layers, range(lm.n_layers))) \
                    if capture else None
                logits = self._run(nxt[:, None], cache=state.cache, attention_mask=mask.to(dev),
                                   position_ids=last[:, None].to(dev), use_cache=True).logits[:, -1]
            if capture:
                captured.append(_stacked(store, range(lm.n_layers)))
            if on_step:
                on_step(step + 1)
        steps = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(rows)]
        if stop_at_eos and eos is not None:
            steps = [row[: row.index(eos) + 1] if eos in row else row for row in steps]
        return Decoded(steps, torch.stack(logprobs, dim=1) if logprobs else None, _cat(captured, 2),
                       State(state.cache, mask, state.offsets, logits))

    def generate(self, prompts: list[list[int]], n_new: int, *, subs=None, after=None,
                 stop_at_eos: bool = False, keep_logprobs: bool = False, capture_tail: int = 0,
                 keep_state: bool = False) -> Decoded:
        """Prefill then decode, chunk by chunk of rows within the budget (cache included); with
        `capture_tail`, residuals cover the prompt tail and every token fed back."""
        width = max(len(p) for p in prompts)
        parts, chunks = [], self.chunks(len(prompts), (after[2] if after else 0) + width + n_new)
        for ci, rows in enumerate(chunks):
            cont = (after[0], [after[1][i] for i in rows], after[2]) if after else None
            pre = self.prefill([prompts[i] for i in rows], keep=0, capture_tail=capture_tail,
                               subs=[subs[i] for i in rows] if subs else None, keep_state=True,
                               after=cont, width=width)
            dec = self.decode(pre.state, n_new, stop_at_eos=stop_at_eos,
                              keep_logprobs=keep_logprobs, capture=capture_tail > 0,
                              on_step=lambda k: self.tick((ci + k / n_new) / len(chunks)))
            dec.residuals = _cat([r for r in (pre.residuals, dec.residuals) if r is not None], 2)
            parts.append(dec)
        return Decoded([t for d in parts for t in d.tokens], _cat([d.logprobs for d in parts]),
                       _cat([d.residuals for d in parts]),
                       _merge([d.state for d in parts]) if keep_state else None)


def _by_length(lengths: list[int], budget: int):
    """Consecutive batches of length-sorted rows whose padded size stays within the budget."""
    batch, width = [], 0
    for i, n in enumerate(lengths):
        if batch and max(width, n) * (len(batch) + 1) > budget:
            yield batch
            batch, width = [], 0
        batch.append(i)
        width = max(width, n)
    if batch:
        yield batch


def _merge(states: list[State]) -> State:
    """One State from row chunks that share their columns."""
    if len(states) == 1:
        return states[0]
    return State(concat_rows([s.cache for s in states]), torch.cat([s.mask for s in states]),
                 [o for s in states for o in s.offsets], torch.cat([s.logits for s in states]))
