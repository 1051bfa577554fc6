"""Every claim, declared once: its id, its statement, the experiment whose result it reads, its
rule, its thresholds and its per-cell checks. What lists claims (the report's rows, the sections
of a thresholds file, which experiment a grid must run, the intervals, the paper's replay)
derives from this registry, so a claim a user registers from their own files is a first-class
one (docs/own-claim.md)."""
# Report order is registration order: lac's eight claims first, then users' in the order their
# conftest or plugin registered them. Registering the same declaration twice (a conftest imported
# again) is a no-op; another declaration under a taken id is an error.
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from . import cells, rules
from .results import RECORDS

EXPERIMENTS = tuple(k for k in RECORDS if k != "steering")  # the results a claim can read
Names = tuple[str, ...]  # a threshold that is a list of names (probes)


@dataclass(frozen=True)
class CellCheck:
    """A per-cell check: `check(result, cell, thresholds) -> [problems]` on one experiment."""

    name: str  # what cell_gate is called with, and the key of its findings in expectations
    experiment: str
    check: Callable


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


CLAIMS: dict[str, Claim] = {}
CELL_CHECKS: dict[str, CellCheck] = {}


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


def of_experiment(experiment: str) -> list[Claim]:
    return [c for c in CLAIMS.values() if c.experiment == experiment]


def builtin() -> list[Claim]:
    """lac's own claims: the ones the paper's published data is replayed against."""
    return [c for c in CLAIMS.values() if c.builtin]


def _lac(id, statement, experiment, rule, thresholds, checks=()):
    register(Claim(id, statement, experiment, rule, thresholds,
                   tuple(CellCheck(n, experiment, getattr(cells, n)) for n in checks),
                   builtin=True))


PROBES = {"probes": Names}
_lac("C1", "h_BB + dX + dY substituted in an early/mid layer leaves the output essentially "
     "clean: median 10-token KL <= 0.1 nats at p_last, g1 and g2", "sweep", rules.c1,
     {**PROBES, "max_depth_fraction": float, "max_median_kl": float}, ("additive_vs_null",))
_lac("C1L", "... and only there: the median KL at the deepest swept layer is at least twice "
     "the shallowest's", "sweep", rules.c1l, {**PROBES, "min_ratio": float})
_lac("C2", "persona and task directions are partially orthogonal: cos(dX, dY) <= 0.5 while "
     "cos(dXY, dX + dY) >= 0.8 at every swept layer", "sweep", rules.c2,
     {**PROBES, "max_cos_x_y": float, "min_cos_xy_sum": float, "min_difference": float},
     ("sum_beats_alignment",))
_lac("C3", "the additive substitution keeps persona markers near the clean count; the bare task "
     "prompt loses them", "markers", rules.c3,
     {"min_clean_fraction": float, "min_additive_over_clean": float, "max_bare_over_clean": float},
     ("additive_keeps_marker",))
_lac("C3R", "removing dX at one site barely changes the persona markers", "markers", rules.c3r,
     {"min_clean_fraction": float, "min_remove_x_over_clean": float})
_lac("C4", "a cached vector injected into a persona-free host prompt, even the oracle h_XY, "
     "closes at most a third of the KL gap, at one layer or many", "host", rules.c4,
     {"min_host_kl": float, "max_gap_closed": float}, ("oracle_no_worse",))
_lac("C5", "(ours) C1 counts only at informative sites: where h_BB alone costs >= 0.05 nats, "
     "additive costs <= 0.1 and <= half of it", "sweep", rules.c5,
     {**PROBES, "max_depth_fraction": float, "min_null_kl": float, "max_additive_kl": float,
      "max_additive_over_null": float})
_lac("C6", "(ours) C1L normalized: the share the sum leaves unexplained, U = KL_add / KL_null, "
     "at least doubles from the shallowest informative to the deepest swept layer", "sweep",
     rules.c6, {**PROBES, "min_null_kl": float, "min_ratio": float})
