"""How the localized sweep is computed: two execution plans that must agree."""
# `naive` is the oracle: one full forward per site and cell, the way the paper's scripts run.
# `fast` computes each distinct forward once: one batched greedy reference pass yields the
# references, the clean window log-probs and the XY residuals; each distinct prompt of the other
# conditions runs once; every substituted run starts at its probe (on the reference pass's cached
# prefix) and at its layer (fed the clean residuals there): nothing before either can change.
# experiments.py says what is computed; this module only how.
from __future__ import annotations

import torch

from ..engine.forward import Continuation, Engine, Sub, kl_sum
from ..engine.memory import release_freed
from .prompts import CONDITIONS, N_REF, PROMPT_PROBES, Rendered

# The fast plan keeps its reference pass (log-probs [cells, N_REF, V] float32, KV cache, residuals)
# until its windows are scored, so a sweep takes its cells in chunks whose reference log-probs stay
# within this many values: one chunk for SmolLM2's grids, three for Qwen2.5's 152k vocabulary on
# the long grid (334 MB of log-probs otherwise). Each chunk runs its other conditions' prompts.
REFERENCE_LOGITS = 2 ** 25


def cell_chunks(n_cells: int, vocab: int) -> list[range]:
    """Consecutive, near-equal chunks of cells within REFERENCE_LOGITS."""
    n = max(1, min(n_cells, -(-n_cells * N_REF * vocab // REFERENCE_LOGITS)))
    per = -(-n_cells // n)
    return [range(at, min(at + per, n_cells)) for at in range(0, n_cells, per)]


def in_cell_chunks(eng: Engine, n_cells: int, compute) -> list:
    """`compute(cells)` per chunk of cells (cell_chunks), in order."""
    return [compute(cells) for cells in cell_chunks(n_cells, eng.lm.vocab_size)]


def distinct(seqs) -> tuple[list[list[int]], list[int]]:
    """The distinct sequences in first-seen order, and for each input the index of its own: a
    prompt shared by several sites is then computed once."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(s), len(first)) for s in seqs]
    return [list(k) for k in first], index


def _tail(rendered: list[Rendered], probes) -> int:
    """How many last prompt positions hold every in-prompt probe of every prompt."""
    inside = [p for p in probes if p in PROMPT_PROBES] or ["p_last"]
    return max(len(r.ids) - r.position(p) for r in rendered for p in inside)


class NaivePlan:
    """One full forward per (cell, condition) capture and per (cell, probe, layer, vector) run."""
    # `window_kls` takes `sites[cell][probe] = (probe position, window start)` in the XY sequence
    # `seqs[cell]` and named vector sets [cell, layer, probe, d]; it returns, per name, the KL of
    # the window with the vector substituted at (layer, probe) against the clean window, [cell,
    # probe, layer].

    def __init__(self, eng: Engine, prompts: list[dict[str, Rendered]], probes):
        self.eng, self.prompts, self.probes = eng, prompts, probes

    def references(self, n_new: int) -> list[list[int]]:
        self.refs = [self.eng.generate([list(cp["XY"].ids)], n_new).tokens[0]
                     for cp in self.prompts]
        return self.refs

    def residuals(self, forced: int) -> torch.Tensor:
        """[cell, condition, layer, probe, d]: each condition's prompt + r[0:forced], at probes."""
        h = [self.eng.capture([list(cp[c].ids) + ref[:forced]],
                              [[cp[c].position(p) for p in self.probes]])
             for cp, ref in zip(self.prompts, self.refs) for c in CONDITIONS]
        n = len(self.prompts)
        return torch.cat(h).reshape(n, len(CONDITIONS), self.eng.lm.n_layers, len(self.probes), -1)

    def _zeros(self, seqs, layers, vectors) -> dict:
        return {name: torch.zeros(len(seqs), len(self.probes), len(layers), dtype=torch.float64)
                for name in vectors}

    def window_kls(self, seqs, sites, window: int, layers, vectors: dict,
                   same_path: bool = False) -> dict:
        # its clean window is a full forward of the same sequence: the same path (`same_path`)
        out = self._zeros(seqs, layers, vectors)
        for pi in range(len(self.probes)):
            for ci, seq in enumerate(seqs):
                p, w0 = sites[ci][pi]
                clean = self.eng.prefill([seq[: w0 + window]], keep=window).logprobs
                for li, layer in enumerate(layers):
                    for name, vec in vectors.items():
                        sub = [[Sub(layer, p, vec[ci, layer, pi])]]
                        lp = self.eng.prefill([seq[: w0 + window]], subs=sub, keep=window).logprobs
                        out[name][ci, pi, li] = float(kl_sum(clean, lp))
        return {name: v.numpy() for name, v in out.items()}


class FastPlan(NaivePlan):
    """Each distinct forward once; substituted runs from their probe and their layer up."""

    def references(self, n_new: int) -> list[list[int]]:
        xy = [cp["XY"] for cp in self.prompts]
        self.tail = _tail(xy, self.probes)
        self.gen = self.eng.generate([list(r.ids) for r in xy], n_new, keep_logprobs=True,
                                     capture_tail=self.tail, keep_state=True)
        self.refs = self.gen.tokens
        return self.refs

    def _ref_index(self, ci: int, position: int) -> int:
        """Index into the reference pass's residuals of a position of cell ci's XY sequence."""
        j = self.tail + position - len(self.prompts[ci]["XY"].ids)
        if not 0 <= j < self.gen.residuals.shape[2]:
            raise IndexError(f"position {position} of cell {ci} is not captured (tail {self.tail})")
        return j

    def residuals(self, forced: int) -> torch.Tensor:
        """XY residuals come from the reference pass itself; each distinct prompt of the other
        conditions (XB repeats across tasks, BY across personas, BB everywhere) runs once, then
        r[0:forced] of each cell after its cached prefix."""
        release_freed()  # the reference pass's garbage, before this pass allocates its own
        eng, lm, probes, n = self.eng, self.eng.lm, self.probes, len(self.prompts)
        h = torch.empty(n, len(CONDITIONS), lm.n_layers, len(probes), lm.d_model)
        for ci, cp in enumerate(self.prompts):
            cols = [self._ref_index(ci, cp["XY"].position(p)) for p in probes]
            h[ci, CONDITIONS.index("XY")] = self.gen.residuals[ci][:, cols]
        pairs = [(ci, c) for ci in range(n) for c in CONDITIONS if c != "XY"]
        keys, index = distinct(self.prompts[ci][c].ids for ci, c in pairs)
        rendered = {u: self.prompts[ci][c] for (ci, c), u in zip(pairs, index)}
        tail = _tail(list(rendered.values()), probes)
        pre = eng.prefill(keys, keep=0, capture_tail=tail, keep_state=True)
        after = Continuation(pre.state, index, max(len(k) for k in keys))
        fed = eng.prefill([self.refs[ci][:forced] for ci, _ in pairs], after=after, keep=0,
                          capture_tail=forced).residuals
        for k, ((ci, c), u) in enumerate(zip(pairs, index)):
            n_ids = len(rendered[u].ids)
            for pi, probe in enumerate(probes):
                q = rendered[u].position(probe)
                h[ci, CONDITIONS.index(c), :, pi] = (
                    pre.residuals[u][:, tail + q - n_ids] if q < n_ids else fed[k][:, q - n_ids])
        return h

    def window_kls(self, seqs, sites, window: int, layers, vectors: dict,
                   same_path: bool = False) -> dict:
        """Per probe, cells grouped by (cache column, run length); per swept layer one batch of
        every cell's runs (one per vector set), computed from the probe on and from the layer up,
        fed the clean residuals the reference pass captured, scored against its own log-probs."""
        release_freed()
        out = self._zeros(seqs, layers, vectors)
        for pi in range(len(self.probes)):
            groups: dict[tuple[int, int], list[int]] = {}
            for ci in range(len(seqs)):
                p, w0 = sites[ci][pi]
                groups.setdefault((self.gen.state.column(ci, p), w0 + window - p), []).append(ci)
            for (column, length), members in groups.items():
                runs = [(ci, *sites[ci][pi]) for ci in members]
                self._group(runs, pi, column, length, seqs, window, layers, vectors, out,
                            same_path)
        return {name: v.numpy() for name, v in out.items()}

    def _group(self, runs, pi, column, length, seqs, window, layers, vectors, out, same_path):
        names, members = list(vectors), [ci for ci, _, _ in runs]
        after = Continuation(self.gen.state, [ci for ci in members for _ in names], column)
        suffixes = [seqs[ci][p: p + length] for ci, p, _ in runs for _ in names]
        spans = [slice(self._ref_index(ci, p), self._ref_index(ci, p) + length)
                 for ci, p, _ in runs]
        # step k of the reference pass scores position len(prompt) - 1 + k
        first = [w0 - len(self.prompts[ci]["XY"].ids) + 1 for ci, _, w0 in runs]
        clean = [self.gen.logprobs[ci, k: k + window] for ci, k in zip(members, first)]  # views
        against = [c for c in clean for _ in names]  # rows: (cell, vector set)
        for li, layer in enumerate(layers):
            # from the layer up, fed the clean residuals there (nothing below can change); the
            # vector enters as a substitution, so the engine reads it back (hooks.Audit)
            kw = dict(start_layer=layer, hidden=torch.stack(
                [self.gen.residuals[ci, layer, s] for ci, s in zip(members, spans)
                 for _ in names])) if layer else {}
            subs = [[Sub(layer, 0, vectors[name][ci, layer, pi])] for ci in members
                    for name in names]
            if same_path:  # scored against this very path run without the substitution
                against = list(self.eng.prefill(suffixes, after=after, keep=window,
                                                group=len(names), **kw).logprobs)
            kls = self.eng.prefill(suffixes, after=after, keep=window, group=len(names),
                                   against=against, subs=subs, **kw
                                   ).kl.reshape(len(members), len(names))
            for k, name in enumerate(names):
                out[name][members, pi, li] = kls[:, k]


PLANS = {"fast": FastPlan, "naive": NaivePlan}


def floor_tokens(prompts, refs, sites, window: int, layers, n_layers: int, forced: int) -> tuple:
    """What the protocol cannot avoid computing, as (token positions, token-layers)."""
    # Clean: every distinct prefix of the sequences it reads (each XY prompt + r[0:n-1], each other
    # condition's prompt + r[0:forced]), counted once, as a trie does, through every layer.
    # Substituted: per run (additive and null), the positions from its probe to the end of its
    # window, through the layers from the substituted one up.
    trie: set[tuple[int, ...]] = set()
    for cp, ref in zip(prompts, refs):
        for c in CONDITIONS:
            seq = tuple(cp[c].ids) + tuple(ref[: len(ref) - 1 if c == "XY" else forced])
            trie.update(seq[:k] for k in range(1, len(seq) + 1))
    positions, layer_tokens = len(trie), len(trie) * n_layers
    for cell_sites in sites:
        for p, w0 in cell_sites:
            positions += 2 * len(layers) * (w0 + window - p)
            layer_tokens += 2 * (w0 + window - p) * sum(n_layers - layer for layer in layers)
    return positions, layer_tokens
