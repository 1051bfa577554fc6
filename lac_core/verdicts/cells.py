"""Per-cell checks (each returns the problems it found in one cell) with their severities, and,
per claim, the cells on the wrong side of a deciding part's line (no torch). The claims'
declarations (claims.py) name which of these each claim uses."""
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


def additive_vs_null_severity(result, cell: str, t) -> float:
    """The largest additive - null KL over the check's own sites (every probe at C1's layer)."""
    gaps = [result.cell_kl("additive", cell, p.name, p.numbers["layer"])
            - result.cell_kl("null", cell, p.name, p.numbers["layer"])
            for p in c1(result.summary, t.C1).parts if "layer" in p.numbers]
    return max(gaps, default=0.0)


def sum_beats_alignment_severity(result, cell: str, t) -> float:
    """The largest cos(dX, dY) - cos(dXY, dX + dY) over probes and layers."""
    ci = result.cells.index(cell)
    return float(np.nanmax(result.geometry["cos_x_y"][ci] - result.geometry["cos_xy_sum"][ci]))


def additive_keeps_marker_severity(result, cell: str, t) -> float:
    """How many markers the clean text has that the additive one lost."""
    return float(len(result.hits[cell]["clean"]))


def oracle_no_worse_severity(result, cell: str, t) -> float:
    return result.kl[cell]["oracle"] - result.kl[cell]["host"]


Against = list[tuple[str, float]]  # (cell, its value) on the wrong side of a part's line


def _named(bad, values, result) -> Against:
    return [(result.cells[i], values[i]) for i in np.flatnonzero(bad)]


def _site(result, part: Part) -> tuple[int, int, int, int] | None:
    """A sweep part's probe index, its layer, that layer's index and the shallowest layer's
    index; None when the part names no swept probe, or was decided at no swept layer (none
    informative): no cell to name."""
    n, name = part.numbers, part.name.split(" ")[0]
    if name not in getattr(result, "probes", ()):
        return None
    site = int(part.name.split(" L")[-1]) if " L" in part.name else 0
    layer = n.get("layer", n.get("deepest", site))
    shallowest = n.get("shallowest", layer)
    if layer not in result.layers or shallowest not in result.layers:
        return None
    return (result.probes.index(name), layer, result.layers.index(layer),
            result.layers.index(shallowest))


def c1_against(result, part: Part, t) -> Against:
    """Cells whose additive KL is above the median's bound at the part's layer."""
    if (at := _site(result, part)) is None:
        return []
    add = result.kl_add[:, at[0], at[2]]
    return _named(add > t.max_median_kl, add, result)


def c5_against(result, part: Part, t) -> Against:
    """Cells whose additive KL is above the bound and the share of their null KL."""
    if (at := _site(result, part)) is None:
        return []
    add, null = result.kl_add[:, at[0], at[2]], result.kl_null[:, at[0], at[2]]
    return _named(add > np.minimum(t.max_additive_kl, t.max_additive_over_null * null), add,
                  result)


def c1l_against(result, part: Part, t) -> Against:
    """Cells whose deepest / shallowest additive KL is below the ratio."""
    if (at := _site(result, part)) is None:
        return []
    add, low = result.kl_add[:, at[0], at[2]], result.kl_add[:, at[0], at[3]]
    return _named(add < t.min_ratio * low, add / np.maximum(low, 1e-12), result)


def c6_against(result, part: Part, t) -> Against:
    """Each cell's own unexplained share, deepest against shallowest."""
    if (at := _site(result, part)) is None:
        return []
    pi, _layer, li, lo = at
    u_lo = result.kl_add[:, pi, lo] / np.maximum(result.kl_null[:, pi, lo], 1e-12)
    u_hi = result.kl_add[:, pi, li] / np.maximum(result.kl_null[:, pi, li], 1e-12)
    return _named(u_hi < t.min_ratio * u_lo, u_hi, result)


def c2_against(result, part: Part, t) -> Against:
    """Cells whose angles miss either bound at the part's layer (their cos(dX, dY))."""
    if (at := _site(result, part)) is None:
        return []
    cos_xy = result.geometry["cos_x_y"][:, at[0], at[1]]
    cos_sum = result.geometry["cos_xy_sum"][:, at[0], at[1]]
    return _named((cos_xy > t.max_cos_x_y) | (cos_sum < t.min_cos_xy_sum), cos_xy, result)


def markers_against(result, part: Part, t) -> Against:
    """C3 and C3R: for the precondition, cells whose clean text has no marker; for the bare
    prompt, cells that keep one; else cells whose clean text has one and this condition none."""
    cond = {"precondition": "clean"}.get(part.name, part.name)
    has = np.array([bool(result.hits[c][cond]) for c in result.cells])
    clean = np.array([bool(result.hits[c]["clean"]) for c in result.cells])
    return _named(has if cond == "bare" else ~has if cond == "clean" else clean & ~has,
                  has * 1.0, result)


def c4_against(result, part: Part, t) -> Against:
    """Cells whose host KL is below the precondition's bound, or whose intervention closes more
    of the gap than allowed."""
    host = np.array([result.kl[c]["host"] for c in result.cells])
    if part.name == "precondition":
        return _named(host < t.min_host_kl, host, result)
    gap = (host - np.array([result.kl[c][part.name] for c in result.cells])) / host
    return _named(gap > t.max_gap_closed, gap, result)
