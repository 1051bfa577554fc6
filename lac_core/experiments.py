"""The paper's experiments as functions from (model, grid) to result records.

Experiment 1 has two execution plans that must agree: `naive` (one full forward
per site and cell, the way the paper's scripts run) is the oracle, `fast`
computes each distinct forward once: one batched greedy reference pass yields the
references, the clean window log-probs and the XY residuals; each distinct prompt
of the other conditions runs once; every substituted run starts at its probe (on
the reference pass's cached prefix) and at its layer (fed the clean residuals).
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


PROMPT_PROBES = ("p_user_last", "p_last")  # probes inside the prompt; g1, g2 are generated tokens


def _naive_captures(lm, prompts, refs, probes):
    """The oracle's captures: one full forward per (cell, condition) of prompt + r[0:2]."""
    h = [engine.capture_residuals(lm, [list(cp[c].ids) + ref[:2]], [[cp[c].position(p) for p in probes]])
         for cp, ref in zip(prompts, refs) for c in CONDITIONS]
    return torch.cat(h).reshape(len(prompts), len(CONDITIONS), lm.n_layers, len(probes), lm.d_model)


def _distinct(seqs) -> tuple[list[list[int]], list[int]]:
    """The distinct sequences, in first-seen order, and for each input the index of its own:
    a prompt shared by several sites is then computed once."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(s), len(first)) for s in seqs]
    return [list(k) for k in first], index


def _tail(rendered: list[Rendered], probes) -> int:
    """How many last prompt positions hold every in-prompt probe of every prompt."""
    inside = [p for p in probes if p in PROMPT_PROBES] or ["p_last"]
    return max(len(r.ids) - r.position(p) for r in rendered for p in inside)


def _from_generation(gen: engine.Generation, row: int, rendered: Rendered, probes) -> torch.Tensor:
    """[n_layers, probes, d] residuals of one row of a capturing greedy pass."""
    cols = [gen.residual_index(row, rendered.position(p)) for p in probes]
    return gen.residuals[row][:, cols]


def _fast_captures(lm, prompts, gen, refs, probes, token_budget):
    """Residuals for every (cell, condition): the XY ones come from the reference pass itself; each
    distinct prompt of the other conditions (XB repeats across tasks, BY across personas, BB
    everywhere) is run once, then r[0:2] of each cell after its cached prefix."""
    n = len(prompts)
    h = torch.empty(n, len(CONDITIONS), lm.n_layers, len(probes), lm.d_model)
    for ci, cp in enumerate(prompts):
        h[ci, CONDITIONS.index("XY")] = _from_generation(gen, ci, cp["XY"], probes)
    others = [c for c in CONDITIONS if c != "XY"]
    pairs = [(ci, c) for ci in range(n) for c in others]
    keys, index = _distinct(prompts[ci][c].ids for ci, c in pairs)
    rendered = {u: prompts[ci][c] for (ci, c), u in zip(pairs, index)}
    pre = engine.greedy(lm, keys, 1, keep_cache=True, capture_tail=_tail(list(rendered.values()), probes))
    width = max(len(k) for k in keys)
    sites = [(ci, c, u) for (ci, c), u in zip(pairs, index)]
    per_chunk = max(1, token_budget // (width + 2))
    for at in range(0, len(sites), per_chunk):
        chunk = sites[at: at + per_chunk]
        _, forced = engine.extend(lm, pre, [u for _, _, u in chunk], width,
                                  [refs[ci][:2] for ci, _, _ in chunk], capture_all=True)
        for k, (ci, c, u) in enumerate(chunk):
            r = rendered[u]
            for pi, probe in enumerate(probes):
                q = r.position(probe)
                h[ci, CONDITIONS.index(c), :, pi] = (
                    pre.residuals[u][:, pre.residual_index(u, q)] if q < len(r.ids) else forced[k][:, q - len(r.ids)]
                )
    return h


def sweep(lm: LoadedModel, grid: Grid, *, layers=None, probes=PROBES, plan: str = "fast",
          token_budget: int = engine.DEFAULT_TOKEN_BUDGET) -> SweepResult:
    """Experiment 1: geometry at every layer and additive/null KL at the swept layers."""
    if plan not in ("fast", "naive"):
        raise ValueError(f"plan must be 'fast' or 'naive', got {plan!r}")
    t0 = time.perf_counter()
    start = (engine.COUNTER.tokens, engine.COUNTER.layer_tokens, engine.COUNTER.calls)
    layers = tuple(layers or layer_fractions_to_layers(lm.n_layers))
    probes = tuple(probes)
    cells = grid.cells
    prompts = [render_cell(lm, grid, cell) for cell in cells]

    xy_prompts = [list(cp["XY"].ids) for cp in prompts]
    if plan == "fast":  # one batched pass for all cells: references, clean log-probs, XY residuals
        gen = engine.greedy(lm, xy_prompts, N_REF, keep_cache=True, keep_logprobs=True,
                            capture_tail=_tail([cp["XY"] for cp in prompts], probes))
        refs = gen.tokens
        h = _fast_captures(lm, prompts, gen, refs, probes, token_budget)
    else:
        refs = [engine.greedy(lm, [ids], N_REF)[0] for ids in xy_prompts]
        h = _naive_captures(lm, prompts, refs, probes)
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
    floor, floor_layers = floor_tokens(prompts, refs, probes, layers, lm.n_layers)
    cost = {"forward_tokens": engine.COUNTER.tokens - start[0],
            "forward_layer_tokens": engine.COUNTER.layer_tokens - start[1],
            "forward_calls": engine.COUNTER.calls - start[2],
            "floor_tokens": floor, "floor_layer_tokens": floor_layers,
            "wall_seconds": round(time.perf_counter() - t0, 3)}
    return SweepResult(
        model=lm.spec.name, grid=grid.name, n_layers=lm.n_layers, layers=layers, probes=probes,
        cells=tuple(c.id for c in cells), kl_add=kl_add, kl_null=kl_null, geometry=geo,
        references=references, plan=plan, cost=cost,
    )


def floor_tokens(prompts, refs, probes, layers, n_layers: int) -> tuple[int, int]:
    """What the protocol cannot avoid computing, as (token positions, token-layers).

    Clean: every distinct prefix of the sequences it reads (each XY prompt + r[0:11], each other
    condition's prompt + r[0:2]), counted once, as a trie does, through every layer. Substituted:
    per run, the positions from its probe to the end of its window, through the layers from the
    substituted one up (nothing below the substitution, or before the probe, can change).
    """
    trie: set[tuple[int, ...]] = set()
    for cp, ref in zip(prompts, refs):
        for c in CONDITIONS:
            seq = tuple(cp[c].ids) + tuple(ref[: N_REF - 1 if c == "XY" else 2])
            trie.update(seq[:k] for k in range(1, len(seq) + 1))
    positions, layer_tokens = len(trie), len(trie) * n_layers
    for cp in prompts:
        xy = cp["XY"]
        for probe in probes:
            span = window_start(xy, probe) + WINDOW - xy.position(probe)
            positions += 2 * len(layers) * span
            layer_tokens += 2 * span * sum(n_layers - layer for layer in layers)
    return positions, layer_tokens


def _fast_probe(lm, gen, prompts, seqs, probe, pi, layers, additive, null, kl_add, kl_null, token_budget):
    """All cells' substituted runs at one probe: for each swept layer, the additive and null rows of
    every cell in one batch, computed only from the probe on and from that layer up, fed the clean
    residuals the reference pass captured; scored against the reference pass's own log-probs."""
    groups: dict[tuple[int, int], list[int]] = {}
    for ci, cp in enumerate(prompts):
        xy = cp["XY"]
        p = xy.position(probe)
        groups.setdefault((gen.column(ci, p), window_start(xy, probe) + WINDOW - p), []).append(ci)
    for (column, length), members in groups.items():
        per_chunk = max(1, token_budget // (2 * (column + length)))
        for at in range(0, len(members), per_chunk):
            chunk = members[at: at + per_chunk]
            rows = [ci for ci in chunk for _ in range(2)]
            suffixes, spans, clean = [], [], []
            for ci in chunk:
                xy = prompts[ci]["XY"]
                p, w0 = xy.position(probe), window_start(xy, probe)
                suffixes += [seqs[ci][p: p + length]] * 2
                j = gen.residual_index(ci, p)
                spans.append(slice(j, j + length))
                k = w0 - (len(xy.ids) - 1)  # step k of the reference pass scores position len - 1 + k
                clean.append(gen.logprobs[ci, k: k + WINDOW])
            clean = torch.stack(clean)[:, None]  # [cells, 1, WINDOW, V]
            for li, layer in enumerate(layers):
                hidden = torch.stack([gen.residuals[ci, layer, spans[i]] for i, ci in enumerate(chunk)])
                hidden = hidden.repeat_interleave(2, dim=0)  # rows: (cell, additive), (cell, null)
                hidden[0::2, 0] = additive[chunk, layer, pi]
                hidden[1::2, 0] = null[chunk, layer, pi]
                if layer == 0:
                    patches = [(0, r, 0, hidden[r, 0]) for r in range(len(rows))]
                    lp, _ = engine.extend(lm, gen, rows, column, suffixes, patches=patches, keep=WINDOW)
                else:
                    lp, _ = engine.extend(lm, gen, rows, column, suffixes, start_layer=layer, hidden=hidden,
                                          keep=WINDOW)
                kls = engine.kl_sum(clean, lp.reshape(len(chunk), 2, WINDOW, -1)).double().cpu().numpy()
                kl_add[chunk, pi, li] = kls[:, 0]
                kl_null[chunk, pi, li] = kls[:, 1]


# ---------------------------------------------------------------- experiments 2-4 (marker grid, p_last)

MARKER_TOKENS = 80
HOST_WINDOW = 10


def p_last_residuals(lm: LoadedModel, grid: Grid, token_budget: int = engine.DEFAULT_TOKEN_BUDGET):
    """Prompts of the four conditions and their residuals at p_last, every layer: [cell, cond, layer, d]."""
    prompts = [render_cell(lm, grid, cell) for cell in grid.cells]
    # XB repeats across tasks, BY across personas, BB everywhere
    seqs, index = _distinct(cp[c].ids for cp in prompts for c in CONDITIONS)
    h = engine.capture_residuals(lm, seqs, [[len(k) - 1] for k in seqs], token_budget=token_budget)
    return prompts, h[index, :, 0].reshape(len(prompts), len(CONDITIONS), lm.n_layers, lm.d_model)


def markers(lm: LoadedModel, grid: Grid, *, stems=(), residuals=None, layer: int | None = None,
            n_new: int = MARKER_TOKENS) -> MarkerResult:
    """Experiment 2: greedy generations, clean / additive / remove-X / bare, substitutions at
    (mid layer, p_last) during the prompt pass only; persona markers counted in each text."""
    from .markers import hits
    from .prompts import mid_layer

    layer = mid_layer(lm.n_layers) if layer is None else layer
    prompts, h = residuals or p_last_residuals(lm, grid)
    # Every prompt but its last token is computed once (clean, additive and remove-X share the XY
    # prompt; bare repeats across personas), then each row continues from p_last, where the
    # substitution lands; an unpatched prompt is generated once.
    plain: dict[tuple[int, ...], int] = {}
    full, patches, which = [], [], []  # full[k]: prompt of generated row k; which[i]: row of site i
    for ci, (cell, cp) in enumerate(zip(grid.cells, prompts)):
        xy = cp["XY"]
        bb, xb, by, hxy = (h[ci, i, layer] for i in range(4))
        for cond, vec in (("clean", None), ("additive", xb + by - bb), ("remove_x", hxy - (xb - bb)), ("bare", None)):
            ids = tuple(render(lm.tokenizer, grid.user_text(cell, "bare")).ids) if cond == "bare" else tuple(xy.ids)
            if vec is None and ids in plain:
                which.append(plain[ids])
                continue
            if vec is None:
                plain[ids] = len(full)
            else:
                patches.append((layer, len(full), 0, vec))  # continuation position 0 is p_last
            which.append(len(full))
            full.append(ids)
    prefixes, rows = _distinct(ids[:-1] for ids in full)
    pre = engine.greedy(lm, prefixes, 1, keep_cache=True)
    generated = engine.greedy(lm, [[ids[-1]] for ids in full], n_new, stop_at_eos=True, prompt_patches=patches,
                              prefix=pre, prefix_rows=rows)
    out = [generated[k] for k in which]
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
    xy_gen = engine.greedy(lm, [list(cp["XY"].ids) for cp in prompts], HOST_WINDOW, keep_logprobs=True,
                           keep_cache=True)
    by_prompts, by_row = _distinct(cp["BY"].ids for cp in prompts)  # BY repeats across personas
    by_gen = engine.greedy(lm, by_prompts, 1, keep_cache=True)  # prompt cache only
    names = ["host", "oracle", "cached"] + ["layers " + ",".join(map(str, s)) for s in sets]
    kl = {c.id: {} for c in grid.cells}
    width = max(len(cp["BY"].ids) for cp in prompts) + HOST_WINDOW
    per_chunk = max(1, token_budget // (len(names) * width))
    for at in range(0, len(prompts), per_chunk):
        chunk = list(range(at, min(at + per_chunk, len(prompts))))
        rows, suffixes, patches = [], [], []
        for ci in chunk:
            runs = [[], [(layer, h[ci, 3, layer])], [(layer, additive[ci, layer])]]
            runs += [[(m, additive[ci, m]) for m in s] for s in sets]
            for run in runs:
                patches += [(m, len(rows), 0, vec) for m, vec in run]
                rows.append(by_row[ci])
                suffixes.append([prompts[ci]["BY"].ids[-1]] + xy_gen.tokens[ci][: HOST_WINDOW - 1])
        column = by_gen.column(by_row[chunk[0]], prompts[chunk[0]]["BY"].p_last)  # the same for every row
        host, _ = engine.extend(lm, by_gen, rows, column, suffixes, patches=patches, keep=HOST_WINDOW)
        target = xy_gen.logprobs[chunk][:, None]  # [cells, 1, HOST_WINDOW, V]: step k scores p_last + k
        kls = engine.kl_sum(target, host.reshape(len(chunk), len(names), HOST_WINDOW, -1)).double().cpu().numpy()
        for i, ci in enumerate(chunk):
            kl[grid.cells[ci].id] = {name: float(kls[i, j]) for j, name in enumerate(names)}
    return HostResult(model=lm.spec.name, layer=layer, layer_sets=sets, cells=tuple(c.id for c in grid.cells),
                      kl=kl, target_tokens={c.id: xy_gen.tokens[i] for i, c in enumerate(grid.cells)})
