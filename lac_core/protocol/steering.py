"""Beyond the paper: how much persona a vector carries, at the marker site (mid layer, p_last).
Dose: the additive vector plus (a - 1) dX. Swap: h_AY - dX_A + dX_B, persona A's delta traded
for another persona's. Each run is an 80-token greedy generation (markers counted) and a 10-token
window scored against the clean run (KL to clean)."""
# Same prompts, site and batching as experiment 2 (experiments.markers): a = 1 is the additive
# condition itself, so its generation is taken from the marker result, not run again; its KL is
# scored with the rest. dX does not depend on the task (the XB prompt names the baseline task),
# so persona B's delta is read from any cell of B.
from __future__ import annotations

from ..engine.forward import Engine
from .passes import (HOST_WINDOW, PromptPass, Target, cost_record, generate_at_p_last,
                     pass_for, teacher_forced, xy_target)
from .grids import Grid
from .markers import hits
from ..verdicts.results import MarkerResult, SteeringResult

DOSES = (0.0, 0.5, 1.0, 2.0)


def partners(grid: Grid, pairs="next") -> dict[str, list[str]]:
    """Persona A -> the personas B it is swapped with: the next in the grid's order (the last
    wraps to the first), every other one ("all"), or an explicit mapping."""
    if isinstance(pairs, dict):
        return pairs
    keys = list(grid.personas)
    if pairs == "all":
        return {a: [b for b in keys if b != a] for a in keys}
    return {a: [keys[(i + 1) % len(keys)]] for i, a in enumerate(keys)}


def dose_vector(additive, dx, a: float):
    """additive + (a - 1) dX: at a = 1 the additive vector bit for bit (adding zeros)."""
    return additive + (a - 1.0) * dx


def steering(eng: Engine, grid: Grid, marker_result: MarkerResult, *, residuals=None,
             target: Target | None = None, doses=DOSES, pairs="next", n_new: int | None = None,
             regenerate_a1: bool = False) -> SteeringResult:
    lm, layer, stems, since = eng.lm, marker_result.layer, marker_result.stems, eng.audit.record()
    n_new = marker_result.n_new_tokens if n_new is None else n_new
    cells, depth, swaps = grid.cells, lm.n_layers, partners(grid, pairs)
    per_cell = len(doses) + sum(len(swaps[c.persona_key]) for c in cells) / len(cells)
    then = len(cells) * ((per_cell - (0 if regenerate_a1 else 1)) * n_new * depth
                         + HOST_WINDOW * (per_cell * (depth - layer)
                                          + depth * (1 if target else 2)))
    passed, (prompts, h) = pass_for(eng, grid, residuals=residuals, conditions=("XY",),
                                     then=int(then))
    at = {}  # persona -> a cell of it
    for ci, cell in enumerate(cells):
        at.setdefault(cell.persona_key, ci)
    bb, xb, by, xy = (h[:, i, layer] for i in range(4))
    additive, dx = xb + by - bb, xb - bb  # the marker experiment's additive vector, same order
    runs = []  # (cell index, kind, a or B, vector): one per generated and scored row
    for ci, cell in enumerate(cells):
        runs += [(ci, "dose", a, dose_vector(additive[ci], dx[ci], a)) for a in doses]
        runs += [(ci, "swap", b, xy[ci] - dx[ci] + dx[at[b]]) for b in swaps[cell.persona_key]]
    per_cell = len(runs) // len(cells)
    if per_cell * len(cells) != len(runs):
        raise ValueError("every persona needs as many swap partners as every other")
    gen_rows = [(tuple(prompts[ci]["XY"].ids), vec) for ci, kind, a, vec in runs
                if regenerate_a1 or not (kind == "dose" and a == 1.0)]
    generated = iter(generate_at_p_last(eng, gen_rows, layer, n_new, passed))
    target = target or xy_target(eng, grid, prompts, passed)
    kls = _kl_to_clean(eng, prompts, runs, layer, target, passed)
    dose = {str(a): {} for a in doses}
    swap = []
    for k, (ci, kind, a, _vec) in enumerate(runs):
        cell = cells[ci]
        reuse = kind == "dose" and a == 1.0 and not regenerate_a1
        toks = marker_result.tokens[cell.id]["additive"] if reuse else next(generated)
        text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        own = hits(text, grid.markers[cell.persona_key], stems)
        kl = float(kls[k])
        if kind == "dose":
            dose[str(a)][cell.id] = {"tokens": toks, "text": text, "hits": own, "kl": kl}
            continue
        clean = marker_result.texts[cell.id]["clean"]
        swap.append({"cell": cell.id, "persona": cell.persona_key, "other": a, "tokens": toks,
                     "text": text, "own_hits": own,
                     "other_hits": hits(text, grid.markers[a], stems),
                     "clean_own_hits": marker_result.hits[cell.id]["clean"],
                     "clean_other_hits": hits(clean, grid.markers[a], stems), "kl": kl})
    return SteeringResult(lm.name, grid.name, layer, n_new, tuple(c.id for c in cells),
                          tuple(doses), "custom" if isinstance(pairs, dict) else pairs, dose, swap,
                          cost_record(eng), grid.sha256,
                          eng.audit.expect(len(gen_rows) + len(runs), "dose and swap", since))


def _kl_to_clean(eng: Engine, prompts, runs, layer: int, target: Target, passed: PromptPass):
    """KL(clean || run) over the clean run's first 10 greedy tokens, teacher-forced after the XY
    prompt with the run's vector at (layer, p_last): [run]."""
    scored = [(ci, [(layer, vec)]) for ci, *_, vec in runs]
    return teacher_forced(eng, prompts, "XY", target, scored, passed)[1]
