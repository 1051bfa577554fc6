"""Experiments 2, 3 and 4 the way the paper's scripts run them: one row at a time, no reuse."""
# The baseline of benchmarks/test_bench_paperway.py (the sweep's is plans.NaivePlan). It computes
# what experiments.markers and experiments.host_injection compute (same prompts, same substitution
# vectors at (mid layer, p_last), same greedy tokens, same KL definitions) with the paper's
# scripts' shape of work (scripts/v17_behavioral_markers.py, v14b_v2_inject.py,
# v14e_multilayer_inject.py): a full forward per distinct prompt for the residuals, and per run
# one single-row call from scratch: `model.generate(do_sample=False)` (a KV cache, one row) for
# generations, one full forward of prompt + window for each teacher-forced window. Nothing is
# batched, no prefix is shared between calls. It only calls Engine primitives with one row each,
# so the Engine's cost counters count its work exactly as they count lac's.
# Where the scripts are more wasteful still (v14e re-generates the target once per layer set and
# once more for the host baseline), this module does each target once: the baseline it sets is,
# if anything, faster than the scripts.
from __future__ import annotations

import torch

from lac_core.engine.forward import Engine, Sub, kl_sum
from lac_core.protocol.experiments import MARKER_TOKENS
from lac_core.protocol.passes import HOST_WINDOW, cost_record, render_cell
from lac_core.protocol.grids import Grid
from lac_core.protocol.markers import hits
from lac_core.protocol.prompts import CONDITIONS, mid_layer, multilayer_sets, render
from lac_core.verdicts.results import MARKER_CONDITIONS, HostResult, MarkerResult


def p_last_residuals(eng: Engine, grid: Grid):
    """Each cell's four prompts and, per distinct prompt, its residuals at p_last [layer, d]: one
    full forward each (the scripts' get_residuals, which also run each distinct prompt once)."""
    prompts = [render_cell(eng.lm, grid, cell) for cell in grid.cells]
    h: dict[tuple[int, ...], torch.Tensor] = {}
    for cp in prompts:
        for c in CONDITIONS:
            ids = cp[c].ids
            if ids not in h:
                h[ids] = eng.capture([list(ids)], [[cp[c].p_last]])[0, :, 0]
    return prompts, h


def markers(eng: Engine, grid: Grid, *, stems=(), layer: int | None = None,
            n_new: int = MARKER_TOKENS) -> MarkerResult:
    """Experiment 2: per cell four greedy generations of one row each, substitution (if any) at
    (layer, p_last) during the prompt pass only; stops at EOS as generate() does for one row."""
    lm = eng.lm
    layer = mid_layer(lm.n_layers) if layer is None else layer
    prompts, h = p_last_residuals(eng, grid)
    texts, tokens, found = {}, {}, {}
    for cell, cp in zip(grid.cells, prompts):
        bb, xb, by, hxy = (h[cp[c].ids][layer] for c in CONDITIONS)
        xy = list(cp["XY"].ids)
        bare = list(render(lm.tokenizer, grid.user_text(cell, "bare"), lm.template).ids)
        # experiments.markers' own float32 expressions (its residuals come from batched captures,
        # so the vectors can still differ in the last bits).
        runs = [(xy, None), (xy, xb + by - bb), (xy, hxy - (xb - bb)), (bare, None)]
        texts[cell.id], tokens[cell.id], found[cell.id] = {}, {}, {}
        for cond, (ids, vec) in zip(MARKER_CONDITIONS, runs):
            subs = None if vec is None else [[Sub(layer, len(ids) - 1, vec)]]  # p_last
            toks = eng.generate([ids], n_new, subs=subs, stop_at_eos=True).tokens[0]
            text = lm.tokenizer.decode(toks, skip_special_tokens=True)
            texts[cell.id][cond], tokens[cell.id][cond] = text, toks
            found[cell.id][cond] = hits(text, grid.markers[cell.persona_key], stems)
    return MarkerResult(lm.spec.name, grid.name, layer, n_new, tuple(c.id for c in grid.cells),
                        texts, tokens, found, tuple(stems), cost_record(eng), grid.sha256,
                        **grid.design)


def host_injection(eng: Engine, grid: Grid, *, layer: int | None = None) -> HostResult:
    """Experiments 3 and 4: per cell the target's 10 greedy tokens (one generate), its window
    log-probs (one full forward of prompt + window, as the scripts' get_logp), then one full
    forward of the host prompt + window per intervention: none, oracle h_XY, cached h_BB + dX + dY
    at (layer, p_last), and the additive prediction at every layer of each layer set at once."""
    lm = eng.lm
    layer = mid_layer(lm.n_layers) if layer is None else layer
    sets = multilayer_sets(lm.n_layers)
    names = ["host", "oracle", "cached"] + ["layers " + ",".join(map(str, s)) for s in sets]
    prompts, h = p_last_residuals(eng, grid)
    kl, targets = {}, {}
    for cell, cp in zip(grid.cells, prompts):
        bb, xb, by, hxy = (h[cp[c].ids] for c in CONDITIONS)  # [layer, d] each
        additive = xb + by - bb  # experiments.host_injection's own expression
        xy, host, p = list(cp["XY"].ids), list(cp["BY"].ids), cp["BY"].p_last
        ref = eng.generate([xy], HOST_WINDOW).tokens[0]
        # Window step k scores ref[k] from position p_last + k: prompt + ref[0:9], last 10 kept.
        target = eng.prefill([xy + ref[:-1]], keep=HOST_WINDOW).logprobs
        runs = [[], [Sub(layer, p, hxy[layer])], [Sub(layer, p, additive[layer])]]
        runs += [[Sub(m, p, additive[m]) for m in s] for s in sets]
        kl[cell.id] = {name: float(kl_sum(target, eng.prefill([host + ref[:-1]], subs=[run],
                                                               keep=HOST_WINDOW).logprobs))
                       for name, run in zip(names, runs)}
        targets[cell.id] = ref
    return HostResult(lm.spec.name, grid.name, layer, sets, tuple(c.id for c in grid.cells), kl,
                      targets, cost_record(eng), grid.sha256, **grid.design)
