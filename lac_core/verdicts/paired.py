"""Checkpoint against checkpoint: the paired difference of every deciding number between two runs
of the same grid (other models, dtypes or kernels), with a simultaneous interval (numpy only)."""
# Paired: both runs are resampled with the SAME two-way rows (uncertainty.resample: the same
# personas and tasks drawn in both), each run's summary is built by results.SUMMARIES and judged
# by the claim's own rule, and the difference B - A of each deciding number (a part's margin and
# numbers) is taken per resample. What personas and tasks share cancels, so the interval is that
# of the change, not of two independent spreads.
#
# Corrected: a comparison reads dozens of numbers (8 claims, a part per probe, several numbers
# each), so 95% intervals one by one would flag some by chance. The band is a max-|t|
# simultaneous band over every number compared: each difference's resampled deviation from its
# full-grid value is scaled by its bootstrap standard deviation, and the 95th percentile c of the
# largest scaled deviation over all numbers, resample by resample, gives d +- c sd for each. It
# covers all of them at once with 95% (family-wise), like Bonferroni, but keeps the numbers'
# correlation (a margin and the median it is made of move together), so it is narrower than
# Bonferroni's, and it needs no percentile beyond the resamples (Bonferroni over 60 numbers would
# ask for the 0.04th percentile of 2000 resamples: less than one draw).
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import rules
from .results import SUMMARIES
from .uncertainty import STRUCTURAL, resample

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """One deciding number of one part in both runs, and B - A over the cells both share."""

    claim: str
    grid: str
    part: str
    number: str  # "margin" or a key of the part's numbers
    a: float
    b: float
    a_interval: tuple[float, float] | None  # each run's own 95% percentile interval
    b_interval: tuple[float, float] | None
    diff: float  # B - A on the full grid
    draws: np.ndarray  # B - A on each paired resample (NaN where either run has no value)
    band: tuple[float, float] | None = None  # simultaneous, from `simultaneous`

    @property
    def sd(self) -> float:
        d = self.draws[np.isfinite(self.draws)]
        return float(d.std()) if d.size >= 2 else math.nan

    @property
    def significant(self) -> bool:
        return self.band is not None and not self.band[0] <= 0 <= self.band[1]

    @property
    def worse(self) -> bool:
        """A margin significantly lower in B: the part moved towards (or further past) its line."""
        return self.number == "margin" and self.significant and self.band[1] < 0


def shared_design(rec_a, rec_b) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The crossed design both records share (same cells, each with the same persona and task);
    ValueError naming what differs otherwise."""
    if tuple(rec_a.cells) != tuple(rec_b.cells):
        raise ValueError(f"{rec_a.grid}: the runs hold other cells ({len(rec_a.cells)} / "
                         f"{len(rec_b.cells)})")
    if rec_a.design() != rec_b.design():
        raise ValueError(f"{rec_a.grid}: the cells sit at other personas and tasks in the runs")
    return rec_a.design()


def _parts(v: rules.Verdict) -> dict:
    return {p.name: p for p in (*v.preconditions, *v.parts)}


def _numbers(part: rules.Part) -> dict[str, float]:
    """margin and every measured number of a part (where it was read, not a measure, left out)."""
    out = {"margin": part.margin}
    out.update((k, x) for k, x in part.numbers.items() if k not in STRUCTURAL
               and isinstance(x, (int, float)) and not isinstance(x, bool))
    return {k: float(x) for k, x in out.items()}


def _values(v: rules.Verdict) -> dict[tuple[str, str], float]:
    """(part, number) -> value of every part and precondition of a verdict."""
    return {(name, k): x for name, p in _parts(v).items() for k, x in _numbers(p).items()}


def _column(boots: list[dict], key: tuple[str, str]) -> np.ndarray:
    """One number over the resamples: NaN where a resample has none or it is not finite."""
    x = np.array([t.get(key, math.nan) for t in boots], dtype=np.float64)
    return np.where(np.isfinite(x), x, np.nan)


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    v = values[np.isfinite(values)]
    return tuple(float(x) for x in np.percentile(v, [2.5, 97.5])) if v.size else None


@dataclass(frozen=True)
class Paired:
    """One claim on one grid in both runs: the verdicts on the full grid and the differences."""

    claim: str
    grid: str
    a: rules.Verdict
    b: rules.Verdict
    differences: tuple[Difference, ...]


def paired(claim: str, kind: str, rule, section, rec_a, rec_b, rows: np.ndarray) -> Paired:
    """The claim's rule on both records, on the full grid and on each row of `rows` (the SAME
    resampled cell indices for both), and the difference of every number both runs' full-grid
    verdicts hold (finite in both)."""
    summaries = SUMMARIES[kind]
    va, vb = rule(rec_a.summary, section), rule(rec_b.summary, section)
    boots_a = [_values(rule(s, section)) for s in summaries(rec_a, rows)]
    boots_b = [_values(rule(s, section)) for s in summaries(rec_b, rows)]
    pa, pb, out = _parts(va), _parts(vb), []
    for name in (n for n in pa if n in pb):
        na, nb = _numbers(pa[name]), _numbers(pb[name])
        for number in (k for k in na if k in nb and math.isfinite(na[k])
                       and math.isfinite(nb[k])):
            xa, xb = _column(boots_a, (name, number)), _column(boots_b, (name, number))
            out.append(Difference(claim, rec_a.grid, name, number, na[number], nb[number],
                                  _interval(xa), _interval(xb), nb[number] - na[number], xb - xa))
    return Paired(claim, rec_a.grid, va, vb, tuple(out))


def simultaneous(diffs: list[Difference], level: float = LEVEL) -> list[Difference]:
    """Each difference with its band: d +- c sd, c the `level` quantile over resamples of the
    largest |draw - d| / sd over every difference given (max-|t|: family-wise `level` for all of
    them at once). A difference with the same value in every resample (sd 0: both runs equal in
    every cell, or shifted by one constant) has the band [d, d]; one with fewer than two finite
    draws has none."""
    sds = np.array([d.sd for d in diffs])
    scaled = [np.abs(d.draws - d.diff) / sd for d, sd in zip(diffs, sds)
              if np.isfinite(sd) and sd > 0]
    if scaled:
        with np.errstate(all="ignore"):
            worst = np.nanmax(np.vstack(scaled), axis=0)
        worst = worst[np.isfinite(worst)]
        c = float(np.quantile(worst, level)) if worst.size else math.inf
    else:
        c = 0.0
    return [replace(d, band=None if not np.isfinite(sd) else (d.diff - c * sd, d.diff + c * sd))
            for d, sd in zip(diffs, sds)]


def rows_for(rec_a, rec_b) -> np.ndarray:
    """The two-way resample rows both runs are judged on: those lac's own intervals use."""
    return resample(*shared_design(rec_a, rec_b))
