"""Decomposition geometry and summaries over cells (numpy only)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


NOISE = 1e-6  # a delta below this share of |h_BB| is float32 noise: zero, its angle undefined


def _cos(a: np.ndarray, b: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Cosine along the last axis; NaN where either vector is at most `floor` long (no angle)."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(-1) / (na * nb)
    return np.where((na > floor) & (nb > floor), out, np.nan)


def geometry(h_bb, h_xb, h_by, h_xy) -> dict[str, np.ndarray]:
    """cos(dXY, dX+dY), cos(dX, dY), |Inter|/|dXY| and the deltas' scale min(|dX|, |dY|)/|h_BB|
    from the four conditions' residuals, in float64."""
    bb, xb, by, xy = (np.asarray(h, dtype=np.float64) for h in (h_bb, h_xb, h_by, h_xy))
    dx, dy, dxy = xb - bb, by - bb, xy - bb
    inter, n_bb = dxy - dx - dy, np.linalg.norm(bb, axis=-1)
    floor = NOISE * n_bb
    n_xy = np.linalg.norm(dxy, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(n_xy > floor, np.linalg.norm(inter, axis=-1) / n_xy, np.nan)
        scale = np.minimum(np.linalg.norm(dx, axis=-1), np.linalg.norm(dy, axis=-1)) / n_bb
    return {"cos_xy_sum": _cos(dxy, dx + dy, floor), "cos_x_y": _cos(dx, dy, floor),
            "inter_over_xy": ratio, "delta_scale": scale}


@dataclass(frozen=True)
class Summary:
    """Median, quartiles and range over cells (NaNs, undefined angles, are left out and counted)."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values) -> "Summary":
        v = np.asarray(list(values), dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, 0)
        p25, med, p75 = np.percentile(v, [25, 50, 75])
        return cls(float(med), float(p25), float(p75), float(v.min()), float(v.max()), int(v.size))

    def to_dict(self) -> dict:
        return asdict(self)
