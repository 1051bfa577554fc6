"""The claims as decision rules: summaries in, Verdict out (plain Python, no torch, no numpy).

A rule with parts FAILS if any part fails, else is INCONCLUSIVE if any part is,
else HOLDS; the verdict names the deciding part (the failing or inconclusive
one, or the one with the least margin when all hold).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import FixtureError
from .paths import FIXTURES

HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "FAILS", "INCONCLUSIVE"
CLAIMS = ("C1", "C1L", "C2", "C3", "C3R", "C4", "C5")


@dataclass(frozen=True)
class Part:
    name: str
    status: str
    margin: float  # distance to the nearest threshold; >= 0 means met
    detail: str
    numbers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    claim: str
    subject: str  # "model / grid"
    status: str
    deciding: Part | None
    parts: tuple[Part, ...]

    def explain(self) -> str:
        head = f"{self.claim} {self.status} on {self.subject}"
        return head + (f": {self.deciding.name}: {self.deciding.detail}" if self.deciding else "")

    def to_json(self) -> dict:
        def part(p: Part):
            return {"name": p.name, "status": p.status, "margin": _finite(p.margin), "detail": p.detail,
                    "numbers": {k: _finite(v) if isinstance(v, float) else v for k, v in p.numbers.items()}}
        return {"claim": self.claim, "subject": self.subject, "status": self.status,
                "deciding": part(self.deciding) if self.deciding else None, "parts": [part(p) for p in self.parts]}


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def combine(claim: str, subject: str, parts: list[Part]) -> Verdict:
    for status in (FAILS, INCONCLUSIVE):
        bad = [p for p in parts if p.status == status]
        if bad:
            return Verdict(claim, subject, status, min(bad, key=lambda p: p.margin), tuple(parts))
    if not parts:
        empty = Part("-", INCONCLUSIVE, math.nan, "no data to decide on")
        return Verdict(claim, subject, INCONCLUSIVE, empty, (empty,))
    return Verdict(claim, subject, HOLDS, min(parts, key=lambda p: p.margin), tuple(parts))


def load_thresholds(path: Path | str = FIXTURES / "claims.yaml") -> dict:
    """Threshold values by claim (rationales kept under '_why')."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FixtureError(f"cannot read thresholds {path}: {exc}") from exc
    out = {}
    for claim, body in raw.items():
        values, why = {}, {}
        for k, v in body.items():
            if isinstance(v, dict) and "value" in v:
                values[k], why[k] = float(v["value"]), v.get("why", "")
            else:
                values[k] = v
        values["_why"] = why
        out[claim] = values
    missing = [c for c in CLAIMS if c not in out]
    if missing:
        raise FixtureError(f"{path} lacks thresholds for {missing}")
    return out


def _band(summary, frac: float) -> list[int]:
    return [layer for layer in summary.layers if layer / summary.n_layers <= frac + 1e-12]


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def c1(summary, t: dict) -> Verdict:
    parts = []
    for probe in t["probes"]:
        band = _band(summary, t["max_depth_fraction"])
        if probe not in summary.kl_add or not band:
            parts.append(Part(probe, INCONCLUSIVE, math.nan,
                              f"no swept layer with depth fraction <= {t['max_depth_fraction']}"))
            continue
        best = min(band, key=lambda layer: summary.kl_add[probe][layer].median)
        s = summary.kl_add[probe][best]
        ok = s.median <= t["max_median_kl"]
        parts.append(Part(
            probe, HOLDS if ok else FAILS, t["max_median_kl"] - s.median,
            f"smallest median additive KL in the band is {s.median:.4f} at L{best} "
            f"({'<=' if ok else '>'} {t['max_median_kl']})",
            {"layer": best, "median": s.median, "p25": s.p25, "p75": s.p75},
        ))
    return combine("C1", summary.label, parts)


def c1l(summary, t: dict) -> Verdict:
    parts = []
    for probe in t["probes"]:
        if probe not in summary.kl_add or len(summary.layers) < 2:
            parts.append(Part(probe, INCONCLUSIVE, math.nan, "needs at least two swept layers"))
            continue
        lo, hi = min(summary.layers), max(summary.layers)
        a, b = summary.kl_add[probe][lo].median, summary.kl_add[probe][hi].median
        ok = b >= t["min_ratio"] * a
        ratio = b / a if a > 0 else math.inf
        parts.append(Part(
            probe, HOLDS if ok else FAILS, b - t["min_ratio"] * a,
            f"median KL L{hi} {b:.4f} vs L{lo} {a:.4f}: ratio {ratio:.2f} ({'>=' if ok else '<'} {t['min_ratio']})",
            {"shallowest": lo, "deepest": hi, "median_shallowest": a, "median_deepest": b, "ratio": ratio},
        ))
    return combine("C1L", summary.label, parts)


def c2(summary, t: dict) -> Verdict:
    parts = []
    for probe in t["probes"]:
        for layer in summary.layers:
            g = summary.geometry.get(probe, {}).get(layer)
            name = f"{probe} L{layer}"
            if g is None or _nan(g["cos_x_y"].median) or _nan(g["cos_xy_sum"].median):
                parts.append(Part(name, INCONCLUSIVE, math.nan, "no geometry at this site"))
                continue
            xy, s = g["cos_x_y"].median, g["cos_xy_sum"].median
            margins = (t["max_cos_x_y"] - xy, s - t["min_cos_xy_sum"], (s - xy) - t["min_difference"])
            ok = min(margins) >= 0
            parts.append(Part(
                name, HOLDS if ok else FAILS, min(margins),
                f"median cos(dX,dY) {xy:.3f} (<= {t['max_cos_x_y']}), cos(dXY,dX+dY) {s:.3f} "
                f"(>= {t['min_cos_xy_sum']}), difference {s - xy:.3f} (>= {t['min_difference']})",
                {"cos_x_y": xy, "cos_xy_sum": s, "difference": s - xy},
            ))
    return combine("C2", summary.label, parts)


def c5(summary, t: dict) -> Verdict:
    parts = []
    for probe in t["probes"]:
        if summary.kl_null is None:
            parts.append(Part(probe, INCONCLUSIVE, math.nan, "no null control was run (h_BB substituted alone)"))
            continue
        band = _band(summary, t["max_depth_fraction"])
        informative = [layer for layer in band if summary.kl_null[probe][layer].median >= t["min_null_kl"]]
        if not informative:
            top = max((summary.kl_null[probe][layer].median for layer in band), default=math.nan)
            parts.append(Part(probe, INCONCLUSIVE, math.nan,
                              f"no informative layer in the band: largest median null KL {top:.4f} "
                              f"< {t['min_null_kl']}"))
            continue

        def margin(layer):
            a, n = summary.kl_add[probe][layer].median, summary.kl_null[probe][layer].median
            return min(t["max_additive_kl"] - a, t["max_additive_over_null"] * n - a)

        best = max(informative, key=margin)
        a, n = summary.kl_add[probe][best].median, summary.kl_null[probe][best].median
        ok = margin(best) >= 0
        parts.append(Part(
            probe, HOLDS if ok else FAILS, margin(best),
            f"at L{best} median additive KL {a:.4f} vs null {n:.4f} (need <= {t['max_additive_kl']} and "
            f"<= {t['max_additive_over_null']} x null); informative layers {informative}",
            {"layer": best, "additive": a, "null": n, "informative_layers": informative},
        ))
    return combine("C5", summary.label, parts)


def _fraction_part(name, value, clean, factor, at_least: bool) -> Part:
    bound = factor * clean
    ok = value >= bound if at_least else value <= bound
    return Part(name, HOLDS if ok else FAILS, (value - bound) if at_least else (bound - value),
                f"{name} any-marker {value} {'>=' if at_least else '<='} {factor} x clean {clean} = {bound:.2f}"
                if ok else f"{name} any-marker {value} {'<' if at_least else '>'} {factor} x clean {clean} = {bound:.2f}",
                {"count": value, "clean": clean, "bound": bound})


def _marker_precondition(m, t, claim) -> Verdict | None:
    need = t["min_clean_fraction"] * m.n_cells
    if m.any["clean"] < need:
        p = Part("precondition", INCONCLUSIVE, m.any["clean"] - need,
                 f"clean any-marker {m.any['clean']}/{m.n_cells} < {t['min_clean_fraction']:.0%} of cells")
        return Verdict(claim, m.label, INCONCLUSIVE, p, (p,))
    return None


def c3(m, t: dict) -> Verdict:
    pre = _marker_precondition(m, t, "C3")
    if pre:
        return pre
    clean = m.any["clean"]
    return combine("C3", m.label, [
        _fraction_part("additive", m.any["additive"], clean, t["min_additive_over_clean"], True),
        _fraction_part("bare", m.any["bare"], clean, t["max_bare_over_clean"], False),
    ])


def c3r(m, t: dict) -> Verdict:
    pre = _marker_precondition(m, t, "C3R")
    if pre:
        return pre
    return combine("C3R", m.label, [
        _fraction_part("remove_x", m.any["remove_x"], m.any["clean"], t["min_remove_x_over_clean"], True),
    ])


def c4(h, t: dict) -> Verdict:
    """`h`: a HostSummary with median host KL and median gap closed per intervention."""
    if h.median_host < t["min_host_kl"]:
        p = Part("precondition", INCONCLUSIVE, h.median_host - t["min_host_kl"],
                 f"median KL(host) {h.median_host:.3f} < {t['min_host_kl']}: no gap worth closing")
        return Verdict("C4", h.label, INCONCLUSIVE, p, (p,))
    parts = []
    for name, gap in h.median_gap_closed.items():
        ok = gap <= t["max_gap_closed"]
        parts.append(Part(name, HOLDS if ok else FAILS, t["max_gap_closed"] - gap,
                          f"median gap closed {gap:.3f} ({'<=' if ok else '>'} {t['max_gap_closed']:.3f}); "
                          f"median KL host {h.median_host:.3f} -> {h.median_kl[name]:.3f}",
                          {"gap_closed": gap, "median_kl": h.median_kl[name], "median_host": h.median_host}))
    return combine("C4", h.label, parts)


SWEEP_RULES = {"C1": c1, "C1L": c1l, "C2": c2, "C5": c5}
