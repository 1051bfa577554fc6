"""Result records of the experiments and the summaries the rules read (numpy, no torch)."""
# Records are written to results.json as they are (`plain` and `jsonable`); docs/SCHEMA.md
# documents the fields once. Summaries are derived, cached, and written beside.
#
# Everything a rule or a cell check receives is read-only: records and summaries are frozen, their
# dicts are ReadOnlyDict, their lists tuples, their arrays not writeable. A user's rule that
# writes into what it was given fails at its own line instead of moving another claim's verdict.
#
# A summary is built by one function per experiment over rows of cell indices ([B, k]): the full
# grid is one row holding every cell once, a resample (uncertainty.py) is a row of the cells it
# drew. So a rule reads the same fields, built the same way, on the full grid and in every
# resample. Summaries are lazy (Table): a field is computed, for every row at once, when a rule
# first reads it.
from __future__ import annotations

from collections.abc import Mapping
import math
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from .kinds import Kind
from .metrics import Summary, cell_stats

READ_ONLY = ("read-only: what lac hands a rule or a cell check cannot be changed (it would move "
             "other claims' verdicts); copy what you need: dict(x), list(x), np.array(x)")


class ReadOnlyDict(dict):
    """A dict that refuses every change after it is made (still a dict: JSON, asdict, isinstance)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError(READ_ONLY)

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickle and deepcopy rebuild it whole, never item by item
        return (type(self), (dict(self),))


def read_only(obj):
    """`obj` with every dict, list and array inside it made read-only (arrays in place)."""
    if isinstance(obj, np.ndarray):
        obj.setflags(write=False)
        return obj
    if isinstance(obj, dict):
        return ReadOnlyDict((k, read_only(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return tuple(read_only(v) for v in obj)
    return obj


class Table(Mapping):
    """A read-only mapping over fixed keys whose values are made on first read, then kept."""

    __slots__ = ("_keys", "_make", "_made")

    def __init__(self, keys, make: Callable):
        self._keys, self._make, self._made = dict.fromkeys(keys), make, {}

    def __getitem__(self, key):
        if key in self._made:
            return self._made[key]
        if key not in self._keys:
            raise KeyError(key)
        value = self._made[key] = self._make(key)
        return value

    def __setitem__(self, key, value):
        raise TypeError(READ_ONLY)

    __delitem__ = __setitem__

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Table({dict(self.items())!r})"

    def __reduce__(self):  # a pickled or copied Table is its values, read-only
        return (ReadOnlyDict, (dict(self.items()),))


def plain(obj):
    """Plain dicts, lists and values from records and summaries (tables read whole): what
    results.json is written from."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


class _Frozen:
    """Base of the frozen records and summaries: containers made read-only once, when made."""

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, read_only(getattr(self, f.name)))


class _Stats:
    """Summary fields over the cells of each row of `idx`, per named array, computed for every row
    at once on first read (cell_stats: the full grid is one row)."""

    def __init__(self, arrays: Mapping, idx: np.ndarray):
        self.arrays, self.idx, self.done = arrays, idx, {}

    def summary(self, name: str, at: tuple) -> Summary:
        if name not in self.done:
            self.done[name] = cell_stats(np.asarray(self.arrays[name])[self.idx])
        return Summary.at(self.done[name], at)


def full_grid(n_cells: int) -> np.ndarray:
    """The one row of cell indices that is the whole grid."""
    return np.arange(n_cells)[None, :]


# Per cell, probe and layer (metrics.geometry): the angles and ratio the claims read, the deltas'
# scale, and the norms they are made of, |h_BB|, |dX|, |dY|, |dXY| and |Inter| (docs/own-claim.md).
GEOMETRY_STATS = ("cos_xy_sum", "cos_x_y", "inter_over_xy", "delta_scale", "norm_bb", "norm_dx",
                  "norm_dy", "norm_dxy", "norm_inter")
MARKER_CONDITIONS = ("clean", "additive", "remove_x", "bare")


@dataclass(frozen=True)
class SweepSummary(_Frozen):
    """What the C1/C1L/C2/C5 rules read: per probe and layer, summaries over cells."""

    label: str
    n_layers: int
    layers: tuple[int, ...]  # the swept (causal) layers
    kl_add: Mapping  # probe -> layer -> Summary
    kl_null: Mapping | None  # probe -> layer -> Summary, or None where no null control was run
    geometry: Mapping  # probe -> layer (every layer) -> stat -> Summary

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(self.kl_add)


@dataclass(frozen=True)
class _Crossed(_Frozen):
    """Where each cell sits in the grid's crossed design: persona_index[i] and task_index[i] are
    the positions of cell i's persona and task in the grid (persona-major order, from the grid,
    never parsed from cell ids). What the two-way resampling of uncertainty.py draws from."""

    def design(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = len(self.cells)
        if len(self.persona_index) != n or len(self.task_index) != n:
            raise ValueError(f"{self.model} / {self.grid}: the result does not say which persona "
                             f"and task each of its {n} cells has (persona_index, task_index)")
        return tuple(self.persona_index), tuple(self.task_index)


@dataclass(frozen=True)
class SweepResult(_Crossed):
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
    persona_index: tuple[int, ...] = ()  # per cell: its persona's position in the grid
    task_index: tuple[int, ...] = ()  # per cell: its task's position in the grid

    @cached_property
    def summary(self) -> SweepSummary:
        return sweep_summaries(self, full_grid(len(self.cells)))[0]

    def cell_kl(self, kind: str, cell: str, probe: str, layer: int) -> float:
        arr = self.kl_add if kind == "additive" else self.kl_null
        return float(arr[self.cells.index(cell), self.probes.index(probe),
                         self.layers.index(layer)])


def sweep_summaries(r: SweepResult, idx: np.ndarray) -> list[SweepSummary]:
    """The sweep's summary over the cells of each row of `idx` ([B, k] cell indices)."""
    stats = _Stats({"kl_add": r.kl_add, "kl_null": r.kl_null, **r.geometry}, idx)
    pi, li = {p: i for i, p in enumerate(r.probes)}, {k: i for i, k in enumerate(r.layers)}

    def kl(name: str, b: int) -> Table:
        return Table(r.probes, lambda p: Table(
            r.layers, lambda k: stats.summary(name, (b, pi[p], li[k]))))

    def geometry(b: int) -> Table:
        return Table(r.probes, lambda p: Table(range(r.n_layers), lambda k: Table(
            tuple(r.geometry), lambda s: stats.summary(s, (b, pi[p], k)))))

    label = f"{r.model} / {r.grid}"
    return [SweepSummary(label, r.n_layers, tuple(r.layers), kl("kl_add", b), kl("kl_null", b),
                         geometry(b)) for b in range(idx.shape[0])]


@dataclass(frozen=True)
class MarkerSummary(_Frozen):
    """Experiment 2 counts over the marker grid: cells with any marker, mean distinct markers."""

    label: str
    n_cells: int
    any: Mapping  # condition -> count of cells with at least one marker
    distinct_mean: Mapping  # condition -> mean number of distinct markers per generation


@dataclass(frozen=True)
class HostSummary(_Frozen):
    """Experiments 3 and 4: median KL to the target and median gap closed per intervention."""

    label: str
    n_cells: int
    median_host: float
    median_kl: Mapping  # intervention -> median KL(target || host with intervention)
    median_gap_closed: Mapping  # intervention -> median over cells of (KL_host - KL_int) / KL_host

    @classmethod
    def of(cls, label: str, host: dict, interventions: dict) -> "HostSummary":
        """From per-cell KLs given as dicts (the paper's published cells)."""
        cells = sorted(host)
        gaps = {
            name: [(host[c] - kls[c]) / host[c] if host[c] > 0 else float("nan") for c in cells]
            for name, kls in interventions.items()
        }
        return cls(label, len(cells), Summary.of(host[c] for c in cells).median,
                   {name: Summary.of(kls[c] for c in cells).median
                    for name, kls in interventions.items()},
                   {name: Summary.of(g).median for name, g in gaps.items()})


@dataclass(frozen=True)
class MarkerResult(_Crossed):
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
    persona_index: tuple[int, ...] = ()
    task_index: tuple[int, ...] = ()

    @cached_property
    def summary(self) -> MarkerSummary:
        return marker_summaries(self, full_grid(len(self.cells)))[0]


def marker_summaries(r: MarkerResult, idx: np.ndarray) -> list[MarkerSummary]:
    """The marker counts over the cells of each row of `idx` ([B, k] cell indices)."""
    found = {c: np.array([len(r.hits[cell][c]) for cell in r.cells], dtype=np.int64)[idx]
             for c in MARKER_CONDITIONS}
    any_ = {c: (f > 0).sum(1) for c, f in found.items()}
    mean = {c: f.sum(1) / idx.shape[1] for c, f in found.items()}
    label = f"{r.model} / {r.grid}"
    return [MarkerSummary(label, idx.shape[1], {c: int(any_[c][b]) for c in MARKER_CONDITIONS},
                          {c: float(mean[c][b]) for c in MARKER_CONDITIONS})
            for b in range(idx.shape[0])]


@dataclass(frozen=True)
class HostResult(_Crossed):
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
    persona_index: tuple[int, ...] = ()
    task_index: tuple[int, ...] = ()

    def interventions(self) -> list[str]:
        return [k for k in self.kl[self.cells[0]] if k != "host"]

    @cached_property
    def summary(self) -> HostSummary:
        return host_summaries(self, full_grid(len(self.cells)))[0]


def host_summaries(r: HostResult, idx: np.ndarray) -> list[HostSummary]:
    """Median host KL, median KL and median gap closed per intervention over the cells of each row
    of `idx` ([B, k] cell indices); a cell whose host KL is 0 has no gap (left out)."""
    names = r.interventions()
    host = np.array([r.kl[c]["host"] for c in r.cells], dtype=np.float64)
    runs = {k: np.array([r.kl[c][k] for c in r.cells], dtype=np.float64) for k in names}
    with np.errstate(all="ignore"):
        gaps = {k: np.where(host > 0, (host - v) / host, np.nan) for k, v in runs.items()}
    stats = _Stats({"host": host, **{("kl", k): v for k, v in runs.items()},
                    **{("gap", k): v for k, v in gaps.items()}}, idx)
    label = f"{r.model} / {r.grid}"
    return [HostSummary(label, idx.shape[1], stats.summary("host", (b,)).median,
                        {k: stats.summary(("kl", k), (b,)).median for k in names},
                        {k: stats.summary(("gap", k), (b,)).median for k in names})
            for b in range(idx.shape[0])]


@dataclass(frozen=True)
class SteeringResult(_Frozen):
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


SUMMARIES = {Kind.SWEEP: sweep_summaries, Kind.MARKERS: marker_summaries,
             Kind.HOST: host_summaries}


# Every experiment a run keeps a result of, declared once: its record and the name of its list in
# results.json (what the resume cache keeps, what the report writes). The first three are what a
# claim can read (claims.EXPERIMENTS); steering is read by the report only.
RECORDS = {Kind.SWEEP: (SweepResult, "sweeps"), Kind.MARKERS: (MarkerResult, "markers"),
           Kind.HOST: (HostResult, "host_injection"),
           Kind.STEERING: (SteeringResult, "dose_and_swap")}


def record_from_json(kind: str, raw: Mapping):
    """The record of an experiment (RECORDS) from its entry in results.json: per-cell arrays back
    to float arrays (null, an undefined value, to NaN), lists back to tuples where the record
    holds tuples, and what results.json adds beside a record (summary, faithfulness, its grid's
    label) left out. What `jsonable` wrote, read back."""
    cls = RECORDS[kind][0]
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in raw.items() if k in names}
    if kind == Kind.SWEEP:
        values["kl_add"] = np.array(values["kl_add"], dtype=np.float64)
        values["kl_null"] = np.array(values["kl_null"], dtype=np.float64)
        values["geometry"] = {k: np.array(v, dtype=np.float64)
                              for k, v in values["geometry"].items()}
        values["layers"] = tuple(int(x) for x in values["layers"])
    if kind == Kind.HOST:
        values["kl"] = {c: {k: math.nan if x is None else float(x) for k, x in kl.items()}
                        for c, kl in values["kl"].items()}
    if kind == Kind.STEERING:
        values["doses"] = tuple(float(a) for a in values["doses"])
    for key in ("cells", "probes", "persona_index", "task_index", "layer_sets", "stems"):
        if key in values:
            values[key] = tuple(tuple(x) if isinstance(x, list) else x for x in values[key])
    return cls(**values)


def jsonable(obj):
    """Plain JSON values from records: arrays and tuples to lists, numpy scalars to Python, keys to
    strings, and non-finite floats (undefined angles) to null, so the file is strict JSON."""
    if isinstance(obj, Mapping):
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
