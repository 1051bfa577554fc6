"""The claims as decision rules, and the per-cell checks, over typed thresholds (no torch)."""
# A rule with parts FAILS if any part fails, else is INCONCLUSIVE if any part is, else HOLDS; the
# verdict names the deciding part (the failing or inconclusive one, or the one with the least
# margin when all hold). A per-cell check returns the problems it found in one cell. Each rule
# takes a summary (results.py) and its section of the thresholds (thresholds.py).
from __future__ import annotations

import math
from dataclasses import dataclass, field

HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "FAILS", "INCONCLUSIVE"
STATUSES = (HOLDS, FAILS, INCONCLUSIVE)


class RuleError(ValueError):
    """A rule made a part or verdict lac cannot read (an unknown status, a margin that is not a
    number): the claim that made it fails, naming the value; no other claim is touched."""


@dataclass(frozen=True)
class Part:
    name: str
    status: str
    margin: float  # distance to the nearest threshold; >= 0 means met
    detail: str
    numbers: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # margin and each number -> 95% [lo, hi]

    def __post_init__(self):
        """Checked when made: a typo such as "FAIL" must not read as met."""
        if self.status not in STATUSES:
            raise RuleError(f"part {self.name!r}: status {self.status!r} is not one of "
                            f"{', '.join(STATUSES)} (use rules.HOLDS, rules.FAILS or "
                            "rules.INCONCLUSIVE)")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)):
            raise RuleError(f"part {self.name!r}: margin {self.margin!r} is not a number")


@dataclass(frozen=True)
class Verdict:
    claim: str
    subject: str  # "model / grid"
    status: str
    deciding: Part | None
    parts: tuple[Part, ...]
    preconditions: tuple[Part, ...] = ()  # met (HOLDS) or not (INCONCLUSIVE: the verdict too)
    fragile: tuple[str, ...] = ()  # parts whose interval holds their threshold and would flip it

    def __post_init__(self):
        if self.status not in STATUSES:
            raise RuleError(f"{self.claim}: verdict status {self.status!r} is not one of "
                            f"{', '.join(STATUSES)}")
        bad = next((p for p in (*self.parts, *self.preconditions) if not isinstance(p, Part)),
                   None)
        if bad is not None:
            raise RuleError(f"{self.claim}: {bad!r} is not a rules.Part")

    def explain(self) -> str:
        head = f"{self.claim} {self.status} on {self.subject}"
        return head + (f": {self.deciding.name}: {self.deciding.detail}" if self.deciding else "")


def _cmp(met: bool, op: str) -> str:
    """The comparison as it stands: `op` where met, its negation where not ("0.639 (< 0.8)")."""
    return op if met else {"<=": ">", ">=": "<"}[op]


def _part(name, ok: bool, margin: float, detail: str, numbers: dict) -> Part:
    return Part(name, HOLDS if ok else FAILS, margin, detail, numbers)


def _undecided(name: str, detail: str, margin: float = math.nan) -> Part:
    return Part(name, INCONCLUSIVE, margin, detail)


def combine(claim: str, subject: str, parts: list[Part]) -> Verdict:
    """FAILS if any part fails, else INCONCLUSIVE if any part is, else HOLDS; the deciding part is
    the one with the smallest margin among those of the verdict's status."""
    for p in parts:
        if not isinstance(p, Part):
            raise RuleError(f"{claim}: {p!r} is not a rules.Part")
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


def _each_probe(claim: str, summary, t, missing, decide) -> Verdict:
    """One part per probe of the thresholds: `missing(probe)` is the INCONCLUSIVE part of a probe
    that cannot be decided (or None), `decide(probe)` the part of one that can."""
    parts = [missing(probe) or decide(probe) for probe in t.probes]
    return combine(claim, summary.label, parts)


def _unswept_part(summary, probe: str) -> Part | None:
    return None if probe in summary.kl_add else _unswept(probe)


def c1(summary, t) -> Verdict:
    band = _band(summary, t.max_depth_fraction)

    def missing(probe):
        return _unswept_part(summary, probe) or (None if band else _undecided(
            probe, f"no swept layer with depth fraction <= {t.max_depth_fraction}"))

    def decide(probe):
        best = min(band, key=lambda layer: summary.kl_add[probe][layer].median)
        s = summary.kl_add[probe][best]
        ok = s.median <= t.max_median_kl
        return _part(probe, ok, t.max_median_kl - s.median,
                     f"smallest median additive KL in the band is {s.median:.4f} at L{best} "
                     f"({'<=' if ok else '>'} {t.max_median_kl})",
                     {"layer": best, "median": s.median, "p25": s.p25, "p75": s.p75})
    return _each_probe("C1", summary, t, missing, decide)


def c1l(summary, t) -> Verdict:
    lo, hi = min(summary.layers, default=None), max(summary.layers, default=None)

    def missing(probe):
        return _unswept_part(summary, probe) or (None if len(summary.layers) >= 2 else _undecided(
            probe, "needs at least two swept layers"))

    def decide(probe):
        a, b = summary.kl_add[probe][lo].median, summary.kl_add[probe][hi].median
        ok = b >= t.min_ratio * a
        ratio = b / a if a > 0 else math.inf
        return _part(probe, ok, ratio - t.min_ratio,  # a ratio's margin: no unit
                     f"median KL L{hi} {b:.4f} vs L{lo} {a:.4f}: ratio {ratio:.2f} "
                     f"({'>=' if ok else '<'} {t.min_ratio})",
                     {"shallowest": lo, "deepest": hi, "median_shallowest": a,
                      "median_deepest": b, "ratio": ratio})
    return _each_probe("C1L", summary, t, missing, decide)


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
                               f"median cos(dX,dY) {xy:.3f} ({_cmp(xy <= t.max_cos_x_y, '<=')} "
                               f"{t.max_cos_x_y}), cos(dXY,dX+dY) {s:.3f} "
                               f"({_cmp(s >= t.min_cos_xy_sum, '>=')} {t.min_cos_xy_sum}), "
                               f"difference {s - xy:.3f} "
                               f"({_cmp(s - xy >= t.min_difference, '>=')} {t.min_difference})",
                               {"cos_x_y": xy, "cos_xy_sum": s, "difference": s - xy}))
    return combine("C2", summary.label, parts)


def _no_null(summary, probe: str) -> Part | None:
    """The INCONCLUSIVE part of a probe without null runs (C5, C6), or None when it has them."""
    if summary.kl_null is None:
        return _undecided(probe, "no null control was run (h_BB substituted alone)")
    return None if probe in summary.kl_null else _unswept(probe)


def c5(summary, t) -> Verdict:
    band = _band(summary, t.max_depth_fraction)

    def decide(probe):
        null = {layer: summary.kl_null[probe][layer].median for layer in band}
        informative = [layer for layer in band if null[layer] >= t.min_null_kl]
        if not informative:
            return _undecided(probe, "no informative layer in the band: largest median null KL "
                                     f"{max(null.values(), default=math.nan):.4f} "
                                     f"< {t.min_null_kl}")

        def margin(layer):
            a = summary.kl_add[probe][layer].median
            return min(t.max_additive_kl - a, t.max_additive_over_null * null[layer] - a)

        best = max(informative, key=margin)
        a, n = summary.kl_add[probe][best].median, null[best]
        return _part(probe, margin(best) >= 0, margin(best),
                     f"at L{best} median additive KL {a:.4f} vs null {n:.4f} (need <= "
                     f"{t.max_additive_kl} and <= {t.max_additive_over_null} x null); "
                     f"informative layers {informative}",
                     {"layer": best, "additive": a, "null": n, "informative_layers": informative})
    return _each_probe("C5", summary, t, lambda probe: _no_null(summary, probe), decide)


def unexplained(summary, probe: str, layer: int) -> float | None:
    """U = median additive KL / median null KL at a site, the share the sum leaves unexplained
    (F = 1 - U). None where the null median is 0: the site carries nothing to explain, so F is
    undefined there, never 1 or NaN."""
    null = summary.kl_null[probe][layer].median
    return summary.kl_add[probe][layer].median / null if null > 0 else None


def faithfulness(summary) -> dict:
    """probe -> layer -> F = 1 - U (None where undefined); {} without a null control."""
    if summary.kl_null is None:
        return {}
    return {p: {k: (None if (u := unexplained(summary, p, k)) is None else 1 - u)
                for k in summary.layers} for p in summary.probes if p in summary.kl_null}


def c6(summary, t) -> Verdict:
    """C1L's question in normalized form: does the unexplained share grow with depth?"""
    deep = max(summary.layers, default=None)

    def decide(probe):
        null = {layer: summary.kl_null[probe][layer].median for layer in summary.layers}
        informative = [layer for layer in summary.layers if null[layer] >= t.min_null_kl]
        if len(informative) < 2 or deep not in informative:
            return _undecided(probe, f"informative layers {informative} (median null KL >= "
                                     f"{t.min_null_kl}): needs two, the deepest swept "
                                     f"(L{deep}, null {null.get(deep, math.nan):.4f}) among them")
        lo = min(informative)
        u_lo, u_hi = unexplained(summary, probe, lo), unexplained(summary, probe, deep)
        ok = u_hi >= t.min_ratio * u_lo and u_hi > 0
        margin = u_hi - t.min_ratio * u_lo if u_hi > 0 else min(0.0, u_hi - t.min_ratio * u_lo)
        ratio = u_hi / u_lo if u_lo > 0 else math.inf
        return _part(probe, ok, margin,
                     f"unexplained share U = 1 - F at L{deep} {u_hi:.3f} vs L{lo} "
                     f"{u_lo:.3f}: ratio {ratio:.2f} ({'>=' if ok else '<'} "
                     f"{t.min_ratio}{'' if u_hi > 0 else ', and U at the deepest is 0'}); "
                     f"informative layers {informative}",
                     {"shallowest": lo, "deepest": deep, "unexplained_shallowest": u_lo,
                      "unexplained_deepest": u_hi, "F_shallowest": 1 - u_lo,
                      "F_deepest": 1 - u_hi, "ratio": ratio, "informative_layers": informative})
    return _each_probe("C6", summary, t, lambda probe: _no_null(summary, probe), decide)


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


