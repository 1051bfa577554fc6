"""Uncertainty of every deciding number: 95% percentile intervals from resampling the grid's
personas and tasks (the two-way bootstrap of a crossed design)."""
# A grid is crossed: every persona meets every task, so two cells sharing a persona (or a task)
# are not independent draws, and resampling cells one by one under-counts the variation between
# personas and between tasks (intervals too narrow, FRAGILE marks missed: docs/method.md shows it
# by simulation). One resample draws P personas with replacement and T tasks with replacement and
# takes every cell of the pairs drawn: P x T cells, repeats included. Fixed seed, RESAMPLES times,
# jointly: one resample uses the same cells for every condition, layer and probe. Each resample's
# summary is built by the same function as the full grid's (results.SUMMARIES) and goes through
# the same rule, so every interval is of the very number the rule decides on. The verdict stays
# the rule on the full grid; it is FRAGILE when a part's margin interval holds its threshold (0)
# and flipping that part alone would change the verdict. Runs are deterministic: the intervals say
# how much personas, tasks and cells disagree, not how a rerun could drift, so the regression gate
# does not use them.
from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import claims as registry
from . import rules
from .kinds import Kind
from .metrics import Summary, cell_stats
from .results import SUMMARIES

RESAMPLES, SEED = 2000, 20260526
STRUCTURAL = {"layer", "shallowest", "deepest", "bound"}  # where a number was read, not a measure
WHAT = "personas and tasks, two-way"  # what is resampled, as progress lines and reports say it


def resample(persona_index, task_index, resamples: int = RESAMPLES,
             seed: int = SEED) -> np.ndarray:
    """[resamples, P x T] cell indices of the two-way bootstrap: per resample, P personas and T
    tasks drawn with replacement, and every cell of the pairs drawn (persona-major). Cell i has
    persona persona_index[i] and task task_index[i]; every pair must be a cell."""
    persona, task = np.asarray(persona_index, int), np.asarray(task_index, int)
    if persona.shape != task.shape or persona.ndim != 1 or persona.size == 0:
        raise ValueError("persona_index and task_index: one entry per cell, at least one cell")
    n_p, n_t = int(persona.max()) + 1, int(task.max()) + 1
    cell_of = np.full((n_p, n_t), -1)
    if persona.min() >= 0 and task.min() >= 0:  # a negative index would wrap round silently
        cell_of[persona, task] = np.arange(persona.size)
    if (cell_of < 0).any() or persona.size != n_p * n_t:
        raise ValueError(f"the cells are not a crossed {n_p} x {n_t} design: each persona must "
                         "meet each task exactly once")
    rng = np.random.default_rng(seed)
    ps = rng.integers(0, n_p, size=(resamples, n_p))
    ts = rng.integers(0, n_t, size=(resamples, n_t))
    return cell_of[ps[:, :, None], ts[:, None, :]].reshape(resamples, n_p * n_t)


def resample_cells(n_cells: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n_cells] cell indices drawn one by one with replacement: the cell-wise
    bootstrap lac used before, kept for the coverage simulation (tests/test_coverage.py) only."""
    return np.random.default_rng(seed).integers(0, n_cells, size=(resamples, n_cells))


def resampled_summaries(x: np.ndarray) -> np.ndarray:
    """Summaries over axis 1 of [B, cells, ...] values (NaN left out): an object array. Public
    so a test can hold the fast path to np.nanpercentile bit for bit."""
    st = cell_stats(x)
    out = np.empty(st["median"].shape, dtype=object)
    for i in np.ndindex(out.shape):
        out[i] = Summary.at(st, i)
    return out


def resampled_already(kind: str, result) -> bool:
    """Whether the resampled summaries of this result are computed (a caller may say it waits)."""
    return kind in result.__dict__.get("_resampled", {})


def resampled(kind: str, result) -> list:
    """The result's summaries on every resample, computed once per result (kept beside it: the
    record itself is frozen)."""
    cache = result.__dict__.setdefault("_resampled", {})
    if kind not in cache:
        cache[kind] = SUMMARIES[kind](result, resample(*result.design()))
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
    boots = [rules.faithfulness(s) for s in resampled(Kind.SWEEP, result)]
    return {p: {k: {"F": f, "interval": _interval([b[p][k] for b in boots]),
                    "informative": result.summary.kl_null[p][k].median >= min_null_kl}
                for k, f in per.items()} for p, per in full.items()}
