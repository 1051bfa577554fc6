"""Result records of the experiments and the summaries the rules read (numpy, no torch).

Every record turns into plain JSON (`to_json`); reports/SCHEMA.md documents the fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import Summary

GEOMETRY_STATS = ("cos_xy_sum", "cos_x_y", "inter_over_xy")


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
    """Experiment 1 on one model and grid: per-cell numbers, kept whole so any summary can be re-derived."""

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
    cost: dict = field(default_factory=dict)  # forward tokens, calls, wall seconds

    def summary(self) -> SweepSummary:
        def per(arr, layer_ids):
            return {
                probe: {layer: Summary.of(arr[:, pi, li]) for li, layer in enumerate(layer_ids)}
                for pi, probe in enumerate(self.probes)
            }

        all_layers = tuple(range(self.n_layers))
        geo = {
            probe: {
                layer: {s: Summary.of(self.geometry[s][:, pi, layer]) for s in GEOMETRY_STATS}
                for layer in all_layers
            }
            for pi, probe in enumerate(self.probes)
        }
        return SweepSummary(
            label=f"{self.model} / {self.grid}", n_layers=self.n_layers, layers=tuple(self.layers),
            kl_add=per(self.kl_add, self.layers), kl_null=per(self.kl_null, self.layers), geometry=geo,
        )

    def cell_kl(self, kind: str, cell: str, probe: str, layer: int) -> float:
        arr = self.kl_add if kind == "additive" else self.kl_null
        return float(arr[self.cells.index(cell), self.probes.index(probe), self.layers.index(layer)])

    def to_json(self) -> dict:
        return {
            "experiment": "localized_sweep",
            "model": self.model,
            "grid": self.grid,
            "plan": self.plan,
            "n_layers": self.n_layers,
            "layers": list(self.layers),
            "probes": list(self.probes),
            "cells": {
                cell: {
                    "reference": self.references[cell],
                    "kl": {
                        probe: {
                            str(layer): {
                                "additive": float(self.kl_add[ci, pi, li]),
                                "null": float(self.kl_null[ci, pi, li]),
                            }
                            for li, layer in enumerate(self.layers)
                        }
                        for pi, probe in enumerate(self.probes)
                    },
                    "geometry": {
                        probe: {
                            s: [None if not np.isfinite(v) else float(v) for v in self.geometry[s][ci, pi]]
                            for s in GEOMETRY_STATS
                        }
                        for pi, probe in enumerate(self.probes)
                    },
                }
                for ci, cell in enumerate(self.cells)
            },
            "cost": self.cost,
        }


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
        return cls(
            label=label, n_cells=len(cells), median_host=Summary.of(host[c] for c in cells).median,
            median_kl={name: Summary.of(kls[c] for c in cells).median for name, kls in interventions.items()},
            median_gap_closed={name: Summary.of(g).median for name, g in gaps.items()},
        )


MARKER_CONDITIONS = ("clean", "additive", "remove_x", "bare")


@dataclass
class MarkerResult:
    """Experiment 2: the generations under four conditions and the markers found in each."""

    model: str
    layer: int
    n_new_tokens: int
    cells: tuple[str, ...]
    texts: dict  # cell -> condition -> text
    tokens: dict  # cell -> condition -> [ids]
    hits: dict  # cell -> condition -> [markers]
    stems: tuple[str, ...] = ()

    def summary(self) -> MarkerSummary:
        n = len(self.cells)
        return MarkerSummary(
            label=f"{self.model} / markers", n_cells=n,
            any={c: sum(bool(self.hits[cell][c]) for cell in self.cells) for c in MARKER_CONDITIONS},
            distinct_mean={c: sum(len(self.hits[cell][c]) for cell in self.cells) / n for c in MARKER_CONDITIONS},
        )

    def to_json(self) -> dict:
        s = self.summary()
        return {
            "experiment": "markers", "model": self.model, "layer": self.layer, "n_new_tokens": self.n_new_tokens,
            "conditions": list(MARKER_CONDITIONS), "stems": list(self.stems),
            "cells": {cell: {c: {"text": self.texts[cell][c], "tokens": self.tokens[cell][c],
                                 "hits": self.hits[cell][c], "any": bool(self.hits[cell][c]),
                                 "distinct": len(self.hits[cell][c])} for c in MARKER_CONDITIONS}
                      for cell in self.cells},
            "summary": {c: {"any": s.any[c], "distinct_mean": s.distinct_mean[c]} for c in MARKER_CONDITIONS},
        }


@dataclass
class HostResult:
    """Experiments 3 and 4: KL(target || host) without and with injected vectors, per cell."""

    model: str
    layer: int
    layer_sets: tuple[tuple[int, ...], ...]
    cells: tuple[str, ...]
    kl: dict  # cell -> intervention ("host", "oracle", "cached", "layers a,b") -> KL
    target_tokens: dict  # cell -> 10 greedy target tokens (the window)

    def interventions(self) -> list[str]:
        return [k for k in self.kl[self.cells[0]] if k != "host"]

    def summary(self) -> HostSummary:
        host = {c: self.kl[c]["host"] for c in self.cells}
        return HostSummary.of(f"{self.model} / markers", host,
                              {k: {c: self.kl[c][k] for c in self.cells} for k in self.interventions()})

    def to_json(self) -> dict:
        s = self.summary()
        return {
            "experiment": "host_injection", "model": self.model, "layer": self.layer,
            "layer_sets": [list(x) for x in self.layer_sets],
            "cells": {c: {"target_tokens": self.target_tokens[c], "kl": self.kl[c]} for c in self.cells},
            "summary": {"median_host": s.median_host, "median_kl": s.median_kl,
                        "median_gap_closed": s.median_gap_closed},
        }
