"""Uncertainty of every deciding number: 95% percentile intervals from resampling a grid's cells."""
# The cells of a grid are resampled with replacement (fixed seed, RESAMPLES times), jointly: one
# resample uses the same cells for every condition, layer and probe. Each resample's summaries
# (medians over its cells, computed for all resamples at once with numpy) go through the same
# rule as the full grid, so every interval is of the very number the rule decides on. The
# verdict stays the rule on the full grid; it is FRAGILE when a part's margin interval holds
# its threshold (0) and flipping that part alone would change the verdict. Runs are
# deterministic: the intervals say how much the cells disagree, not how a rerun could drift,
# so the regression gate does not use them.
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from . import claims as registry
from . import rules
from .metrics import Summary
from .results import MARKER_CONDITIONS, HostSummary, MarkerSummary, SweepSummary

RESAMPLES, SEED = 2000, 20260526
STRUCTURAL = {"layer", "shallowest", "deepest", "bound"}  # where a number was read, not a measure


def resample(n_cells: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n_cells] cell indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_cells, size=(resamples, n_cells))


def resampled_summaries(x: np.ndarray) -> np.ndarray:
    """Summaries over axis 1 of [B, cells, ...] values (NaN left out): an object array. Public
    so a test can hold it to np.nanpercentile bit for bit."""
    # np.percentile on the slices that hold no NaN gives nanpercentile's values bit for bit, 100x
    # faster (nanpercentile goes slice by slice through apply_along_axis): only the slices holding
    # a NaN (an undefined angle) take the NaN-aware path.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: an undefined summary
        p25, med, p75 = np.percentile(x, [25, 50, 75], axis=1)
        lo, hi, n = np.min(x, axis=1), np.max(x, axis=1), np.isfinite(x).sum(axis=1)
        holes = np.isnan(x).any(axis=1)
        if holes.any():
            rows = np.moveaxis(x, 1, -1)[holes]  # [slices with a NaN, cells]
            p25[holes], med[holes], p75[holes] = np.nanpercentile(rows, [25, 50, 75], axis=-1)
            lo[holes], hi[holes] = np.nanmin(rows, axis=-1), np.nanmax(rows, axis=-1)
    out = np.empty(med.shape, dtype=object)
    for i in np.ndindex(med.shape):
        out[i] = Summary(float(med[i]), float(p25[i]), float(p75[i]), float(lo[i]), float(hi[i]),
                         int(n[i]))
    return out


def resampled_already(kind: str, result) -> bool:
    """Whether the resampled summaries of this result are computed (a caller may say it waits)."""
    return kind in result.__dict__.get("_resampled", {})


def _sweeps(r, idx) -> list:
    """One SweepSummary per resample (geometry at the swept layers only: all the rules read)."""
    add, null = resampled_summaries(r.kl_add[idx]), resampled_summaries(r.kl_null[idx])
    stats = ("cos_xy_sum", "cos_x_y")
    geo = {s: resampled_summaries(r.geometry[s][:, :, list(r.layers)][idx]) for s in stats}
    out = []
    for b in range(idx.shape[0]):
        per = [{p: {k: a[b, pi, li] for li, k in enumerate(r.layers)}
                for pi, p in enumerate(r.probes)} for a in (add, null)]
        g = {p: {k: {s: geo[s][b, pi, li] for s in stats} for li, k in enumerate(r.layers)}
             for pi, p in enumerate(r.probes)}
        out.append(SweepSummary(r.summary.label, r.n_layers, tuple(r.layers), per[0], per[1], g))
    return out


def _markers(r, idx) -> list:
    found = {c: np.array([len(r.hits[cell][c]) for cell in r.cells])[idx]
             for c in MARKER_CONDITIONS}
    any_ = {c: (f > 0).sum(1) for c, f in found.items()}
    mean = {c: f.mean(1) for c, f in found.items()}
    return [MarkerSummary(r.summary.label, idx.shape[1], {c: int(any_[c][b]) for c in any_},
                          {c: float(mean[c][b]) for c in mean}) for b in range(idx.shape[0])]


def _hosts(r, idx) -> list:
    names = r.interventions()
    host = np.array([r.kl[c]["host"] for c in r.cells])
    runs = {k: np.array([r.kl[c][k] for c in r.cells]) for k in names}
    with np.errstate(all="ignore"):
        gaps = {k: np.where(host > 0, (host - v) / host, np.nan) for k, v in runs.items()}
    med = lambda a: np.nanmedian(a[idx], axis=1)  # noqa: E731
    h, kl = med(host), {k: med(v) for k, v in runs.items()}
    gap = {k: med(v) for k, v in gaps.items()}
    return [HostSummary(r.summary.label, idx.shape[1], float(h[b]),
                        {k: float(kl[k][b]) for k in names}, {k: float(gap[k][b]) for k in names})
            for b in range(idx.shape[0])]


RESAMPLED = {"sweep": _sweeps, "markers": _markers, "host": _hosts}


def resampled(kind: str, result) -> list:
    """The result's summaries on every resample, computed once per result."""
    cache = result.__dict__.setdefault("_resampled", {})
    if kind not in cache:
        cache[kind] = RESAMPLED[kind](result, resample(len(result.cells)))
    return cache[kind]


def _interval(values: list) -> list | None:
    v = np.asarray([x for x in values if isinstance(x, (int, float)) and np.isfinite(x)], float)
    return [float(x) for x in np.percentile(v, [2.5, 97.5])] if v.size else None


def _with_intervals(part, boots: list) -> rules.Part:
    same = [next((p for p in (*b.parts, *b.preconditions) if p.name == part.name), None)
            for b in boots]
    keys = ["margin", *(k for k, x in part.numbers.items()
                        if isinstance(x, (int, float)) and k not in STRUCTURAL)]
    found = {k: _interval([getattr(p, k, None) if k == "margin" else p.numbers.get(k)
                           for p in same if p is not None]) for k in keys}
    return replace(part, intervals={k: v for k, v in found.items() if v is not None})


def _flipped(v, name: str) -> set[str]:
    """The verdicts if the part `name` alone went the other way."""
    out, status = set(), next((p.status for p in v.parts if p.name == name), None)
    other = {rules.HOLDS: (rules.FAILS,), rules.FAILS: (rules.HOLDS,)}
    for to in other.get(status, (rules.HOLDS, rules.FAILS)):
        parts = [replace(p, status=to) if p.name == name else p for p in v.parts]
        pres = [replace(p, status=rules.INCONCLUSIVE if p.status == rules.HOLDS else rules.HOLDS)
                if p.name == name else p for p in v.preconditions]
        ok = all(p.status == rules.HOLDS for p in pres)
        out.add(rules.combine(v.claim, v.subject, parts).status if ok else rules.INCONCLUSIVE)
    return out


def judge(claim: str, result, thresholds) -> rules.Verdict:
    """The claim's verdict on the full grid, with an interval on every deciding number of every
    part and precondition, and the parts that make it FRAGILE."""
    kind, rule = registry.CLAIMS[claim].experiment, registry.CLAIMS[claim].rule
    t = getattr(thresholds, claim)
    v = rule(result.summary, t)
    boots = [rule(s, t) for s in resampled(kind, result)]
    parts = tuple(_with_intervals(p, boots) for p in v.parts)
    pres = tuple(_with_intervals(p, boots) for p in v.preconditions)
    fragile = tuple(p.name for p in (*pres, *parts) if "margin" in p.intervals
                    and p.intervals["margin"][0] <= 0 <= p.intervals["margin"][1]
                    and _flipped(v, p.name) - {v.status})
    deciding = next((p for p in (*pres, *parts) if v.deciding and p.name == v.deciding.name),
                    v.deciding)
    return replace(v, parts=parts, preconditions=pres, deciding=deciding, fragile=fragile)


def faithfulness_table(result, min_null_kl: float) -> dict:
    """probe -> layer -> {"F", "interval", "informative"}: normalized faithfulness F = 1 - median
    additive KL / median null KL (None where the null median is 0: undefined, not 1), its 95%
    interval over the same resamples as the verdicts, and whether the site is informative
    (median null KL >= min_null_kl, C6's line). Computed once per result and line: the report,
    its figure and results.json all read it."""
    cache = result.__dict__.setdefault("_faithfulness", {})
    if min_null_kl not in cache:
        cache[min_null_kl] = _faithfulness(result, min_null_kl)
    return cache[min_null_kl]


def _faithfulness(result, min_null_kl: float) -> dict:
    full = rules.faithfulness(result.summary)
    boots = [rules.faithfulness(s) for s in resampled("sweep", result)]
    return {p: {k: {"F": f, "interval": _interval([b[p][k] for b in boots]),
                    "informative": result.summary.kl_null[p][k].median >= min_null_kl}
                for k, f in per.items()} for p, per in full.items()}
