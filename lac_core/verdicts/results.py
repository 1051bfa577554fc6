"""Result records of the experiments and the summaries the rules read (numpy, no torch)."""
# Records are written to results.json as they are (`dataclasses.asdict` and `jsonable`);
# docs/SCHEMA.md documents the fields once. Summaries are derived, cached, and written beside.
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .metrics import Summary

GEOMETRY_STATS = ("cos_xy_sum", "cos_x_y", "inter_over_xy", "delta_scale")
MARKER_CONDITIONS = ("clean", "additive", "remove_x", "bare")


@dataclass
class SweepSummary:
    """What the C1/C1L/C2/C5 rules read: per probe and layer, summaries over cells."""

    label: str
    n_layers: int
    layers: tuple[int, ...]  # the swept (causal) layers
    kl_add: dict  # probe -> layer -> Summary
    kl_null: dict | None  # probe -> layer -> Summary, or None where no null control was run
    geometry: dict  # probe -> layer -> stat -> Summary

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(self.kl_add)


@dataclass
class SweepResult:
    """Experiment 1 on one model and grid: per-cell numbers, kept whole to re-derive any summary."""

    model: str
    grid: str
    n_layers: int
    layers: tuple[int, ...]
    probes: tuple[str, ...]
    cells: tuple[str, ...]
    kl_add: np.ndarray  # [cell, probe, swept layer]
    kl_null: np.ndarray  # [cell, probe, swept layer]
    geometry: dict  # stat -> [cell, probe, layer 0..n_layers-1]
    references: dict  # cell -> {"tokens": [...], "text": str, "eos_in_reference": bool}
    plan: str = "fast"
    cost: dict = field(default_factory=dict)  # forward tokens, calls
    grid_sha256: str = ""
    checks: dict = field(default_factory=dict)  # the invariance checks of the run
    audit: dict = field(default_factory=dict)  # substitutions read back (hooks.Audit.record)

    @cached_property
    def summary(self) -> SweepSummary:
        def per(arr):
            return {probe: {k: Summary.of(arr[:, pi, li]) for li, k in enumerate(self.layers)}
                    for pi, probe in enumerate(self.probes)}

        geo = {probe: {k: {s: Summary.of(self.geometry[s][:, pi, k]) for s in GEOMETRY_STATS}
                       for k in range(self.n_layers)} for pi, probe in enumerate(self.probes)}
        return SweepSummary(f"{self.model} / {self.grid}", self.n_layers, tuple(self.layers),
                            per(self.kl_add), per(self.kl_null), geo)

    def cell_kl(self, kind: str, cell: str, probe: str, layer: int) -> float:
        arr = self.kl_add if kind == "additive" else self.kl_null
        return float(arr[self.cells.index(cell), self.probes.index(probe),
                         self.layers.index(layer)])


@dataclass
class MarkerSummary:
    """Experiment 2 counts over the marker grid: cells with any marker, mean distinct markers."""

    label: str
    n_cells: int
    any: dict  # condition -> count of cells with at least one marker
    distinct_mean: dict  # condition -> mean number of distinct markers per generation


@dataclass
class HostSummary:
    """Experiments 3 and 4: median KL to the target and median gap closed per intervention."""

    label: str
    n_cells: int
    median_host: float
    median_kl: dict  # intervention -> median KL(target || host with intervention)
    median_gap_closed: dict  # intervention -> median over cells of (KL_host - KL_int) / KL_host

    @classmethod
    def of(cls, label: str, host: dict, interventions: dict) -> "HostSummary":
        cells = sorted(host)
        gaps = {
            name: [(host[c] - kls[c]) / host[c] if host[c] > 0 else float("nan") for c in cells]
            for name, kls in interventions.items()
        }
        return cls(label, len(cells), Summary.of(host[c] for c in cells).median,
                   {name: Summary.of(kls[c] for c in cells).median
                    for name, kls in interventions.items()},
                   {name: Summary.of(g).median for name, g in gaps.items()})


@dataclass
class MarkerResult:
    """Experiment 2: the generations under four conditions and the markers found in each."""

    model: str
    grid: str
    layer: int
    n_new_tokens: int
    cells: tuple[str, ...]
    texts: dict  # cell -> condition -> text
    tokens: dict  # cell -> condition -> [ids]
    hits: dict  # cell -> condition -> [markers]
    stems: tuple[str, ...] = ()
    cost: dict = field(default_factory=dict)
    grid_sha256: str = ""
    audit: dict = field(default_factory=dict)  # substitutions read back (hooks.Audit.record)

    @cached_property
    def summary(self) -> MarkerSummary:
        n, conds, hits = len(self.cells), MARKER_CONDITIONS, [self.hits[c] for c in self.cells]
        return MarkerSummary(f"{self.model} / {self.grid}", n,
                             {c: sum(bool(h[c]) for h in hits) for c in conds},
                             {c: sum(len(h[c]) for h in hits) / n for c in conds})


@dataclass
class HostResult:
    """Experiments 3 and 4: KL(target || host) without and with injected vectors, per cell."""

    model: str
    grid: str
    layer: int
    layer_sets: tuple[tuple[int, ...], ...]
    cells: tuple[str, ...]
    kl: dict  # cell -> intervention ("host", "oracle", "cached", "layers a,b") -> KL
    target_tokens: dict  # cell -> 10 greedy target tokens (the window)
    cost: dict = field(default_factory=dict)
    grid_sha256: str = ""
    audit: dict = field(default_factory=dict)  # substitutions read back (hooks.Audit.record)

    def interventions(self) -> list[str]:
        return [k for k in self.kl[self.cells[0]] if k != "host"]

    @cached_property
    def summary(self) -> HostSummary:
        host = {c: self.kl[c]["host"] for c in self.cells}
        runs = {k: {c: self.kl[c][k] for c in self.cells} for k in self.interventions()}
        return HostSummary.of(f"{self.model} / {self.grid}", host, runs)


@dataclass
class SteeringResult:
    """Dose and swap at the marker site: per dose a, per cell, the generation, its markers and
    its KL to the clean run; per swap (cell of persona A, other persona B), the generation, A's
    and B's markers in it and in the clean text, and its KL to the clean run."""

    model: str
    grid: str
    layer: int
    n_new_tokens: int
    cells: tuple[str, ...]
    doses: tuple[float, ...]
    pairs: str  # "next", "all" or "custom"
    dose: dict  # str(a) -> cell -> {"tokens", "text", "hits", "kl"}
    swaps: list  # [{"cell", "persona", "other", "tokens", "text", "own_hits", "other_hits",
    #                "clean_own_hits", "clean_other_hits", "kl"}]
    cost: dict = field(default_factory=dict)
    grid_sha256: str = ""
    audit: dict = field(default_factory=dict)  # substitutions read back (hooks.Audit.record)


# Every experiment a run keeps a result of, declared once: its record and the name of its list in
# results.json (what the resume cache keeps, what the report writes). The first three are what a
# claim can read (claims.EXPERIMENTS); steering is read by the report only.
RECORDS = {"sweep": (SweepResult, "sweeps"), "markers": (MarkerResult, "markers"),
           "host": (HostResult, "host_injection"), "steering": (SteeringResult, "dose_and_swap")}


def jsonable(obj):
    """Plain JSON values from records: arrays and tuples to lists, numpy scalars to Python, keys to
    strings, and non-finite floats (undefined angles) to null, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
