"""The prompt pass and what continues it: each distinct prompt of an experiment runs once, kept,
and the generations, the XY target and the teacher-forced windows continue it from p_last."""
# How the forwards are batched, cached and budgeted is the engine's business; these functions say
# which prompts and continuations the protocol asks for.
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.forward import Continuation, Engine, State, Sub
from .plans import distinct
from .grids import Grid
from .prompts import CONDITIONS, Rendered, render
from .work import pass_work

HOST_WINDOW = 10  # the XY target's greedy tokens: host injection and steering score these


def render_cell(lm, grid: Grid, cell) -> dict[str, Rendered]:
    return {c: render(lm.tokenizer, grid.user_text(cell, c), lm.template) for c in CONDITIONS}


def cost_record(eng: Engine, **extra) -> dict:
    """The work an experiment pushed through the model (its time is the session's: run block)."""
    return {"forward_tokens": eng.cost.tokens, "forward_layer_tokens": eng.cost.layer_tokens,
            "forward_calls": eng.cost.calls, **extra}


@dataclass(frozen=True)


class PromptPass:
    """Distinct whole prompts run once (left-padded: every p_last at one column), kept so that
    the experiments that need a prompt (residuals, generations, teacher-forced windows) continue
    it from p_last instead of running it again; and the residuals entering each layer there."""

    state: State
    row: dict[tuple[int, ...], int]  # prompt ids -> its row
    column: int  # p_last's column
    residuals: torch.Tensor  # [row, layer, d] float32

    def after(self, seqs) -> Continuation:
        """`Engine.prefill(after=...)` for continuations of `seqs` from their p_last."""
        return Continuation(self.state, [self.row[tuple(s)] for s in seqs], self.column)


def prompt_pass(eng: Engine, seqs) -> PromptPass:
    keys, _ = distinct(seqs)
    pre = eng.prefill(keys, keep=0, capture_tail=1, keep_state=True)
    return PromptPass(pre.state, {tuple(k): i for i, k in enumerate(keys)},
                      pre.state.column(0, len(keys[0]) - 1), pre.residuals[:, :, 0])


def p_last_residuals(eng: Engine, grid: Grid, passed: PromptPass | None = None, prompts=None):
    """Prompts of the four conditions and their residuals at p_last: [cell, cond, layer, d]."""
    prompts = prompts or [render_cell(eng.lm, grid, cell) for cell in grid.cells]
    seqs = [cp[c].ids for cp in prompts for c in CONDITIONS]  # XB, BY, BB repeat
    passed = passed or prompt_pass(eng, seqs)
    h = passed.residuals[[passed.row[tuple(s)] for s in seqs]]
    return prompts, h.reshape(len(prompts), len(CONDITIONS), eng.lm.n_layers, -1)


def pass_for(eng: Engine, grid: Grid, *, residuals, conditions, extra=(), then: int = 0):
    """One prompt pass over what an experiment continues (`conditions`, `extra` prompts) and,
    when no residuals were given, the four conditions they are read from; and those residuals.
    The experiment plans the pass and `then` token-layers more (engine.Work)."""
    prompts = residuals[0] if residuals else [render_cell(eng.lm, grid, c) for c in grid.cells]
    wanted = CONDITIONS if residuals is None else conditions
    seqs = [cp[c].ids for cp in prompts for c in wanted] + list(extra)
    eng.expect(pass_work(seqs, eng.lm.n_layers) + then)
    passed = prompt_pass(eng, seqs)
    return passed, residuals or p_last_residuals(eng, grid, passed, prompts)


def bare_prompts(lm, grid: Grid) -> list[tuple[int, ...]]:
    """Each cell's task without any persona sentence, rendered: the markers' bare condition."""
    return [tuple(render(lm.tokenizer, grid.user_text(c, "bare"), lm.template).ids)
            for c in grid.cells]


def generate_at_p_last(eng: Engine, rows, layer: int, n_new: int,
                        passed: PromptPass | None = None) -> list[list[int]]:
    """Greedy continuations (stopping at EOS) of prompts with an optional vector substituted at
    (layer, p_last). Every prompt is run once (or taken from `passed`), then each row continues
    from p_last, where the substitution lands; a prompt without a substitution runs once."""
    plain: dict[tuple[int, ...], int] = {}
    full, subs, which = [], [], []  # full[k]: prompt of generated row k; which[i]: row of input i
    for ids, vec in rows:
        if vec is None and ids in plain:
            which.append(plain[ids])
            continue
        if vec is None:
            plain[ids] = len(full)
        which.append(len(full))
        full.append(ids)
        subs.append([] if vec is None else [Sub(layer, 0, vec)])  # continuation position 0: p_last
    passed = passed or prompt_pass(eng, full)
    generated = eng.generate([[ids[-1]] for ids in full], n_new, subs=subs,
                             after=passed.after(full), stop_at_eos=True).tokens
    return [generated[k] for k in which]


@dataclass(frozen=True)


class Target:
    """Each cell's clean XY prompt, its first HOST_WINDOW greedy tokens and their log-probs: the
    reference that experiments 3-4 and the steering runs score against (computed once per grid)."""

    tokens: list[list[int]]
    logprobs: torch.Tensor  # [cell, HOST_WINDOW, V] float32


def xy_target(eng: Engine, grid: Grid, prompts=None, passed: PromptPass | None = None) -> Target:
    prompts = prompts or [render_cell(eng.lm, grid, cell) for cell in grid.cells]
    seqs = [cp["XY"].ids for cp in prompts]
    passed = passed or prompt_pass(eng, seqs)
    out = eng.generate([[s[-1]] for s in seqs], HOST_WINDOW, after=passed.after(seqs),
                       keep_logprobs=True)
    return Target(out.tokens, out.logprobs)


def teacher_forced(eng: Engine, prompts, condition: str, target: Target, runs,
                   passed: PromptPass | None = None):
    """KL(target || run) over the target's tokens teacher-forced after each cell's `condition`
    prompt: without intervention ([cell]) and for each run (cell, [(layer, vector)]) with its
    vectors at p_last ([run]). Each distinct prompt is run once (or taken from `passed`); the plain
    continuations keep every layer's residuals, and each run starts from its lowest substituted
    layer, fed those (nothing below it can change)."""
    seqs = [cp[condition].ids for cp in prompts]
    after = (passed or prompt_pass(eng, seqs)).after(seqs)
    # position 0 of each continuation is p_last, then the target's first tokens
    suffixes = [[cp[condition].ids[-1]] + target.tokens[ci][: HOST_WINDOW - 1]
                for ci, cp in enumerate(prompts)]
    against = list(target.logprobs)
    plain = eng.prefill(suffixes, after=after, keep=HOST_WINDOW,
                        capture_tail=HOST_WINDOW, against=against)
    scored = np.zeros(len(runs))
    by_low: dict[int, list[int]] = {}  # lowest substituted layer -> runs
    for k, (_, subs) in enumerate(runs):
        by_low.setdefault(min(m for m, _ in subs), []).append(k)
    for low, ks in sorted(by_low.items()):
        cells = [runs[k][0] for k in ks]
        kw = dict(start_layer=low, hidden=torch.stack([plain.residuals[ci, low] for ci in cells])
                  ) if low else {}
        subs = [[Sub(m, 0, v) for m, v in runs[k][1]] for k in ks]  # each read back (Audit)
        kl = eng.prefill([suffixes[ci] for ci in cells], subs=subs, keep=HOST_WINDOW,
                         after=after.take(cells),
                         against=[against[ci] for ci in cells], **kw).kl
        scored[ks] = kl.numpy()
    return plain.kl.numpy(), scored
