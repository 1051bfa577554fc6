"""Experiment 1, the localized sweep: geometry at every layer and the window KL of the additive
and null substitutions at each probe and swept layer; and its every-run invariance checks."""
from __future__ import annotations

import numpy as np
import torch

from ..engine.crosscheck import expect_close, own_hidden_states, own_substituted
from ..engine.forward import Engine, Sub
from ..errors import InvarianceError, NonFiniteResidualError
from ..verdicts.metrics import geometry
from ..verdicts.results import GEOMETRY_STATS, SweepResult
from ..verdicts.kinds import Kind
from .grids import Grid
from .passes import cost_record, render_cell
from .plans import PLANS, floor_tokens, in_cell_chunks
from .prompts import CONDITIONS, FORCED, N_REF, PROBES, WINDOW, swept_layers, window_start
from .work import sweep_work


def sweep(eng: Engine, grid: Grid, *, layers=None, probes=PROBES, plan="fast",
          metrics=()) -> SweepResult:
    """Experiment 1: geometry at every layer, and the window KL with h_BB + dX + dY (additive) or
    h_BB alone (null) substituted at each probe and swept layer of the clean XY sequence.
    `metrics`: users' claims.CellMetric, computed over the same residuals beside the geometry."""
    lm, since = eng.lm, eng.audit.record()
    layers = swept_layers(lm.n_layers, layers)
    probes = tuple(probes)
    cells = grid.cells
    prompts = [render_cell(lm, grid, cell) for cell in cells]
    eng.expect(sweep_work(prompts, probes, layers, lm.n_layers, plan))
    refs, h, kl, sites = sweep_runs(plan, eng, prompts, probes, layers)
    _finite(kl, [c.id for c in cells], probes, layers)
    crossed = cross_checks(Engine(lm, eng.token_budget), cells[0].id, prompts[0], refs[0], h[0],
                           probes, layers)
    checks = invariance_checks(Engine(lm, eng.token_budget, work=eng.work), plan, prompts, probes,
                               layers, refs, kl)
    checks["cross"] = crossed
    bb, xb, by, xy = (h[:, i].numpy() for i in range(4))
    geo = geometry(bb, xb, by, xy)  # stat -> [cell, layer, probe]
    geo.update((m.name, m.values(bb, xb, by, xy)) for m in metrics)
    geo = {s: np.transpose(geo[s], (0, 2, 1))  # -> [cell, probe, layer]
           for s in (*GEOMETRY_STATS, *(m.name for m in metrics))}
    references = {cell.id: {"tokens": r, "text": lm.tokenizer.decode(r),
                            "eos_in_reference": lm.tokenizer.eos_token_id in r}
                  for cell, r in zip(cells, refs)}
    floor, floor_layers = floor_tokens(prompts, refs, sites, WINDOW, layers, lm.n_layers, FORCED)
    return SweepResult(
        model=lm.name, grid=grid.name, n_layers=lm.n_layers, layers=layers, probes=probes,
        cells=tuple(c.id for c in cells), kl_add=kl["additive"], kl_null=kl["null"], geometry=geo,
        references=references, plan=plan,
        cost=cost_record(eng, floor_tokens=floor, floor_layer_tokens=floor_layers),
        grid_sha256=grid.sha256, checks=checks,
        audit=eng.audit.expect(2 * kl["additive"].size, Kind.SWEEP, since), **grid.design)


def sweep_runs(plan: str, eng: Engine, prompts, probes, layers, identity: bool = False):
    """References, residuals [cell, condition, layer, probe, d], window KLs of the additive and
    null substitutions (and of h_XY written back over itself), and the sites; per chunk of cells
    (plans.in_cell_chunks), joined in cell order."""
    parts = in_cell_chunks(eng, len(prompts), lambda cells: chunk_runs(
        PLANS[plan](eng, prompts[cells.start: cells.stop], probes),
        prompts[cells.start: cells.stop], probes, layers, identity))
    kl = {name: np.concatenate([p[2][name] for p in parts]) for name in parts[0][2]}
    return ([r for p in parts for r in p[0]], torch.cat([p[1] for p in parts]), kl,
            [s for p in parts for s in p[3]])


def chunk_runs(run, prompts, probes, layers, identity: bool):
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


def invariance_checks(eng: Engine, plan: str, prompts, probes, layers, refs, kl) -> dict:
    """Run the first cell alone (batch invariance) with the identity substitution too; stop the
    run with what differed if either check fails."""
    atol, rtol, median = INVARIANCE[eng.lm.dtype]
    alone_refs, _, alone, _ = sweep_runs(plan, eng, prompts[:1], probes, layers, identity=True)
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


# Capture and substitution against paths that share no code with the hooks (engine/crosscheck.py),
# on the first cell, once per sweep. Exact (tolerance 0): lac's own single-row capture and
# substituted prefill against the model's output_hidden_states and a write by a separate hook on
# the layer below: equal bit for bit on tiny Llama, Qwen2, Gemma2, Gemma3, SmolLM2-135M and
# Qwen2.5-Coder-0.5B (float32 and bfloat16, example grid). Within SWEEP_CAPTURE: the residuals
# the sweep itself used, which its plan computes batched, after shared prefixes and (g1, g2 of
# XY) in KV-cached decode steps, not in one full forward. Measured relative differences per
# vector |h_sweep - h_own| / |h_own|, float32: <= 2.9e-6 on the tiny models (example grid,
# first cell), <= 1.3e-6 on SmolLM2-135M (all 9 example cells), 9.0e-7 on Qwen2.5-Coder-0.5B
# (example, first cell); bfloat16: <= 0.019 on SmolLM2 (all 12 short cells), 0.0116 on Qwen2.5
# (example, first cell). A capture scaled by 1.01 is 1e-2 off (caught in every dtype by the
# exact check), a layer or a position off far more.
SWEEP_CAPTURE = {torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.1}


def cross_checks(eng: Engine, cell: str, prompts: dict, ref: list[int], h: torch.Tensor, probes,
                 layers) -> dict:
    """The first cell's captures (every condition, layer and probe: lac's capture exactly, the
    sweep's `h` [condition, layer, probe, d] within SWEEP_CAPTURE) against the model's own hidden
    states, and a known vector substituted at p_last of its XY sequence at each swept layer
    against a write made without lac's hooks; a miss stops the sweep (CrossCheckError). `eng` is
    the checks' own, so the sweep's cost and audit stay as they were."""
    lm, tolerance = eng.lm, SWEEP_CAPTURE[eng.lm.dtype]
    worst = {"capture": 0.0, "sweep_capture": 0.0, "substitution": 0.0}
    seqs = {c: list(prompts[c].ids) + ref[:FORCED] for c in CONDITIONS}
    own = {c: own_hidden_states(lm, seqs[c]) for c in CONDITIONS}  # [layer, position, d]
    at = {c: [prompts[c].position(p) for p in probes] for c in CONDITIONS}

    def place(c):  # (layer, probe) index -> the place, named
        return lambda i: (f"layer {i[0]}, position {at[c][i[1]]} ({probes[i[1]]}) of the {c} "
                          f"prompt of cell {cell}", i[0], at[c][i[1]])
    # lac's capture of one plain forward, the same computation: exact; then what the sweep used
    worst["capture"] = expect_close("capture check", eng.capture([seqs["XY"]], [at["XY"]])[0],
                                    own["XY"][:, at["XY"]], 0.0, place("XY"))
    for k, c in enumerate(CONDITIONS):
        worst["sweep_capture"] = max(worst["sweep_capture"], expect_close(
            "sweep capture check", h[k], own[c][:, at[c]], tolerance, place(c)))
    seq, p = seqs["XY"], prompts["XY"].p_last
    keep = len(seq) - p  # p_last, g1, g2: what a write at p_last changes
    vectors = {layer: own["XY"][layer, p - 1] for layer in layers}  # real ones, not those at p

    def substituted(layer_ids):  # lac's write and the separate one, at layer_ids at once
        subs = [[Sub(layer, p, vectors[layer]) for layer in layer_ids]]
        return (eng.prefill([seq], subs=subs, keep=keep).logprobs[0],
                own_substituted(lm, seq, p, {layer: vectors[layer] for layer in layer_ids}, keep))

    def where(layer_ids):
        return lambda i: (f"layer{'s' * (len(layer_ids) > 1)} {', '.join(map(str, layer_ids))}, "
                          f"position {p} (p_last) of the XY prompt of cell {cell}",
                          layer_ids[0], p)
    joint = substituted(layers)  # every swept layer in one forward; one alone names the culprit
    if not torch.equal(*joint):
        for layer in layers:
            expect_close("substitution check", *substituted([layer]), 0.0, where([layer]))
    worst["substitution"] = expect_close("substitution check", *joint, 0.0, where(list(layers)))
    return {"cell": cell, "max_relative_difference": worst,
            "tolerance": {"capture": 0.0, "sweep_capture": tolerance, "substitution": 0.0},
            "substitution_layers": list(layers), "forward_tokens": eng.cost.tokens}
