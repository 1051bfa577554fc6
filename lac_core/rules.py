"""The claims as decision rules, and the per-cell checks, over typed thresholds (no torch)."""
# A rule with parts FAILS if any part fails, else is INCONCLUSIVE if any part is, else HOLDS; the
# verdict names the deciding part (the failing or inconclusive one, or the one with the least
# margin when all hold). A per-cell check returns the problems it found in one cell. Each rule
# takes a summary (results.py) and its section of the thresholds (thresholds.py).
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "FAILS", "INCONCLUSIVE"
CLAIMS = ("C1", "C1L", "C2", "C3", "C3R", "C4", "C5")  # report order


@dataclass(frozen=True)
class Part:
    name: str
    status: str
    margin: float  # distance to the nearest threshold; >= 0 means met
    detail: str
    numbers: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # margin and each number -> 95% [lo, hi]


@dataclass(frozen=True)
class Verdict:
    claim: str
    subject: str  # "model / grid"
    status: str
    deciding: Part | None
    parts: tuple[Part, ...]
    preconditions: tuple[Part, ...] = ()  # met (HOLDS) or not (INCONCLUSIVE: the verdict too)
    fragile: tuple[str, ...] = ()  # parts whose interval holds their threshold and would flip it

    def explain(self) -> str:
        head = f"{self.claim} {self.status} on {self.subject}"
        return head + (f": {self.deciding.name}: {self.deciding.detail}" if self.deciding else "")


def _part(name, ok: bool, margin: float, detail: str, numbers: dict) -> Part:
    return Part(name, HOLDS if ok else FAILS, margin, detail, numbers)


def _undecided(name: str, detail: str, margin: float = math.nan) -> Part:
    return Part(name, INCONCLUSIVE, margin, detail)


def combine(claim: str, subject: str, parts: list[Part]) -> Verdict:
    for status in (FAILS, INCONCLUSIVE):
        bad = [p for p in parts if p.status == status]
        if bad:
            return Verdict(claim, subject, status, min(bad, key=lambda p: p.margin), tuple(parts))
    if not parts:
        empty = _undecided("-", "no data to decide on")
        return Verdict(claim, subject, INCONCLUSIVE, empty, (empty,))
    return Verdict(claim, subject, HOLDS, min(parts, key=lambda p: p.margin), tuple(parts))


def _band(summary, frac: float) -> list[int]:
    return [layer for layer in summary.layers if layer / summary.n_layers <= frac + 1e-12]


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _unswept(probe: str) -> Part:
    return _undecided(probe, f"probe {probe} was not swept in this run (see --lac-probes)")


def c1(summary, t) -> Verdict:
    parts = []
    for probe in t.probes:
        band = _band(summary, t.max_depth_fraction)
        if probe not in summary.kl_add:
            parts.append(_unswept(probe))
        elif not band:
            parts.append(_undecided(probe, "no swept layer with depth fraction <= "
                                           f"{t.max_depth_fraction}"))
        if probe not in summary.kl_add or not band:
            continue
        best = min(band, key=lambda layer: summary.kl_add[probe][layer].median)
        s = summary.kl_add[probe][best]
        ok = s.median <= t.max_median_kl
        parts.append(_part(probe, ok, t.max_median_kl - s.median,
                           f"smallest median additive KL in the band is {s.median:.4f} at L{best} "
                           f"({'<=' if ok else '>'} {t.max_median_kl})",
                           {"layer": best, "median": s.median, "p25": s.p25, "p75": s.p75}))
    return combine("C1", summary.label, parts)


def c1l(summary, t) -> Verdict:
    parts = []
    for probe in t.probes:
        if probe not in summary.kl_add or len(summary.layers) < 2:
            parts.append(_unswept(probe) if probe not in summary.kl_add
                         else _undecided(probe, "needs at least two swept layers"))
            continue
        lo, hi = min(summary.layers), max(summary.layers)
        a, b = summary.kl_add[probe][lo].median, summary.kl_add[probe][hi].median
        ok = b >= t.min_ratio * a
        ratio = b / a if a > 0 else math.inf
        parts.append(_part(probe, ok, b - t.min_ratio * a,
                           f"median KL L{hi} {b:.4f} vs L{lo} {a:.4f}: ratio {ratio:.2f} "
                           f"({'>=' if ok else '<'} {t.min_ratio})",
                           {"shallowest": lo, "deepest": hi, "median_shallowest": a,
                            "median_deepest": b, "ratio": ratio}))
    return combine("C1L", summary.label, parts)


def c2(summary, t) -> Verdict:
    parts = []
    for probe in t.probes:
        for layer in summary.layers:
            g = summary.geometry.get(probe, {}).get(layer)
            name = f"{probe} L{layer}"
            if g is None or _nan(g["cos_x_y"].median) or _nan(g["cos_xy_sum"].median):
                parts.append(_undecided(name, "no geometry at this site"))
                continue
            xy, s = g["cos_x_y"].median, g["cos_xy_sum"].median
            margin = min(t.max_cos_x_y - xy, s - t.min_cos_xy_sum, (s - xy) - t.min_difference)
            parts.append(_part(name, margin >= 0, margin,
                               f"median cos(dX,dY) {xy:.3f} (<= {t.max_cos_x_y}), cos(dXY,dX+dY) "
                               f"{s:.3f} (>= {t.min_cos_xy_sum}), difference {s - xy:.3f} "
                               f"(>= {t.min_difference})",
                               {"cos_x_y": xy, "cos_xy_sum": s, "difference": s - xy}))
    return combine("C2", summary.label, parts)


def c5(summary, t) -> Verdict:
    parts = []
    for probe in t.probes:
        if summary.kl_null is None or probe not in summary.kl_null:
            parts.append(_unswept(probe) if summary.kl_null is not None else
                         _undecided(probe, "no null control was run (h_BB substituted alone)"))
            continue
        band = _band(summary, t.max_depth_fraction)
        null = {layer: summary.kl_null[probe][layer].median for layer in band}
        informative = [layer for layer in band if null[layer] >= t.min_null_kl]
        if not informative:
            parts.append(_undecided(probe, "no informative layer in the band: largest median null "
                                           f"KL {max(null.values(), default=math.nan):.4f} "
                                           f"< {t.min_null_kl}"))
            continue

        def margin(layer):
            a = summary.kl_add[probe][layer].median
            return min(t.max_additive_kl - a, t.max_additive_over_null * null[layer] - a)

        best = max(informative, key=margin)
        a, n = summary.kl_add[probe][best].median, null[best]
        parts.append(_part(probe, margin(best) >= 0, margin(best),
                           f"at L{best} median additive KL {a:.4f} vs null {n:.4f} (need <= "
                           f"{t.max_additive_kl} and <= {t.max_additive_over_null} x null); "
                           f"informative layers {informative}",
                           {"layer": best, "additive": a, "null": n,
                            "informative_layers": informative}))
    return combine("C5", summary.label, parts)


def _fraction_part(name, value, clean, factor, at_least: bool) -> Part:
    bound = factor * clean
    ok = value >= bound if at_least else value <= bound
    sign = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
    return _part(name, ok, (value - bound) if at_least else (bound - value),
                 f"{name} any-marker {value} {sign} {factor} x clean {clean} = {bound:.2f}",
                 {"count": value, "clean": clean, "bound": bound})


def with_precondition(claim: str, label: str, pre: Part, parts: list[Part]) -> Verdict:
    """The parts decide when the precondition is met; otherwise it is INCONCLUSIVE, and the parts
    are still reported (their numbers, not their verdict)."""
    if pre.status != HOLDS:
        return Verdict(claim, label, INCONCLUSIVE, pre, tuple(parts), (pre,))
    v = combine(claim, label, parts)
    return Verdict(v.claim, v.subject, v.status, v.deciding, v.parts, (pre,))


def _markers(m, t, claim: str, parts) -> Verdict:
    need, clean = t.min_clean_fraction * m.n_cells, m.any["clean"]
    ok = clean >= need
    pre = Part("precondition", HOLDS if ok else INCONCLUSIVE, clean - need,
               f"clean any-marker {clean}/{m.n_cells} {'>=' if ok else '<'} "
               f"{t.min_clean_fraction:.0%} of cells", {"clean": clean})
    return with_precondition(claim, m.label, pre, [
        _fraction_part(name, m.any[name], clean, factor, up) for name, factor, up in parts])


def c3(m, t) -> Verdict:
    return _markers(m, t, "C3", [("additive", t.min_additive_over_clean, True),
                                 ("bare", t.max_bare_over_clean, False)])


def c3r(m, t) -> Verdict:
    return _markers(m, t, "C3R", [("remove_x", t.min_remove_x_over_clean, True)])


def c4(h, t) -> Verdict:
    """`h`: a HostSummary with median host KL and median gap closed per intervention."""
    ok = h.median_host >= t.min_host_kl
    pre = Part("precondition", HOLDS if ok else INCONCLUSIVE, h.median_host - t.min_host_kl,
               f"median KL(host) {h.median_host:.3f} {'>=' if ok else '<'} {t.min_host_kl}"
               + ("" if ok else ": no gap worth closing"), {"median_host": h.median_host})
    parts = []
    for name, gap in h.median_gap_closed.items():
        ok = gap <= t.max_gap_closed
        parts.append(_part(name, ok, t.max_gap_closed - gap,
                           f"median gap closed {gap:.3f} ({'<=' if ok else '>'} "
                           f"{t.max_gap_closed:.3f}); median KL host {h.median_host:.3f} -> "
                           f"{h.median_kl[name]:.3f}",
                           {"gap_closed": gap, "median_kl": h.median_kl[name],
                            "median_host": h.median_host}))
    return with_precondition("C4", h.label, pre, parts)


SWEEP_RULES = {"C1": c1, "C1L": c1l, "C2": c2, "C5": c5}
MARKER_RULES = {"C3": c3, "C3R": c3r}
HOST_RULES = {"C4": c4}


# ---------------------------------------------------------------- per-cell checks

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
    if claim in ("C1", "C1L", "C2", "C5") and name in getattr(result, "probes", ()):
        pi = result.probes.index(name)
        site = int(part.name.split(" L")[-1]) if " L" in part.name else 0
        layer = n.get("layer", n.get("deepest", site))
        li = result.layers.index(layer) if layer in result.layers else 0
        add, null = result.kl_add[:, pi, li], result.kl_null[:, pi, li]
        cos_xy = result.geometry["cos_x_y"][:, pi, layer]
        cos_sum = result.geometry["cos_xy_sum"][:, pi, layer]
        low = result.kl_add[:, pi, result.layers.index(n.get("shallowest", layer))]
        if claim == "C1":
            bad = (add > t.max_median_kl, add)
        elif claim == "C5":
            bad = (add > np.minimum(t.max_additive_kl, t.max_additive_over_null * null), add)
        elif claim == "C1L":
            bad = (add < t.min_ratio * low, add / np.maximum(low, 1e-12))
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
