"""Every experiment a run computes, one function per kind (verdicts/kinds.py), in one namespace:
persona markers (experiment 2) and host injection (3 and 4) are defined here; the sweep (1,
sweep.py), dose and swap (steering.py) and the parts they share (passes.py) are imported. And
what is checked before a model's first experiment (its grids' texts and lengths)."""
# How the forwards are batched, cached and budgeted is the engine's business; these functions only
# say what the protocol asks for and assemble results.
from __future__ import annotations

import numpy as np
import torch

from ..engine.forward import Engine
from ..verdicts.kinds import Kind
from ..verdicts.results import MARKER_CONDITIONS, HostResult, MarkerResult
from .grids import Grid
from .markers import hits
from .passes import (HOST_WINDOW, bare_prompts, cost_record, generate_at_p_last, pass_for,
                     teacher_forced, xy_target)
from .prompts import CONDITIONS, N_REF, mid_layer, multilayer_sets, render
from .work import generation_work

# run/compute.py calls every kind's function through this module, read when it runs (so a test
# may replace one for a run, tests/test_experiment_failures.py): markers and host_injection below,
# and these, by kind: Kind.SWEEP, Kind.STEERING, Shared.RESIDUALS, Shared.TARGET.
from .passes import p_last_residuals, xy_target  # noqa: E402, F401  the parts 2-4 share
from .steering import steering  # noqa: E402, F401
from .sweep import sweep  # noqa: E402, F401


MARKER_TOKENS = 80
# The tokens each kind scores or generates after a prompt (what must fit the model's context).
GENERATED = {Kind.SWEEP: N_REF, Kind.MARKERS: MARKER_TOKENS, Kind.HOST: HOST_WINDOW}


def special_tokens_in(lm, grid: Grid) -> str | None:
    """Why the grid's texts cannot be the user message of this model's prompts (None: they can):
    a text holding one of its tokenizer's special tokens (`<|im_end|>`, `<eot>`) would end the
    user turn or open another, and the prompt would not be the protocol's single user message."""
    specials = [t for t in getattr(lm.tokenizer, "all_special_tokens", ()) if t]
    texts = {"baseline.persona": grid.baseline_persona, "baseline.task": grid.baseline_task,
             **{f"personas.{k}": v for k, v in grid.personas.items()},
             **{f"tasks.{k}": v for k, v in grid.tasks.items()}}
    for where, text in texts.items():
        found = next((t for t in specials if t in text), None)
        if found:
            return (f"grid {grid.key}: {where} holds {found!r}, a special token of "
                    f"{lm.name}'s tokenizer: the prompt would not be one user message; "
                    "remove it from the grid")
    return None


def too_long(lm, grid: Grid) -> str | None:
    """Why the grid's prompts do not fit the model's context (None: they fit), naming the longest
    cell, its prompt length and the tokens the grid's experiments generate after it. Checked
    before any experiment: positions beyond the context give numbers, not an error."""
    context = getattr(lm.model.config, "max_position_embeddings", None)
    extra = max(n for kind, n in GENERATED.items() if kind in grid.experiments)
    if not context:
        return None
    worst = max(((len(render(lm.tokenizer, grid.user_text(cell, c), lm.template).ids), cell.id, c)
                 for cell in grid.cells for c in (*CONDITIONS, "bare")), default=None)
    if worst and worst[0] + extra > context:
        return (f"grid {grid.key}: the {worst[2]} prompt of cell {worst[1]} has {worst[0]:,} "
                f"tokens, and the grid's experiments generate {extra} more, beyond the model's "
                f"context of {context:,} positions; shorten the grid's texts or use a model with "
                "a longer context")
    return None


def markers(eng: Engine, grid: Grid, *, stems=(), residuals=None, layer: int | None = None,
            n_new: int = MARKER_TOKENS) -> MarkerResult:
    """Experiment 2: greedy generations, clean / additive / remove-X / bare, substitutions at
    (mid layer, p_last) during the prompt pass only; persona markers counted in each text."""
    lm, since = eng.lm, eng.audit.record()
    layer = mid_layer(lm.n_layers) if layer is None else layer
    bares = bare_prompts(lm, grid)
    rows = 3 * len(grid.cells) + len(set(bares))  # clean, additive, remove-X; each bare once
    passed, (prompts, h) = pass_for(eng, grid, residuals=residuals, conditions=("XY",),
                                     extra=bares, then=generation_work(rows, n_new, lm.n_layers))
    rows: list[tuple[tuple[int, ...], torch.Tensor | None]] = []  # (prompt, vector at p_last)
    for ci, (cp, bare) in enumerate(zip(prompts, bares)):
        bb, xb, by, hxy = (h[ci, i, layer] for i in range(4))
        xy = tuple(cp["XY"].ids)
        rows += [(xy, None), (xy, xb + by - bb), (xy, hxy - (xb - bb)), (bare, None)]
    out = generate_at_p_last(eng, rows, layer, n_new, passed)
    texts, tokens, found = {}, {}, {}
    for ci, cell in enumerate(grid.cells):
        words = grid.markers[cell.persona_key]
        texts[cell.id], tokens[cell.id], found[cell.id] = {}, {}, {}
        for k, cond in enumerate(MARKER_CONDITIONS):
            toks = out[ci * len(MARKER_CONDITIONS) + k]
            text = lm.tokenizer.decode(toks, skip_special_tokens=True)
            texts[cell.id][cond], tokens[cell.id][cond] = text, toks
            found[cell.id][cond] = hits(text, words, stems)
    return MarkerResult(lm.name, grid.name, layer, n_new, tuple(c.id for c in grid.cells),
                        texts, tokens, found, tuple(stems), cost_record(eng), grid.sha256,
                        eng.audit.expect(2 * len(grid.cells), Kind.MARKERS, since), **grid.design)


def host_injection(eng: Engine, grid: Grid, *, residuals=None, target=None,
                   layer=None) -> HostResult:
    """Experiments 3 and 4: KL(target || host) without and with injected vectors."""
    # Target: the clean XY prompt and its 10 greedy tokens. Host: the BY prompt (`As a thoughtful
    # person, {task}`) teacher-forced on the same tokens. KL(target || host) with no intervention,
    # with h_XY (oracle) or h_BB + dX + dY (cached) at (mid, p_last), and with the additive
    # prediction of every layer of each of the paper's layer sets (mapped to this depth) at once.
    lm, since = eng.lm, eng.audit.record()
    layer = mid_layer(lm.n_layers) if layer is None else layer
    sets = multilayer_sets(lm.n_layers)
    wanted = ("BY",) if target else ("XY", "BY")
    n, depth = len(grid.cells), lm.n_layers
    scored = 2 * (depth - layer) + sum(depth - (min(s) or depth) for s in sets)
    then = n * HOST_WINDOW * (depth + scored + (0 if target else depth))
    passed, (prompts, h) = pass_for(eng, grid, residuals=residuals, conditions=wanted, then=then)
    additive = h[:, 1] + h[:, 2] - h[:, 0]  # [cell, layer, d]
    target = target or xy_target(eng, grid, prompts, passed)
    runs = []  # (cell, substitutions): oracle, cached, then each layer set
    for ci in range(len(prompts)):
        runs += [(ci, [(layer, h[ci, 3, layer])]), (ci, [(layer, additive[ci, layer])])]
        runs += [(ci, [(m, additive[ci, m]) for m in s]) for s in sets]
    plain, scored = teacher_forced(eng, prompts, "BY", target, runs, passed)
    names = ["host", "oracle", "cached"] + ["layers " + ",".join(map(str, s)) for s in sets]
    kls = np.concatenate([plain[:, None], scored.reshape(len(prompts), -1)], axis=1)
    cells = [c.id for c in grid.cells]
    kl = {cell: {name: float(kls[i, j]) for j, name in enumerate(names)}
          for i, cell in enumerate(cells)}
    return HostResult(lm.name, grid.name, layer, sets, tuple(cells), kl,
                      dict(zip(cells, target.tokens)), cost_record(eng), grid.sha256,
                      eng.audit.expect(sum(len(s) for _, s in runs), "host injection",
                                       since), **grid.design)
