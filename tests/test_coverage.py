"""The interval method checked by simulation before it is trusted: grids with a known crossed
structure (persona, task and cell effects), the median of each grid, and how often lac's 95%
percentile interval holds the true median, resampling cells one by one against personas and tasks
two-way (uncertainty.resample). `python -m tests.test_coverage` prints the table of docs/method.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from lac_core.verdicts.uncertainty import resample, resample_cells

SHAPES = ((3, 3), (4, 3), (8, 3), (8, 6))  # the shipped grids: example, short, markers, long
SPLITS = {"cell-heavy": (0.1, 0.1, 0.8), "balanced": (1 / 3, 1 / 3, 1 / 3),
          "persona-heavy": (0.6, 0.2, 0.2)}  # shares of variance: persona, task, cell
EFFECTS = ("normal", "log-normal")
GRIDS, RESAMPLES, SEED = 1000, 1000, 20261206
CHUNK = 100  # grids medianed at once: [CHUNK, RESAMPLES, cells] float64 stays near 40 MB


def grids(shape, split, effect, n, rng) -> tuple[np.ndarray, float]:
    """[n, P*T] persona-major cell values y = g(a_p + b_t + e_pt), and the population median
    of y (0 for normal effects, 1 for log-normal: exp keeps the median of a symmetric sum)."""
    n_p, n_t = shape
    sd = np.sqrt(split)
    z = (rng.normal(0, sd[0], (n, n_p, 1)) + rng.normal(0, sd[1], (n, 1, n_t))
         + rng.normal(0, sd[2], (n, n_p, n_t)))
    return (np.exp(z) if effect == "log-normal" else z).reshape(n, n_p * n_t), \
        (1.0 if effect == "log-normal" else 0.0)


def covered(values: np.ndarray, idx: np.ndarray, truth: float) -> np.ndarray:
    """Per grid: whether the 2.5-97.5 percentile interval of the resampled medians holds truth."""
    hits = []
    for at in range(0, len(values), CHUNK):
        med = np.median(values[at:at + CHUNK][:, idx], axis=-1)  # [chunk, resamples]
        lo, hi = np.percentile(med, [2.5, 97.5], axis=1)
        hits.append((lo <= truth) & (truth <= hi))
    return np.concatenate(hits)


def simulate(shape, split, effect, n_grids=GRIDS, resamples=RESAMPLES, seed=SEED) -> dict:
    """Coverage of the true median, cell-wise and two-way, over n_grids simulated grids."""
    rng = np.random.default_rng([seed, *shape, int(1000 * split[0]), EFFECTS.index(effect)])
    values, truth = grids(shape, split, effect, n_grids, rng)
    persona = np.repeat(np.arange(shape[0]), shape[1])
    task = np.tile(np.arange(shape[1]), shape[0])
    return {"cell-wise": float(covered(values, resample_cells(persona.size, resamples), truth)
                               .mean()),
            "two-way": float(covered(values, resample(persona, task, resamples), truth).mean())}


@pytest.fixture(scope="module")
def table() -> dict:
    return {(shape, name, effect): simulate(shape, split, effect) for shape in SHAPES
            for name, split in SPLITS.items() for effect in EFFECTS}


def test_two_way_covers_the_largest_shipped_design(table):
    """On 8 x 6 (the long grid) the two-way interval holds the true median at least 92% of the
    time, whatever the split of variance and the shape of the effects."""
    low = {k: v["two-way"] for k, v in table.items() if k[0] == (8, 6) and v["two-way"] < 0.92}
    assert not low, f"two-way coverage under 92% on 8 x 6: {low}"


def test_two_way_beats_cell_wise_where_personas_or_tasks_vary(table):
    """Wherever persona or task variance is at least a quarter of the total, resampling cells one
    by one under-covers and the two-way bootstrap covers more."""
    worse = {k: v for k, v in table.items()
             if max(SPLITS[k[1]][:2]) >= 0.25 and not v["two-way"] > v["cell-wise"]}
    assert not worse, f"two-way not above cell-wise: {worse}"


def test_resampling_is_two_way_and_fixed():
    """A resample takes whole personas and whole tasks: every cell of the pairs drawn, so the
    cells of one row share exactly the drawn personas and tasks; same seed, same rows."""
    persona, task = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    idx = resample(persona, task, resamples=50)
    assert idx.shape == (50, 12) and np.array_equal(idx, resample(persona, task, resamples=50))
    for row in idx:
        drawn_p, drawn_t = persona[row].reshape(4, 3), task[row].reshape(4, 3)
        assert (drawn_p == drawn_p[:, :1]).all() and (drawn_t == drawn_t[:1, :]).all()
    with pytest.raises(ValueError, match="crossed"):
        resample(persona[:-1], task[:-1])  # a missing pair is not a crossed design


def markdown(table: dict) -> str:
    lines = ["| design | effects | variance persona / task / cell | cell-wise | two-way |",
             "|---|---|---|---|---|"]
    for (shape, name, effect), v in table.items():
        split = " / ".join(f"{x:.2f}" for x in SPLITS[name])
        lines.append(f"| {shape[0]} x {shape[1]} | {effect} | {split} ({name}) | "
                     f"{v['cell-wise']:.1%} | {v['two-way']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown({(shape, name, effect): simulate(shape, split, effect) for shape in SHAPES
                    for name, split in SPLITS.items() for effect in EFFECTS}))
