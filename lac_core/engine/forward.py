"""Forward passes under a token budget: prefill, greedy decode steps and residual capture."""
# The only module that calls a model (hooks.py holds the hooks it uses). Three operations, one
# return type each: `prefill` (prompts from scratch or after cached rows, optionally substituted,
# optionally from a layer up) -> Prefill; `decode` (greedy steps from a cache) -> Decoded;
# `capture` (residuals entering layers) -> tensor; `generate` chains prefill and decode. Each call
# splits its rows so that rows x (cached + new positions) stays within the token budget (a row
# longer than the budget runs alone; cached columns a continuation reads in place, from a state
# held already, are not counted) and adds its work to the engine's Cost. Prompts are left-
# padded with a mask and explicit position ids; captures run right-padded (a causal model never
# lets a real token see a later pad).
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import torch

from . import DEFAULT_TOKEN_BUDGET
from .attention import reads_in_place
from ..errors import LacError, NonFiniteResidualError, UsageError
from .hooks import Audit, Sub, start_at, substitute
from .hooks import capture as capture_hook
from .kvcache import State, empty_cache, gather_prefix, joined, merged, read_in_place
from .prefixes import Layout, layout
from .types import (Continuation, Cost, Decoded, ModelLike, Prefill, PrefillRequest,  # noqa: F401
                    Work)

__all__ = ["Sub", "Cost", "Work", "Engine", "State", "Prefill", "Decoded", "Continuation",
           "PrefillRequest", "ModelLike", "kl_sum", "logprobs_of"]


def logprobs_of(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax over the vocabulary (never in the model's half precision)."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_sum(logp_ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Sum over window positions of KL(P_ref || P) in nats; inputs [..., T, V] float32 log-probs."""
    return (logp_ref.exp() * (logp_ref - logp)).sum(dim=(-1, -2))


# Scored calls keep at most this many logits (float32: 32 MiB) per forward call: a batch of runs
# scored over a 152k-token vocabulary would otherwise hold gigabytes of logits and log-probs.
# The cap changes no number (2^25 and 2^23 give the same KLs bit for bit on SmolLM2 and Qwen2.5)
# nor SmolLM2's sweep time (side by side, one run); it lowers the sweep's peak memory.
LOGITS_BUDGET = 2 ** 23


def _stacked(store: dict, layers) -> torch.Tensor:
    """[rows, len(layers), k, d] on the CPU from a capture store, calls joined along positions."""
    return torch.stack([torch.cat(store[layer], dim=1).cpu() for layer in layers], dim=1)


@dataclass
class Engine:
    """One model under one token budget, counting the work it does."""

    lm: ModelLike  # models.LoadedModel is one
    token_budget: int = DEFAULT_TOKEN_BUDGET
    cost: Cost = field(default_factory=Cost)
    audit: Audit = field(default_factory=Audit)  # every substitution read back (hooks.Audit)
    progress: object = None  # a progress.Progress, told how far long parts are (through work)
    work: Work | None = None  # shared with the other engines of an experiment

    def expect(self, layer_tokens: int) -> None:
        """The work the next experiment plans (token-layers), for its time-left estimate."""
        if self.work is None:
            self.work = Work(self.progress)
        self.work.plan(layer_tokens)

    def __post_init__(self):
        if not isinstance(self.token_budget, int) or self.token_budget < 1:
            raise UsageError(f"token budget must be a positive integer, got {self.token_budget!r}; "
                             "pass --lac-token-budget N with N >= 1")

    def chunks(self, n_rows: int, footprint: int, group: int = 1, logits: int = 0) -> list[range]:
        """Consecutive row ranges of whole groups whose rows x footprint stays within the budget
        (and rows x `logits`, the logits a row keeps, within LOGITS_BUDGET)."""
        per = group * max(1, self.token_budget // (group * max(footprint, 1)))
        if logits:
            per = min(per, group * max(1, LOGITS_BUDGET // (group * logits)))
        return [range(at, min(at + per, n_rows)) for at in range(0, n_rows, per)]

    def run_model(self, ids: torch.Tensor, start_layer: int = 0, logits_to_keep: int = 0, **kw):
        """The engine's one call into the model, under inference mode: it counts the call's cost
        and work (a test times runs by wrapping it)."""
        # The last `logits_to_keep` positions are passed as a position tensor (transformers'
        # documented 1D form), which gathers them into one block: the int form slices a strided
        # view, on which the output head runs one product per row, each reading the whole head
        # (2-8x slower on SmolLM2's 49k vocabulary). One product may round differently from
        # per-row ones: sweep KLs moved by at most 1.7e-5 on SmolLM2 and Qwen2.5, no verdict.
        self.cost.add(*ids.shape, self.lm.n_layers - start_layer)
        if self.work is not None:
            self.work.add(ids.shape[0] * ids.shape[1] * (self.lm.n_layers - start_layer))
        length = ids.shape[1]
        keep = torch.arange(max(0, length - logits_to_keep), length) if logits_to_keep else 0
        with torch.inference_mode():
            return self.lm.model(input_ids=ids.to(self.lm.device), logits_to_keep=keep, **kw)

    def pad_id(self) -> int:
        """The id padding positions hold (masked out: any id would do): pad, else eos, else 0."""
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
            ids = torch.tensor([list(seqs[i]) + [self.pad_id()] * (width - len(seqs[i]))
                                for i in idx])
            index = torch.tensor([positions[i] for i in idx], dtype=torch.long)
            with capture_hook(lm.layers, layers, index) as store:
                self.run_model(ids, use_cache=False, logits_to_keep=1)  # only residuals are wanted
            out[idx] = _stacked(store, layers)
        return out

    def prefill(self, prompts: list[list[int]], *, subs: list[list[Sub]] | None = None,
                after: Continuation | None = None, start_layer: int = 0,
                hidden: torch.Tensor | None = None, keep: int = 1, capture_tail: int = 0,
                keep_state: bool = False, width: int = 0, group: int = 1,
                against: list[torch.Tensor] | None = None, in_place: bool = False) -> Prefill:
        """Run `prompts`, one row each; the float32 log-probs of their last `keep` positions, or
        with `against` (one [keep, V] float32 log-prob tensor per row) only each row's KL sum
        against them, scored row by row as each call ends (no batch of log-probs is kept)."""
        # From scratch, prompts are left-padded to a common width (at least `width`). With
        # `after` (a Continuation) row i continues the first `column` cached columns of its row
        # of the kept state (rows may repeat; the prompts then have one length). `subs[i]` are
        # row i's substitutions, positions counted in its prompt. With `start_layer` > 0 only the
        # layers from it run, fed `hidden` ([rows, length, d], the residual entering it): nothing
        # below a substitution can change. `capture_tail` records the residuals entering every
        # layer at each row's last positions. Rows are split in whole `group`s, never inside one.
        # With `in_place`, continuations read the cached columns where they are (see
        # reads_in_place_of; a state kept from them cannot be continued again). `generate` asks
        # for it: there every row chunk reads all the weights at every step, so a chunk saved is
        # worth far more than the copies; measured on prefill continuations (host, sweep windows)
        # it gained nothing and cost the short sweep ~5%.
        if after is not None and len({len(p) for p in prompts}) != 1:
            raise ValueError("continuations of cached rows must all have one length")
        if capture_tail > min(len(p) for p in prompts):
            raise ValueError(f"capture_tail {capture_tail} exceeds the shortest prompt")
        if against is not None and len(against) != len(prompts):
            raise ValueError(f"{len(against)} reference log-probs for {len(prompts)} rows")
        req = PrefillRequest(prompts, subs, after, start_layer, hidden, keep, capture_tail,
                             keep_state, max(width, *(len(p) for p in prompts)), against,
                             in_place and self.reads_in_place_of(after), group)  # a caller's only
        plan = self._shareable(req)
        if plan.common:  # computed once; then each row's rest after it (left-padded)
            req = self._shared(plan, req)
        return self._chunked(req)

    def _chunked(self, req: PrefillRequest) -> Prefill:
        footprint = (req.after.column if req.after and not req.in_place else 0) + req.width
        logits = req.keep * self.lm.vocab_size if req.against is not None else 0
        parts = [self._prefill(list(rows), req)
                 for rows in self.chunks(len(req.prompts), footprint, req.group, logits)]
        return Prefill(merged([p.state for p in parts]) if req.keep_state else None,
                       joined([p.logprobs for p in parts]), joined([p.residuals for p in parts]),
                       joined([p.kl for p in parts]))

    def _shared(self, plan: Layout, req: PrefillRequest) -> PrefillRequest:
        """The common prefix once and, with groups, each group's segment once after it: the
        request every row's rest makes, continuing them (columns unchanged)."""
        c, prompts, n = plan.common, req.prompts, len(req.prompts)
        state = self.prefill([prompts[0][:c]], keep=0, keep_state=True).state
        if not plan.groups:
            return replace(req, prompts=[p[c:] for p in prompts], width=req.width - c,
                           after=Continuation(state, [0] * n, c))
        seg, of = max(s for s, _ in plan.groups), plan.segment_of()
        segs = [prompts[rows[0]][c: c + s] for s, rows in plan.groups]
        state = self._chunked(PrefillRequest(segs, after=Continuation(state, [0] * len(segs), c),
                                             keep=0, keep_state=True, width=seg)).state
        return replace(req, prompts=[p[c + of[i][1]:] for i, p in enumerate(prompts)],
                       width=req.width - c - seg,
                       after=Continuation(state, [of[i][0] for i in range(n)], c + seg))

    def _shareable(self, req: PrefillRequest) -> Layout:
        """What the rows share and can compute once (prefixes.layout): nothing for one row, a
        continuation, substitutions or a start layer (their positions count from the prompt's
        start), or a sliding-window model (its window counts cache columns, and sharing puts
        each row's padding between columns); the last positions a row keeps stay its own."""
        if len(req.prompts) < 2 or req.after is not None or req.start_layer or \
                (req.subs and any(req.subs)):
            return Layout(0)
        config = self.lm.model.config
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return Layout(0)
        return layout([list(p) for p in req.prompts], max(req.keep, req.tail, 1))

    def reads_in_place_of(self, after: Continuation | None) -> bool:
        """Whether continuations of `after` may read its cached columns in place, not copied per
        row (kvcache.Shared; not from row chunks kept apart), costing no budget: they are held."""
        return (after is not None and not isinstance(after.state.cache, list)
                and reads_in_place(self.lm.model.config))

    def _prefill(self, rows: list[int], req: PrefillRequest) -> Prefill:
        lm, dev, n = self.lm, self.lm.device, self.lm.n_layers
        prompts, width, after = [list(req.prompts[i]) for i in rows], req.width, req.after
        if after is None:
            offsets = [width - len(p) for p in prompts]
            ids = torch.tensor([[self.pad_id()] * o + p for o, p in zip(offsets, prompts)])
            mask = torch.tensor([[0] * o + [1] * len(p) for o, p in zip(offsets, prompts)])
            pos, cache, shift = (mask.cumsum(-1) - 1).clamp(min=0), empty_cache(), offsets
            shared = [0] * len(rows)
        else:
            state, column = after.state, after.column
            picked = [after.rows[i] for i in rows]
            cache = read_in_place(state.cache, picked, column) if req.in_place else \
                gather_prefix(state.cache, picked, column, req.start_layer)
            pads = [width - len(p) for p in prompts]  # non-zero only after a shared prefix
            ids = torch.tensor([[self.pad_id()] * o + p for o, p in zip(pads, prompts)])
            new = torch.tensor([[0] * o + [1] * len(p) for o, p in zip(pads, prompts)])
            mask = torch.cat([state.mask[picked, :column], new], 1)
            pos = (mask.cumsum(-1) - 1)[:, column:].clamp(min=0)
            offsets = [state.offsets[r] + o for r, o in zip(picked, pads)]
            cached = mask[:, :column].sum(-1).tolist()  # a padded row's rest follows them
            shared = [c if o else state.shared[r] for c, o, r in zip(cached, pads, picked)]
            shift = pads
        entries = [[Sub(s.layer, shift[k] + s.position, s.vector) for s in req.subs[i]]
                   for k, i in enumerate(rows)] if req.subs else []
        keep, tail, start = req.keep, req.tail, req.start_layer
        with ExitStack() as stack:
            if any(entries):
                stack.enter_context(substitute(lm.layers, entries, self.audit))
            if start:
                stack.enter_context(start_at(lm.layers, start, req.hidden[rows]))
            at = torch.arange(ids.shape[1] - tail, ids.shape[1]).expand(len(rows), -1)
            store = stack.enter_context(capture_hook(lm.layers, range(n), at)) if tail else None
            logits = self.run_model(ids, start, cache=cache, attention_mask=mask.to(dev),
                               position_ids=pos.to(dev), use_cache=True,
                               logits_to_keep=max(keep, 1)).logits
        if req.keep_state and not start and cache.get_seq_length() != mask.shape[1]:
            raise LacError("the model did not fill the KV cache it was given as `cache=`: lac "
                           "needs transformers >= 5.24 (an older one ignores the keyword)")
        kl = None if req.against is None else torch.tensor(
            [float(kl_sum(req.against[i].to(logits.device), logprobs_of(logits[k, -keep:])))
             for k, i in enumerate(rows)], dtype=torch.float64)
        return Prefill(State(cache, mask, offsets, logits[:, -1], shared)
                       if req.keep_state else None,
                       logprobs_of(logits[:, -keep:]) if keep and req.against is None else None,
                       _stacked(store, range(n)) if tail else None, kl)

    def decode(self, state: State, n_new: int, *, stop_at_eos: bool = False,
               keep_logprobs: bool = False, into: torch.Tensor | None = None,
               capture_into: torch.Tensor | None = None) -> Decoded:
        """`n_new` greedy tokens (argmax; the model's generation config is never read): the first
        from `state.logits`, each later one after feeding the previous back through the cache.
        With `keep_logprobs`, step k's log-probs go to [:, k] of `into` ([rows, n_new, V]) when
        given, so a caller's rows are written where they belong, never copied; likewise the
        residuals entering every layer at fed-back token k go to [:, :, k] of `capture_into`
        ([rows, n_layers, n_new - 1, d])."""
        lm, dev = self.lm, self.lm.device
        if isinstance(state.cache, list):
            raise ValueError("decode continues one chunk's cache; this state joins several")
        if stop_at_eos and capture_into is not None:
            raise ValueError("capture_into needs every row's n_new steps: not with stop_at_eos")
        eos, rows = lm.tokenizer.eos_token_id, len(state.offsets)
        mask, logits = state.mask, state.logits
        last = (mask.cumsum(-1) - 1)[:, -1]
        tokens, logprobs, done = [], into, torch.zeros(rows, dtype=torch.bool)
        for step in range(n_new):
            # one pass: an inf or nan makes the sum non-finite (so would logits summing past
            # float32's range, ~1e38: no usable model's); isfinite().all() took 3% of a step
            if not torch.isfinite(logits.sum(dtype=torch.float32)):
                raise NonFiniteResidualError("non-finite logits during greedy decoding; "
                                             "run in bfloat16 or float32")
            if keep_logprobs:  # written in place: a list then a stack would hold them twice
                if logprobs is None:
                    logprobs = torch.empty(rows, n_new, logits.shape[-1])
                logprobs[:, step] = logprobs_of(logits).cpu()
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
                    if capture_into is not None else None
                logits = self.run_model(
                    nxt[:, None], cache=state.cache, attention_mask=mask.to(dev),
                    position_ids=last[:, None].to(dev), use_cache=True).logits[:, -1]
            if store is not None:
                capture_into[:, :, step] = _stacked(store, range(lm.n_layers))[:, :, 0]
        steps = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(rows)]
        if stop_at_eos and eos is not None:
            steps = [row[: row.index(eos) + 1] if eos in row else row for row in steps]
        if logprobs is not None and len(tokens) < n_new:  # stopped at EOS: the steps taken
            logprobs = logprobs[:, : len(tokens)]
        return Decoded(steps, logprobs, capture_into,
                       State(state.cache, mask, state.offsets, logits, state.shared))

    def generate(self, prompts: list[list[int]], n_new: int, *, subs=None,
                 after: Continuation | None = None,
                 stop_at_eos: bool = False, keep_logprobs: bool = False, capture_tail: int = 0,
                 keep_state: bool = False) -> Decoded:
        """Prefill then decode, chunk by chunk of rows within the budget (cache included; columns
        continued from `after` are read in place where they can be); with `capture_tail`,
        residuals cover the prompt tail and every token fed back."""
        # a state kept to be continued again holds copies: in-place layers hold only their own
        in_place = not keep_state and self.reads_in_place_of(after)
        width, copied = max(len(p) for p in prompts), after and not in_place
        parts, chunks = [], self.chunks(len(prompts),
                                        (after.column if copied else 0) + width + n_new)
        if (keep_logprobs or capture_tail) and stop_at_eos:
            raise ValueError("keep_logprobs and capture_tail need every row's n_new steps: not "
                             "with stop_at_eos")
        lm, n = self.lm, len(prompts)  # outputs preallocated: each chunk writes its rows in place
        out = torch.empty(n, n_new, lm.vocab_size) if keep_logprobs else None
        res = torch.empty(n, lm.n_layers, capture_tail + n_new - 1, lm.d_model) \
            if capture_tail else None
        for ci, rows in enumerate(chunks):
            cont = after.take(rows) if after else None
            pre = self.prefill([prompts[i] for i in rows], keep=0, capture_tail=capture_tail,
                               subs=[subs[i] for i in rows] if subs else None, keep_state=True,
                               after=cont, width=width, in_place=in_place)
            if capture_tail:
                res[rows.start: rows.stop, :, :capture_tail] = pre.residuals
            dec = self.decode(pre.state, n_new, stop_at_eos=stop_at_eos,
                              keep_logprobs=keep_logprobs,
                              into=out[rows.start: rows.stop] if keep_logprobs else None,
                              capture_into=res[rows.start: rows.stop, :, capture_tail:]
                              if capture_tail else None)
            parts.append(dec)
        return Decoded([t for d in parts for t in d.tokens], out, res,
                       merged([d.state for d in parts]) if keep_state else None)


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
