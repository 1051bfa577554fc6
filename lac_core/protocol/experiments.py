"""The paper's experiments: which prompts, conditions, positions and substitutions each computes."""
# How the forwards are batched, cached and budgeted is the engine's (and, for the sweep, the
# plan's) business; these functions only say what the protocol asks for and assemble results.
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.forward import Engine, State, Sub
from ..errors import InvarianceError, NonFiniteResidualError
from .markers import hits
from ..verdicts.metrics import geometry
from .plans import PLANS, distinct, floor_tokens, in_cell_chunks
from ..engine.prefixes import layout
from .grids import Grid
from .prompts import (CONDITIONS, N_REF, PROBES, WINDOW, Rendered, mid_layer, multilayer_sets,
                      render, swept_layers)
from ..verdicts.results import GEOMETRY_STATS, MARKER_CONDITIONS, HostResult, MarkerResult, SweepResult

WINDOW_OFFSET = {"p_user_last": 0, "p_last": 0, "g1": 1, "g2": 2}  # window start = p_last + offset
FORCED = 2  # g1, g2 exist in every condition: the XY reference's r[0:2] is appended to each
MARKER_TOKENS = 80
HOST_WINDOW = 10


def window_start(rendered: Rendered, probe: str) -> int:
    """First position scored: r[0:10] for p_last and p_user_last, r[1:11] g1, r[2:12] g2."""
    return rendered.p_last + WINDOW_OFFSET[probe]


def render_cell(lm, grid: Grid, cell) -> dict[str, Rendered]:
    return {c: render(lm.tokenizer, grid.user_text(cell, c), lm.template) for c in CONDITIONS}


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
                    f"{lm.spec.name}'s tokenizer: the prompt would not be one user message; "
                    "remove it from the grid")
    return None


def too_long(lm, grid: Grid) -> str | None:
    """Why the grid's prompts do not fit the model's context (None: they fit), naming the longest
    cell, its prompt length and the tokens the grid's experiments generate after it. Checked
    before any experiment: positions beyond the context give numbers, not an error."""
    context = getattr(lm.model.config, "max_position_embeddings", None)
    extra = max(n for kind, n in (("sweep", N_REF), ("markers", MARKER_TOKENS),
                                  ("host", HOST_WINDOW)) if kind in grid.experiments)
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


# The work each experiment plans, in token-layers (positions x layers run), for its time-left
# estimate (engine.Work): estimates from the prompts' lengths, following what the plans run;
# they need not be exact, only proportional to the time within a small factor.
def pass_work(seqs, n_layers: int) -> int:
    """One prompt pass over the distinct `seqs`, shared prefixes once, as the engine lays them
    out (prefixes.layout)."""
    keys = [list(k) for k in dict.fromkeys(tuple(s) for s in seqs)]
    if not keys:
        return 0
    return layout(keys, 1).positions([len(k) for k in keys]) * n_layers


def _windows_work(prompts, probes, layers, n_layers: int, runs: int) -> int:
    return runs * sum((window_start(cp["XY"], p) + WINDOW - cp["XY"].position(p)) * (n_layers - k)
                      for cp in prompts for p in probes for k in layers)


def sweep_work(prompts, probes, layers, n_layers: int, plan: str) -> int:
    """The reference pass and its 11 decode steps, the other conditions' prompts and their
    forced tokens, two substituted runs per site from its layer up; and all of that again for
    the first cell alone (with the identity runs). The naive plan runs every site in full."""
    def one(cells, runs):
        if plan == "naive":
            return sum((len(cp["XY"].ids) + N_REF) * n_layers * (1 + 4) + sum(
                (window_start(cp["XY"], p) + WINDOW) * n_layers * (1 + runs * len(layers))
                for p in probes) for cp in cells)
        others = [cp[c].ids for cp in cells for c in CONDITIONS if c != "XY"]
        return (pass_work([cp["XY"].ids for cp in cells], n_layers)
                + len(cells) * (N_REF - 1 + 3 * FORCED) * n_layers + pass_work(others, n_layers)
                + _windows_work(cells, probes, layers, n_layers, runs))
    return one(prompts, 2) + one(prompts[:1], 4)


def generation_work(rows: int, n_new: int, n_layers: int) -> int:
    return rows * n_new * n_layers


def _cost(eng: Engine, **extra) -> dict:
    """The work an experiment pushed through the model (its time is the session's: run block)."""
    return {"forward_tokens": eng.cost.tokens, "forward_layer_tokens": eng.cost.layer_tokens,
            "forward_calls": eng.cost.calls, **extra}


def sweep(eng: Engine, grid: Grid, *, layers=None, probes=PROBES, plan="fast") -> SweepResult:
    """Experiment 1: geometry at every layer, and the window KL with h_BB + dX + dY (additive) or
    h_BB alone (null) substituted at each probe and swept layer of the clean XY sequence."""
    lm, since = eng.lm, eng.audit.record()
    layers = swept_layers(lm.n_layers, layers)
    probes = tuple(probes)
    cells = grid.cells
    prompts = [render_cell(lm, grid, cell) for cell in cells]
    eng.expect(sweep_work(prompts, probes, layers, lm.n_layers, plan))
    refs, h, kl, sites = _sweep_runs(plan, eng, prompts, probes, layers)
    _finite(kl, [c.id for c in cells], probes, layers)
    checks = _invariance(Engine(lm, eng.token_budget, work=eng.work), plan, prompts, probes, layers,
                         refs, kl)
    bb, xb, by, xy = (h[:, i].numpy() for i in range(4))
    geo = geometry(bb, xb, by, xy)  # stat -> [cell, layer, probe]
    geo = {s: np.transpose(geo[s], (0, 2, 1)) for s in GEOMETRY_STATS}  # -> [cell, probe, layer]
    references = {cell.id: {"tokens": r, "text": lm.tokenizer.decode(r),
                            "eos_in_reference": lm.tokenizer.eos_token_id in r}
                  for cell, r in zip(cells, refs)}
    floor, floor_layers = floor_tokens(prompts, refs, sites, WINDOW, layers, lm.n_layers, FORCED)
    return SweepResult(
        model=lm.spec.name, grid=grid.name, n_layers=lm.n_layers, layers=layers, probes=probes,
        cells=tuple(c.id for c in cells), kl_add=kl["additive"], kl_null=kl["null"], geometry=geo,
        references=references, plan=plan,
        cost=_cost(eng, floor_tokens=floor, floor_layer_tokens=floor_layers),
        grid_sha256=grid.sha256, checks=checks,
        audit=eng.audit.expect(2 * kl["additive"].size, "sweep", since))


def _sweep_runs(plan: str, eng: Engine, prompts, probes, layers, identity: bool = False):
    """References, residuals [cell, condition, layer, probe, d], window KLs of the additive and
    null substitutions (and of h_XY written back over itself), and the sites; per chunk of cells
    (plans.in_cell_chunks), joined in cell order."""
    parts = in_cell_chunks(eng, len(prompts), lambda cells: _chunk_runs(
        PLANS[plan](eng, prompts[cells.start: cells.stop], probes),
        prompts[cells.start: cells.stop], probes, layers, identity))
    kl = {name: np.concatenate([p[2][name] for p in parts]) for name in parts[0][2]}
    return ([r for p in parts for r in p[0]], torch.cat([p[1] for p in parts]), kl,
            [s for p in parts for s in p[3]])


def _chunk_runs(run, prompts, probes, layers, identity: bool):
    """One chunk of cells: its references, residuals, window KLs and sites."""
    refs = run.references(N_REF)
    h = run.residuals(FORCED)
    vectors = {"additive": h[:, 1] + h[:, 2] - h[:, 0], "null": h[:, 0]}  # h_BB + dX + dY, float32
    seqs = [list(cp["XY"].ids) + r[: N_REF - 1] for cp, r in zip(prompts, refs)]
    sites = [[(cp["XY"].position(p), window_start(cp["XY"], p)) for p in probes] for cp in prompts]
    kl = run.window_kls(seqs, sites, WINDOW, layers, vectors)
    if identity:  # like with like: against the same path without any substitution
        kl.update(run.window_kls(seqs, sites, WINDOW, layers, {"identity": h[:, 3]},
                                 same_path=True))
    return refs, h, kl, sites


def _finite(kl: dict, cells, probes, layers) -> None:
    """Stop at the first non-finite KL, naming its cell, probe and layer: a NaN never reaches a
    median (nor results.json)."""
    for name, arr in kl.items():
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            ci, pi, li = bad[0]
            raise NonFiniteResidualError(
                f"non-finite {name} KL ({arr[ci, pi, li]}) at cell {cells[ci]}, probe "
                f"{probes[pi]}, layer {layers[li]}; run in float32 or bfloat16 (float16 overflows "
                "on many models)")


# Batch invariance: the first cell alone against inside the run's batches, every |dKL| <= atol +
# rtol x KL, and in half precision also the median |dKL| <= `median`. In float32 the batch moves
# KLs by float rounding only (<= 2e-5 + 1e-3 KL). In bfloat16 the batch's shape changes each
# matmul's rounding: measured on SmolLM2-135M (example, short, long grids) and Qwen2.5-Coder-0.5B
# (example, short), |dKL| reached 0.125 nats (at KL 0.99), 0.10 (at KL 2.4), 0.068 (at KL 0.56),
# with medians 0.002-0.008; a real batching bug (positions off by one) moved the median to
# 0.04-0.12 and single KLs by up to 0.69 on SmolLM2. The identity check has no tolerance in any
# dtype: h_XY written back over itself is scored against the same path run without it (KL 0).
INVARIANCE = {torch.float32: (2e-5, 1e-3, None), torch.bfloat16: (0.15, 0.05, 0.02),
              torch.float16: (0.15, 0.05, 0.02)}


def _invariance(eng: Engine, plan: str, prompts, probes, layers, refs, kl) -> dict:
    """Run the first cell alone (batch invariance) with the identity substitution too; stop the
    run with what differed if either check fails."""
    atol, rtol, median = INVARIANCE[eng.lm.dtype]
    alone_refs, _, alone, _ = _sweep_runs(plan, eng, prompts[:1], probes, layers, identity=True)
    diff = {k: np.abs(alone[k][0] - kl[k][0]) for k in ("additive", "null")}
    dkl = max(float(np.max(d - rtol * np.abs(kl[k][0]))) for k, d in diff.items())
    typical = max(float(np.median(d)) for d in diff.values())
    worst_identity = float(np.max(np.abs(alone["identity"])))
    checks = {"batch_invariance_excess": dkl, "batch_invariance_median": typical,
              "tokens_equal": alone_refs[0] == refs[0], "identity_max_kl": worst_identity,
              "tolerance": {"atol": atol, "rtol": rtol, "median": median, "identity": 0.0},
              "forward_tokens": eng.cost.tokens, "audit": eng.audit.record()}
    if not checks["tokens_equal"] or dkl > atol or worst_identity != 0.0 or (
            median is not None and typical > median):
        raise InvarianceError("the first cell computed alone differs from the same cell in the "
                              "run's batch, or an identity substitution moved the output: "
                              f"{checks}")
    return checks


@dataclass(frozen=True)
class PromptPass:
    """Distinct whole prompts run once (left-padded: every p_last at one column), kept so that
    the experiments that need a prompt (residuals, generations, teacher-forced windows) continue
    it from p_last instead of running it again; and the residuals entering each layer there."""

    state: State
    row: dict[tuple[int, ...], int]  # prompt ids -> its row
    column: int  # p_last's column
    residuals: torch.Tensor  # [row, layer, d] float32

    def after(self, seqs) -> tuple[State, list[int], int]:
        """`Engine.prefill(after=...)` for continuations of `seqs` from their p_last."""
        return self.state, [self.row[tuple(s)] for s in seqs], self.column


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


def _pass_for(eng: Engine, grid: Grid, *, residuals, conditions, extra=(), then: int = 0):
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


def markers(eng: Engine, grid: Grid, *, stems=(), residuals=None, layer: int | None = None,
            n_new: int = MARKER_TOKENS) -> MarkerResult:
    """Experiment 2: greedy generations, clean / additive / remove-X / bare, substitutions at
    (mid layer, p_last) during the prompt pass only; persona markers counted in each text."""
    lm, since = eng.lm, eng.audit.record()
    layer = mid_layer(lm.n_layers) if layer is None else layer
    bares = bare_prompts(lm, grid)
    rows = 3 * len(grid.cells) + len(set(bares))  # clean, additive, remove-X; each bare once
    passed, (prompts, h) = _pass_for(eng, grid, residuals=residuals, conditions=("XY",),
                                     extra=bares, then=generation_work(rows, n_new, lm.n_layers))
    rows: list[tuple[tuple[int, ...], torch.Tensor | None]] = []  # (prompt, vector at p_last)
    for ci, (cp, bare) in enumerate(zip(prompts, bares)):
        bb, xb, by, hxy = (h[ci, i, layer] for i in range(4))
        xy = tuple(cp["XY"].ids)
        rows += [(xy, None), (xy, xb + by - bb), (xy, hxy - (xb - bb)), (bare, None)]
    out = _generate_at_p_last(eng, rows, layer, n_new, passed)
    texts, tokens, found = {}, {}, {}
    for ci, cell in enumerate(grid.cells):
        words = grid.markers[cell.persona_key]
        texts[cell.id], tokens[cell.id], found[cell.id] = {}, {}, {}
        for k, cond in enumerate(MARKER_CONDITIONS):
            toks = out[ci * len(MARKER_CONDITIONS) + k]
            text = lm.tokenizer.decode(toks, skip_special_tokens=True)
            texts[cell.id][cond], tokens[cell.id][cond] = text, toks
            found[cell.id][cond] = hits(text, words, stems)
    return MarkerResult(lm.spec.name, grid.name, layer, n_new, tuple(c.id for c in grid.cells),
                        texts, tokens, found, tuple(stems), _cost(eng), grid.sha256,
                        eng.audit.expect(2 * len(grid.cells), "markers", since))


def _generate_at_p_last(eng: Engine, rows, layer: int, n_new: int,
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
    passed, (prompts, h) = _pass_for(eng, grid, residuals=residuals, conditions=wanted, then=then)
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
    return HostResult(lm.spec.name, grid.name, layer, sets, tuple(cells), kl,
                      dict(zip(cells, target.tokens)), _cost(eng), grid.sha256,
                      eng.audit.expect(sum(len(s) for _, s in runs), "host injection",
                                       since))


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
    state, row, column = (passed or prompt_pass(eng, seqs)).after(seqs)
    # position 0 of each continuation is p_last, then the target's first tokens
    suffixes = [[cp[condition].ids[-1]] + target.tokens[ci][: HOST_WINDOW - 1]
                for ci, cp in enumerate(prompts)]
    against = list(target.logprobs)
    plain = eng.prefill(suffixes, after=(state, row, column), keep=HOST_WINDOW,
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
                         after=(state, [row[ci] for ci in cells], column),
                         against=[against[ci] for ci in cells], **kw).kl
        scored[ks] = kl.numpy()
    return plain.kl.numpy(), scored
