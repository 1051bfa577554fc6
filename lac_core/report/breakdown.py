"""Where composition breaks and how much persona a vector carries: a check's failing cells worst
first (by the severity its declaration names), the anti-steering share, dose and swap tables, persona x task matrices (numpy, no torch)."""
from __future__ import annotations

import numpy as np

from ..verdicts import claims as registry
from ..verdicts.results import MarkerResult, SteeringResult
from ..verdicts.rules import c1


def matrix(cells, values: dict) -> tuple[list[str], list[str], np.ndarray]:
    """Personas (rows), tasks (columns) in grid order and the [persona, task] values (NaN where a
    cell has none). `cells` are the grid's Cell objects, `values` is keyed by cell id: a cell's
    persona and task come from the grid, since an id cannot be split (a key may contain '__')."""
    cells = [c for c in cells if c.id in values]
    personas = {p: i for i, p in enumerate(dict.fromkeys(c.persona_key for c in cells))}
    tasks = {t: i for i, t in enumerate(dict.fromkeys(c.task_key for c in cells))}
    out = np.full((len(personas), len(tasks)), np.nan)
    for c in cells:
        out[personas[c.persona_key], tasks[c.task_key]] = values[c.id]
    return list(personas), list(tasks), out


def deciding_kl(sweep, thresholds, probe: str = "p_last") -> tuple[int | None, dict]:
    """C1's deciding layer for a probe and each cell's additive KL there."""
    part = next((p for p in c1(sweep.summary, thresholds.C1).parts if p.name == probe), None)
    layer = part.numbers.get("layer") if part else None
    if layer is None:
        return None, {}
    return layer, {c: sweep.cell_kl("additive", c, probe, layer) for c in sweep.cells}


def worst_first(check: str, result, cells, thresholds) -> list[tuple[str, float]]:
    """The failing cells by how far each is from passing its check (its declared severity)."""
    c = registry.CELL_CHECKS[check]
    return ranked({cell: c.severity_of(result, cell, thresholds) for cell in cells})


def ranked(severity: dict) -> list[tuple[str, float]]:
    """(cell, severity) pairs, worst first, ties by cell id."""
    return sorted(severity.items(), key=lambda cs: (-cs[1], cs[0]))


def anti_steering(m: MarkerResult) -> dict:
    """Cells whose additive generation holds fewer distinct persona markers than the bare task
    prompt's, among the cells whose clean text has any of its persona's markers."""
    eligible = [c for c in m.cells if m.hits[c]["clean"]]
    cells = [c for c in eligible if len(m.hits[c]["additive"]) < len(m.hits[c]["bare"])]
    return {"eligible": len(eligible), "n_cells": len(m.cells), "count": len(cells),
            "share": len(cells) / len(eligible) if eligible else None, "cells": cells}


def dose_table(s: SteeringResult) -> list[dict]:
    rows = []
    for a in s.doses:
        d = s.dose[str(a)]
        kls = [v["kl"] for v in d.values()]
        rows.append({"a": a, "n_cells": len(d),
                     "any_marker": sum(bool(v["hits"]) for v in d.values()),
                     "distinct_mean": float(np.mean([len(v["hits"]) for v in d.values()])),
                     "median_kl": float(np.median(kls)) if kls else None})
    return rows


def wilson(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """The 95% Wilson score interval of k successes in n trials (None when n is 0): unlike the
    normal approximation it stays inside 0-1 and is not empty at 0 of 3, the usual swap count."""
    if not n:
        return None
    p, den = k / n, 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, float(mid - half)), min(1.0, float(mid + half))]


def swap_share(s: SteeringResult) -> dict:
    """Over the swaps whose clean (A, Y) text has A's markers: the share where A's markers
    disappear and B's appear, against the base rate of B's markers in those clean texts; each
    with its Wilson interval over those swaps, taken as independent trials."""
    eligible = [w for w in s.swaps if w["clean_own_hits"]]
    switched = [w for w in eligible if not w["own_hits"] and w["other_hits"]]
    base = [w for w in eligible if w["clean_other_hits"]]
    n = len(eligible)
    return {"swaps": len(s.swaps), "eligible": n, "switched": len(switched),
            "share": len(switched) / n if n else None,
            "base_rate": len(base) / n if n else None,
            "share_interval": wilson(len(switched), n), "base_rate_interval": wilson(len(base), n),
            "own_kept": sum(bool(w["own_hits"]) for w in eligible),
            "other_appeared": sum(bool(w["other_hits"]) for w in eligible),
            "cells": [f"{w['cell']} -> {w['other']}" for w in switched]}
