"""Per-cell checks (each returns the problems it found in one cell) and the cells on the wrong
side of a deciding part's line (no torch)."""
from __future__ import annotations

import math

import numpy as np

from .rules import Part, c1


def additive_vs_null(result, cell: str, t) -> list[str]:
    """Where C1 is decided for each probe: a finite, non-negative KL, and the additive prediction
    costs no more than substituting h_BB alone (beyond a small tolerance)."""
    tol, floor = t.per_cell.additive_vs_null_tolerance, t.per_cell.kl_floor
    problems = []
    for part in c1(result.summary, t.C1).parts:
        layer = part.numbers.get("layer")
        if layer is None:
            continue
        add = result.cell_kl("additive", cell, part.name, layer)
        null = result.cell_kl("null", cell, part.name, layer)
        if not (add >= floor and null >= floor):
            problems.append(f"{part.name} L{layer}: KL below {floor} (additive {add}, null {null})")
        elif add > null + tol:
            problems.append(f"{part.name} L{layer}: additive KL {add:.4f} > null KL {null:.4f} "
                            f"+ {tol}")
    return problems


def sum_beats_alignment(result, cell: str, t) -> list[str]:
    """At every swept layer and probe: cos(dXY, dX + dY) > cos(dX, dY)."""
    ci, problems = result.cells.index(cell), []
    for probe in t.C2.probes:
        pi = result.probes.index(probe)
        for layer in result.layers:
            s = result.geometry["cos_xy_sum"][ci, pi, layer]
            xy = result.geometry["cos_x_y"][ci, pi, layer]
            if not (np.isfinite(s) and np.isfinite(xy)):
                problems.append(f"{probe} L{layer}: undefined angle (a delta is zero)")
            elif s <= xy:
                problems.append(f"{probe} L{layer}: cos(dXY,dX+dY) {s:.3f} <= cos(dX,dY) {xy:.3f}")
    return problems


def additive_keeps_marker(result, cell: str, t) -> list[str]:
    """Where the clean generation shows a persona marker, the additive one shows one too."""
    h = result.hits[cell]
    if h["clean"] and not h["additive"]:
        return [f"clean has {h['clean']}, additive none: {result.texts[cell]['additive'][:160]!r}"]
    return []


def oracle_no_worse(result, cell: str, t) -> list[str]:
    """The host really differs from the target (KL > 0, finite) and writing the target's own
    residual into the host does not make it worse than no intervention, beyond a tolerance."""
    kl, tol = result.kl[cell], t.per_cell.oracle_vs_host_tolerance
    if not all(math.isfinite(v) for v in kl.values()):
        return [f"non-finite KL {kl}"]
    if not kl["host"] > 0:
        return [f"KL(host) = {kl['host']} is not positive"]
    if kl["oracle"] > kl["host"] + tol:
        return [f"oracle KL {kl['oracle']:.4f} > host KL {kl['host']:.4f} + {tol}"]
    return []


CELL_CHECKS = {"additive_vs_null": additive_vs_null, "sum_beats_alignment": sum_beats_alignment,
               "additive_keeps_marker": additive_keeps_marker, "oracle_no_worse": oracle_no_worse}


def against(claim: str, part: Part, result, thresholds) -> list[str]:
    """The cells on the wrong side of the deciding part's line, with their values: what a
    failing claim's message names next to its numbers."""
    t, n = getattr(thresholds, claim), part.numbers
    name = part.name.split(" ")[0]
    if claim in ("C1", "C1L", "C2", "C5", "C6") and name in getattr(result, "probes", ()):
        pi = result.probes.index(name)
        site = int(part.name.split(" L")[-1]) if " L" in part.name else 0
        layer = n.get("layer", n.get("deepest", site))
        shallowest = n.get("shallowest", layer)
        if layer not in result.layers or shallowest not in result.layers:
            return []  # a part decided at no swept layer (none informative): no cell to name
        li = result.layers.index(layer)
        add, null = result.kl_add[:, pi, li], result.kl_null[:, pi, li]
        cos_xy = result.geometry["cos_x_y"][:, pi, layer]
        cos_sum = result.geometry["cos_xy_sum"][:, pi, layer]
        low = result.kl_add[:, pi, result.layers.index(shallowest)]
        if claim == "C1":
            bad = (add > t.max_median_kl, add)
        elif claim == "C5":
            bad = (add > np.minimum(t.max_additive_kl, t.max_additive_over_null * null), add)
        elif claim == "C1L":
            bad = (add < t.min_ratio * low, add / np.maximum(low, 1e-12))
        elif claim == "C6":  # each cell's own unexplained share, deepest against shallowest
            lo = result.layers.index(shallowest)
            u_lo = result.kl_add[:, pi, lo] / np.maximum(result.kl_null[:, pi, lo], 1e-12)
            u_hi = add / np.maximum(null, 1e-12)
            bad = (u_hi < t.min_ratio * u_lo, u_hi)
        else:
            bad = ((cos_xy > t.max_cos_x_y) | (cos_sum < t.min_cos_xy_sum), cos_xy)
    elif claim in ("C3", "C3R"):
        cond = {"precondition": "clean"}.get(part.name, part.name)
        has = np.array([bool(result.hits[c][cond]) for c in result.cells])
        clean = np.array([bool(result.hits[c]["clean"]) for c in result.cells])
        bad = ((has if cond == "bare" else ~has if cond == "clean" else clean & ~has), has * 1.0)
    elif claim == "C4":
        host = np.array([result.kl[c]["host"] for c in result.cells])
        if part.name == "precondition":
            bad = (host < t.min_host_kl, host)
        else:
            gap = (host - np.array([result.kl[c][part.name] for c in result.cells])) / host
            bad = (gap > t.max_gap_closed, gap)
    else:
        return []
    return [f"{result.cells[i]} ({bad[1][i]:.3g})" for i in np.flatnonzero(bad[0])]
