"""Every claim, declared once, with everything said about it: its id, its statement, the
experiment whose result it reads, its rule, its thresholds, the units of its margins, the
function naming the cells against a part's line, and its per-cell checks with their severities.
What lists or describes claims (the report's rows and units, the sections of a thresholds file,
which experiment a grid must run, the intervals, a failing gate's message, the worst cells, the
paper's replay) reads this registry, so a claim a user registers from their own files is a
first-class one (docs/own-claim.md)."""
# Report order is registration order: lac's eight claims first, then users' in the order their
# conftest or plugin registered them. Registering the same declaration twice (a conftest imported
# again) is a no-op; another declaration under a taken id is an error.
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import UsageError
from . import cells, rules
from .kinds import CLAIMED, Kind
from .results import GEOMETRY_STATS, RECORDS

EXPERIMENTS = tuple(k for k in RECORDS if k in CLAIMED)  # the results a claim can read
Names = tuple[str, ...]  # a threshold that is a list of names (probes)


@dataclass(frozen=True)
class CellCheck:
    """A per-cell check: `check(result, cell, thresholds) -> [problems]` on one experiment, and
    `severity(result, cell, thresholds) -> float`, how far a failing cell is from passing (larger
    is worse): REPORT.md lists failing cells worst first by it (None: 0 for every cell, so they
    are listed by id)."""

    name: str  # what cell_gate is called with, and the key of its findings in expectations
    experiment: str
    check: Callable
    severity: Callable | None = None

    def severity_of(self, result, cell: str, thresholds) -> float:
        return 0.0 if self.severity is None else float(self.severity(result, cell, thresholds))


@dataclass(frozen=True)
class Claim:
    """One claim. `rule(summary, section) -> rules.Verdict` reads the summary of `experiment`'s
    result (results.SweepSummary, MarkerSummary or HostSummary) and the claim's section of its
    thresholds file: `thresholds` maps each key of that section to float or Names."""

    id: str
    statement: str  # one line, the claim in words
    experiment: str
    rule: Callable
    thresholds: dict
    cell_checks: tuple[CellCheck, ...] = ()
    thresholds_file: Path | None = None  # None: lac's fixtures/claims.yaml
    builtin: bool = field(default=False, compare=False)
    # The unit of a part's margin, shown beside it in REPORT.md: "margin" for every part, a
    # part's name (e.g. "precondition") where that part's differs. None or {}: bare numbers.
    units: Mapping[str, str] | None = None
    # against(result, part, t) -> the cells on the wrong side of the deciding part's line: cell
    # ids, or (cell id, value) pairs; `t` is the claim's thresholds section. A failing gate names
    # them beside its numbers. None: no cells are named.
    against: Callable | None = None

    def unit(self, part: str) -> str:
        """The unit of `part`'s margin ('' when the claim declares none)."""
        return unit_of(self.units, part)


def unit_of(units: Mapping[str, str] | None, part: str) -> str:
    """A part's margin unit in a claim's `units` (as declared, or as results.json records it):
    the part's own, else the claim's "margin" unit, else ''."""
    units = units or {}
    return units.get(part) or units.get("margin", "")


@dataclass(frozen=True)
class CellMetric:
    """A per-cell statistic of a user's own, over the residuals the sweep captures (which are not
    kept): `compute(h_bb, h_xb, h_by, h_xy)` takes the four conditions' residuals, float64
    arrays [cell, layer, probe, d_model], and returns one value per [cell, layer, probe]. It
    runs when the sweep is computed and its values join `SweepResult.geometry[name]`, so a rule
    reads `summary.geometry[probe][layer][name]` (with intervals) like lac's own statistics."""

    name: str  # letters, digits and '_'; not one of lac's statistics (results.GEOMETRY_STATS)
    statement: str  # one line, what it measures
    compute: Callable

    def key(self) -> dict:
        """What enters the sweep's resume key: the name and the sha256 of the file that defines
        `compute` (an edit there computes the sweep again), and the function's name in it."""
        return {"name": self.name, "function": self.compute.__qualname__,
                "source_sha256": hashlib.sha256(Path(source_file(self)).read_bytes()).hexdigest()}

    def values(self, h_bb, h_xb, h_by, h_xy) -> np.ndarray:
        """`compute` on the four residual arrays, checked: float64 [cell, layer, probe]. Anything
        else (or an exception) is a MetricError naming the metric and its file."""
        shape = np.shape(h_bb)[:3]
        try:
            out = self.compute(*(np.array(h, dtype=np.float64) for h in (h_bb, h_xb, h_by, h_xy)))
        except Exception as exc:
            raise MetricError(f"cell metric {self.name} ({source_file(self)}) raised "
                              f"{type(exc).__name__}: {exc}") from exc
        arr = np.asarray(out) if isinstance(out, np.ndarray) else None
        if arr is None or arr.dtype.kind not in "fiu" or arr.shape != shape:
            got = (f"a {arr.dtype} array of shape {arr.shape}" if arr is not None
                   else type(out).__name__)
            raise MetricError(f"cell metric {self.name} ({source_file(self)}) returned {got}; "
                              f"it must return a numpy float array of shape {shape} "
                              "[cell, layer, probe]")
        return arr.astype(np.float64)


class MetricError(UsageError):
    """A user's cell metric that raised or returned something other than its values."""


def source_file(metric: CellMetric) -> str:
    """The file that defines the metric's function; UsageError when there is none to hash."""
    try:
        where = inspect.getsourcefile(metric.compute)
    except TypeError:
        where = None
    if not where or not Path(where).is_file():
        raise UsageError(f"cell metric {metric.name}: its function has no source file lac can "
                         "hash into the resume key; define it in a module or conftest file")
    return where


CLAIMS: dict[str, Claim] = {}
CELL_CHECKS: dict[str, CellCheck] = {}
METRICS: dict[str, CellMetric] = {}  # users' cell metrics, in registration order
TRIAL_SHAPE = (2, 3, 2, 8)  # [cell, layer, probe, d]: the synthetic residuals a metric is tried on


def register_metric(metric: CellMetric) -> CellMetric:
    """Add a cell metric (before its sweep is computed: a conftest or plugin module). It is tried
    at once on small synthetic residuals, so a metric that raises or returns the wrong shape stops
    the run before any model loads."""
    if not isinstance(metric, CellMetric):
        raise UsageError(f"register_metric takes a CellMetric, not {type(metric).__name__}")
    if not metric.name or not metric.name.replace("_", "").isalnum():
        raise UsageError(f"cell metric name {metric.name!r}: use letters, digits and '_' (it "
                         "names a statistic in the sweep's summary and in results.json)")
    if metric.name in GEOMETRY_STATS:
        raise UsageError(f"cell metric {metric.name}: lac computes a statistic of that name "
                         f"already ({', '.join(GEOMETRY_STATS)}); give yours another name")
    if not callable(metric.compute):
        raise UsageError(f"cell metric {metric.name}: compute must be a function")
    known = METRICS.get(metric.name)
    if known is not None and known != metric:
        raise UsageError(f"cell metric {metric.name} is registered already, with another "
                         "function; give yours another name")
    source_file(metric)
    rng = np.random.default_rng(0)
    metric.values(*(rng.standard_normal(TRIAL_SHAPE) for _ in range(4)))
    METRICS[metric.name] = metric
    return metric


def metric_keys() -> list[dict]:
    """Every registered metric's resume key, in registration order (empty: none)."""
    return [m.key() for m in METRICS.values()]


def register(claim: Claim) -> Claim:
    """Add a claim to the registry (before the session starts: a conftest or plugin module)."""
    if claim.experiment not in EXPERIMENTS:
        raise UsageError(f"claim {claim.id}: experiment {claim.experiment!r} is not one of "
                         f"{', '.join(EXPERIMENTS)}")
    if not claim.id or not claim.id.replace("_", "").isalnum() or claim.id in ("markers",
                                                                               "per_cell"):
        raise UsageError(f"claim id {claim.id!r}: use letters, digits and '_' (it names a "
                         "thresholds section, a report row and an expectations key)")
    known = CLAIMS.get(claim.id)
    if known is not None and known != claim:
        raise UsageError(f"claim {claim.id} is registered already, with another declaration; "
                         "give yours another id")
    for check in claim.cell_checks:
        if CELL_CHECKS.get(check.name, check) != check:
            raise UsageError(f"cell check {check.name} is registered already; rename yours")
        CELL_CHECKS[check.name] = check
    CLAIMS[claim.id] = claim
    return claim


def against(claim: str, part, result, thresholds) -> list[str]:
    """The cells against the deciding part's line, as a failing gate names them ('cell (value)'
    or 'cell'), from the claim's own `against` function ([] when it declares none)."""
    c = CLAIMS[claim]
    if c.against is None or part is None:
        return []
    return [f"{x[0]} ({x[1]:.3g})" if isinstance(x, tuple) else str(x)
            for x in c.against(result, part, getattr(thresholds, claim))]


def of_experiment(experiment: str) -> list[Claim]:
    return [c for c in CLAIMS.values() if c.experiment == experiment]


def builtin() -> list[Claim]:
    """lac's own claims: the ones the paper's published data is replayed against."""
    return [c for c in CLAIMS.values() if c.builtin]


def _lac(id, statement, experiment, rule, thresholds, units, checks=(), against=None):
    register(Claim(id, statement, experiment, rule, thresholds,
                   tuple(CellCheck(n, experiment, getattr(cells, n), getattr(cells, f"{n}_severity"))
                         for n in checks),
                   builtin=True, units=units, against=against))


PROBES = {"probes": Names}
_lac("C1", "h_BB + dX + dY substituted in an early/mid layer leaves the output essentially "
     "clean: median 10-token KL <= 0.1 nats at p_last, g1 and g2", Kind.SWEEP, rules.c1,
     {**PROBES, "max_depth_fraction": float, "max_median_kl": float}, {"margin": "nats"},
     ("additive_vs_null",), cells.c1_against)
_lac("C1L", "... and only there: the median KL at the deepest swept layer is at least twice "
     "the shallowest's", Kind.SWEEP, rules.c1l, {**PROBES, "min_ratio": float},
     {"margin": "ratio (deepest / shallowest median KL)"}, against=cells.c1l_against)
_lac("C2", "persona and task directions are partially orthogonal: cos(dX, dY) <= 0.5 while "
     "cos(dXY, dX + dY) >= 0.8 at every swept layer", Kind.SWEEP, rules.c2,
     {**PROBES, "max_cos_x_y": float, "min_cos_xy_sum": float, "min_difference": float},
     {"margin": "cosine"}, ("sum_beats_alignment",), cells.c2_against)
_lac("C3", "the additive substitution keeps persona markers near the clean count; the bare task "
     "prompt loses them", Kind.MARKERS, rules.c3,
     {"min_clean_fraction": float, "min_additive_over_clean": float, "max_bare_over_clean": float},
     {"margin": "cells"}, ("additive_keeps_marker",), cells.markers_against)
_lac("C3R", "removing dX at one site barely changes the persona markers", Kind.MARKERS, rules.c3r,
     {"min_clean_fraction": float, "min_remove_x_over_clean": float}, {"margin": "cells"},
     against=cells.markers_against)
_lac("C4", "a cached vector injected into a persona-free host prompt, even the oracle h_XY, "
     "closes at most a third of the KL gap, at one layer or many", Kind.HOST, rules.c4,
     {"min_host_kl": float, "max_gap_closed": float},
     {"margin": "share of the KL gap", "precondition": "nats"}, ("oracle_no_worse",),
     cells.c4_against)
_lac("C5", "(ours) C1 counts only at informative sites: where h_BB alone costs >= 0.05 nats, "
     "additive costs <= 0.1 and <= half of it", Kind.SWEEP, rules.c5,
     {**PROBES, "max_depth_fraction": float, "min_null_kl": float, "max_additive_kl": float,
      "max_additive_over_null": float}, {"margin": "nats"}, against=cells.c5_against)
_lac("C6", "(ours) C1L normalized: the share the sum leaves unexplained, U = KL_add / KL_null, "
     "at least doubles from the shallowest informative to the deepest swept layer", Kind.SWEEP,
     rules.c6, {**PROBES, "min_null_kl": float, "min_ratio": float},
     {"margin": "share unexplained (U)"}, against=cells.c6_against)
