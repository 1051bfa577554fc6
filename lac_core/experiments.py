"""The paper's experiments as functions from (model, grid) to result records.

Experiment 1 has two execution plans that must agree: `naive` (one full forward
per site and cell, the way the paper's scripts run) is the oracle, `fast`
computes each distinct forward once: captures for all conditions, probes and
layers in right-padded batches; one greedy reference pass per cell whose KV
cache is reused as the clean prefix of every substituted run; all
substitutions of a (cell, probe) in one batch, computing only the positions
from the probe on.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import engine
from .hooks import Patch
from .metrics import geometry
from .models import LoadedModel
from .prompts import CONDITIONS, N_REF, PROBES, WINDOW, Grid, Rendered, layer_fractions_to_layers, render
from .results import GEOMETRY_STATS, HostResult, MarkerResult, SweepResult

WINDOW_OFFSET = {"p_user_last": 0, "p_last": 0, "g1": 1, "g2": 2}  # window start = p_last + offset


def window_start(rendered: Rendered, probe: str) -> int:
    """First position whose logits are scored: r[0:10] for p_last/p_user_last, r[1:11] g1, r[2:12] g2."""
    return rendered.p_last + WINDOW_OFFSET[probe]


def render_cell(lm: LoadedModel, grid: Grid, cell) -> dict[str, Rendered]:
    return {c: render(lm.tokenizer, grid.user_text(cell, c)) for c in CONDITIONS}


def _captures(lm, prompts, refs, probes, token_budget, batched):
    """Residuals at every layer and probe for every (cell, condition): [cell, cond, layer, probe, d]."""
    seqs, positions = [], []
    for cell_prompts, ref in zip(prompts, refs):
        for c in CONDITIONS:
            r = cell_prompts[c]
            seqs.append(list(r.ids) + ref[:2])  # teacher forcing on the clean XY continuation
            positions.append([r.position(p) for p in probes])
    if batched:
        h = engine.capture_residuals(lm, seqs, positions, token_budget=token_budget)
    else:
        h = torch.cat([engine.capture_residuals(lm, [s], [p]) for s, p in zip(seqs, positions)])
    return h.reshape(len(prompts), len(CONDITIONS), lm.n_layers, len(probes), lm.d_model)


def sweep(lm: LoadedModel, grid: Grid, *, layers=None, probes=PROBES, plan: str = "fast",
          token_budget: int = engine.DEFAULT_TOKEN_BUDGET) -> SweepResult:
    """Experiment 1: geometry at every layer and additive/null KL at the swept layers."""
    if plan not in ("fast", "naive"):
        raise ValueError(f"plan must be 'fast' or 'naive', got {plan!r}")
    t0 = time.perf_counter()
    start_tokens, start_calls = engine.COUNTER.tokens, engine.COUNTER.calls
    layers = tuple(layers or layer_fractions_to_layers(lm.n_layers))
    probes = tuple(probes)
    cells = grid.cells
    prompts = [render_cell(lm, grid, cell) for cell in cells]

    xy_prompts = [list(cp["XY"].ids) for cp in prompts]
    if plan == "fast":
        gen = engine.greedy(lm, xy_prompts, N_REF, keep_cache=True)  # one batched pass for all cells
        refs = gen.tokens
    else:
        refs = [engine.greedy(lm, [ids], N_REF)[0] for ids in xy_prompts]

    h = _captures(lm, prompts, refs, probes, token_budget, batched=plan == "fast")
    bb, xb, by, xy = (h[:, i].numpy() for i in range(4))
    geo = geometry(bb, xb, by, xy)  # stat -> [cell, layer, probe]
    geo = {s: np.transpose(geo[s], (0, 2, 1)) for s in GEOMETRY_STATS}  # -> [cell, probe, layer]
    additive = h[:, 1] + h[:, 2] - h[:, 0]  # h_BB + dX + dY = h_XB + h_BY - h_BB, in float32
    null = h[:, 0]

    kl_add = np.zeros((len(cells), len(probes), len(layers)))
    kl_null = np.zeros_like(kl_add)
    seqs = [list(cp["XY"].ids) + r[: N_REF - 1] for cp, r in zip(prompts, refs)]
    for pi, probe in enumerate(probes):
        if plan == "fast":
            _fast_probe(lm, gen, prompts, seqs, probe, pi, layers, additive, null, kl_add, kl_null, token_budget)
            continue
        for ci, cp in enumerate(prompts):
            p, w0 = cp["XY"].position(probe), window_start(cp["XY"], probe)
            clean = engine.forward_logprobs(lm, seqs[ci], w0, w0 + WINDOW)
            for li, layer in enumerate(layers):
                for out, src in ((kl_add, additive), (kl_null, null)):
                    patch = {layer: Patch(torch.tensor([0]), torch.tensor([p]), src[ci, layer, pi][None])}
                    lp = engine.forward_logprobs(lm, seqs[ci], w0, w0 + WINDOW, patch)
                    out[ci, pi, li] = float(engine.kl_sum(clean, lp))
    references = {
        cell.id: {"tokens": r, "text": lm.tokenizer.decode(r),
                  "eos_in_reference": lm.tokenizer.eos_token_id in r}
        for cell, r in zip(cells, refs)
    }
    cost = {"forward_tokens": engine.COUNTER.tokens - start_tokens,
            "forward_calls": engine.COUNTER.calls - start_calls,
            "floor_tokens": floor_tokens(prompts, probes, len(layers)),
            "wall_seconds": round(time.perf_counter() - t0, 3)}
    return SweepResult(
        model=lm.spec.name, grid=grid.name, n_layers=lm.n_layers, layers=layers, probes=probes,
        cells=tuple(c.id for c in cells), kl_add=kl_add, kl_null=kl_null, geometry=geo,
        references=references, plan=plan, cost=cost,
    )


def floor_tokens(prompts, probes, n_layers_swept: int) -> int:
    """Distinct token positions the protocol must evaluate: the clean XY sequence once (prompt + r[0:11]),
    the other conditions' prompt + r[0:2], and per substituted run the positions from its probe to the
    end of its window (additive and null at each swept layer)."""
    total = 0
    for cp in prompts:
        xy = cp["XY"]
        total += len(xy.ids) + N_REF - 1
        total += sum(len(cp[c].ids) + 2 for c in ("BB", "XB", "BY"))
        for probe in probes:
            total += 2 * n_layers_swept * (window_start(xy, probe) + WINDOW - xy.position(probe))
    return total


def _fast_probe(lm, gen, prompts, seqs, probe, pi, layers, additive, null, kl_add, kl_null, token_budget):
    """All cells' substituted runs at one probe, batched: per cell a clean run, then additive and null
    at each swept layer, all after the cell's cached clean prefix."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for ci, cp in enumerate(prompts):
        xy = cp["XY"]
        p, w0 = xy.position(probe), window_start(xy, probe)
        groups.setdefault((gen.offsets[ci] + p, w0 + WINDOW - p, w0 - p), []).append(ci)
    runs = 1 + 2 * len(layers)
    for (column, length, wstart), members in groups.items():
        per_chunk = max(1, token_budget // (runs * (column + length)))
        for at in range(0, len(members), per_chunk):
            chunk = members[at: at + per_chunk]
            suffixes, row_patches = [], []
            for ci in chunk:
                p = prompts[ci]["XY"].position(probe)
                suffixes.append(seqs[ci][p: p + length])
                row_patches.append([[]] + [[(l, additive[ci, l, pi])] for l in layers]
                                   + [[(l, null[ci, l, pi])] for l in layers])
            lp = engine.suffix_logprobs(lm, gen, chunk, column, suffixes, row_patches, wstart)
            kls = engine.kl_sum(lp[:, :1], lp[:, 1:]).double().cpu().numpy()  # [cells, runs - 1]
            kl_add[chunk, pi] = kls[:, : len(layers)]
            kl_null[chunk, pi] = kls[:, len(layers):]


# ---------------------------------------------------------------- experiments 2-4 (marker grid, p_last)

MARKER_TOKENS = 80
HOST_WINDOW = 10


def p_last_residuals(lm: LoadedModel, grid: Grid, token_budget: int = engine.DEFAULT_TOKEN_BUDGET):
    """Prompts of the four conditions and their residuals at p_last, every layer: [cell, cond, layer, d]."""
    prompts = [render_cell(lm, grid, cell) for cell in grid.cells]
    seqs = [list(cp[c].ids) for cp in prompts for c in CONDITIONS]
    pos = [[cp[c].p_last] for cp in prompts for c in CONDITIONS]
    h = engine.capture_residuals(lm, seqs, pos, token_budget=token_budget)
    return prompts, h[:, :, 0].reshape(len(prompts), len(CONDITIONS), lm.n_layers, lm.d_model)


def markers(lm: LoadedModel, grid: Grid, *, stems=(), residuals=None, layer: int | None = None,
            n_new: int = MARKER_TOKENS) -> MarkerResult:
    """Experiment 2: greedy generations, clean / additive / remove-X / bare, substitutions at
    (mid layer, p_last) during the prompt pass only; persona markers counted in each text."""
    from .markers import hits
    from .prompts import mid_layer

    layer = mid_layer(lm.n_layers) if layer is None else layer
    prompts, h = residuals or p_last_residuals(lm, grid)
    rows, patches = [], []
    for ci, (cell, cp) in enumerate(zip(grid.cells, prompts)):
        xy = cp["XY"]
        bb, xb, by, hxy = (h[ci, i, layer] for i in range(4))
        for cond, vec in (("clean", None), ("additive", xb + by - bb), ("remove_x", hxy - (xb - bb)), ("bare", None)):
            ids = list(render(lm.tokenizer, grid.user_text(cell, "bare")).ids) if cond == "bare" else list(xy.ids)
            if vec is not None:
                patches.append((layer, len(rows), xy.p_last, vec))
            rows.append(ids)
    out = engine.greedy(lm, rows, n_new, stop_at_eos=True, prompt_patches=patches)
    texts, tokens, found = {}, {}, {}
    conds = ("clean", "additive", "remove_x", "bare")
    for ci, cell in enumerate(grid.cells):
        words = grid.markers[cell.persona_key]
        texts[cell.id], tokens[cell.id], found[cell.id] = {}, {}, {}
        for k, cond in enumerate(conds):
            toks = out[ci * len(conds) + k]
            text = lm.tokenizer.decode(toks, skip_special_tokens=True)
            texts[cell.id][cond], tokens[cell.id][cond] = text, toks
            found[cell.id][cond] = hits(text, words, stems)
    return MarkerResult(model=lm.spec.name, layer=layer, n_new_tokens=n_new, cells=tuple(c.id for c in grid.cells),
                        texts=texts, tokens=tokens, hits=found, stems=tuple(stems))


def host_injection(lm: LoadedModel, grid: Grid, *, residuals=None, layer: int | None = None,
                   token_budget: int = engine.DEFAULT_TOKEN_BUDGET) -> HostResult:
    """Experiments 3 and 4. Target: the clean XY prompt and its 10 greedy tokens. Host: the BY prompt
    (`As a thoughtful person, {task}`) teacher-forced on the same tokens. KL(target || host) with no
    intervention, with h_XY (oracle) or h_BB + dX + dY (cached) at (mid, p_last), and with the additive
    prediction of every layer of each of the paper's layer sets (mapped to this depth) at once."""
    from .prompts import mid_layer, multilayer_sets

    layer = mid_layer(lm.n_layers) if layer is None else layer
    sets = multilayer_sets(lm.n_layers)
    prompts, h = residuals or p_last_residuals(lm, grid)
    additive = h[:, 1] + h[:, 2] - h[:, 0]  # [cell, layer, d]
    xy_gen = engine.greedy(lm, [list(cp["XY"].ids) for cp in prompts], HOST_WINDOW, keep_cache=True)
    by_gen = engine.greedy(lm, [list(cp["BY"].ids) for cp in prompts], 1, keep_cache=True)  # prompt cache only
    names = ["host", "oracle", "cached"] + ["layers " + ",".join(map(str, s)) for s in sets]
    cells = list(range(len(prompts)))
    kl = {c.id: {} for c in grid.cells}
    width = max(len(cp["BY"].ids) for cp in prompts) + HOST_WINDOW
    per_chunk = max(1, token_budget // (len(names) * width))
    for at in range(0, len(cells), per_chunk):
        chunk = cells[at: at + per_chunk]
        r = [xy_gen.tokens[ci] for ci in chunk]
        target = engine.suffix_logprobs(
            lm, xy_gen, chunk, xy_gen.offsets[chunk[0]] + prompts[chunk[0]]["XY"].p_last,
            [[prompts[ci]["XY"].ids[-1]] + r[i][: HOST_WINDOW - 1] for i, ci in enumerate(chunk)],
            [[[]] for _ in chunk], 0)
        row_patches = [
            [[], [(layer, h[ci, 3, layer])], [(layer, additive[ci, layer])]]
            + [[(m, additive[ci, m]) for m in s] for s in sets]
            for ci in chunk
        ]
        host = engine.suffix_logprobs(
            lm, by_gen, chunk, by_gen.offsets[chunk[0]] + prompts[chunk[0]]["BY"].p_last,
            [[prompts[ci]["BY"].ids[-1]] + r[i][: HOST_WINDOW - 1] for i, ci in enumerate(chunk)],
            row_patches, 0)
        kls = engine.kl_sum(target, host).double().cpu().numpy()  # [cells, runs]
        for i, ci in enumerate(chunk):
            kl[grid.cells[ci].id] = {name: float(kls[i, j]) for j, name in enumerate(names)}
    return HostResult(model=lm.spec.name, layer=layer, layer_sets=sets, cells=tuple(c.id for c in grid.cells),
                      kl=kl, target_tokens={c.id: xy_gen.tokens[i] for i, c in enumerate(grid.cells)})
