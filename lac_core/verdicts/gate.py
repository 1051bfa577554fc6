"""The regression gate's outcome, typed and made once (run/gating.py): the terminal lines, the
JUnit case lac/regression_gate, results.json, REPORT.md and SUMMARY.md all render from it, and
nothing parses what another rendered."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

PASSED, FAILED, NOT_APPLIED = "passed", "failed", "not applied"
STATUSES = (PASSED, FAILED, NOT_APPLIED)


@dataclass(frozen=True)
class Drift:
    """A deciding number outside its baseline +- tolerance (two-sided); `quantity` is the
    baseline's key, e.g. "C1/g1/median"."""

    model: str
    grid: str
    quantity: str
    baseline: float
    value: float
    tolerance: float


@dataclass(frozen=True)
class Changed:
    """A verdict unlike the recorded one."""

    claim: str
    model: str
    grid: str
    expected: str
    got: str


def line(item: Drift | Changed) -> str:
    """One drifted number or changed verdict, as the terminal and the run's first line say it."""
    if isinstance(item, Drift):
        return (f"{item.model} / {item.grid}: {item.quantity}: baseline {item.baseline}, now "
                f"{item.value:.6g}, tolerance {item.tolerance}")
    return f"{item.claim} on {item.model} / {item.grid}: expected {item.expected}, got {item.got}"


@dataclass(frozen=True)
class CellOutcome:
    """A per-cell check whose outcome ("fails" | "passes") is not the expected one."""

    check: str
    model: str
    grid: str
    cell: str
    expected: str
    got: str


def _count(items, what: str, how: str) -> str:
    n = len(items or ())
    return "" if not n else f"{n} {what}{'' if n == 1 or what.endswith('s') else 's'} {how}"


@dataclass(frozen=True)
class GateOutcome:
    """What the gate found. `updating`: the run rewrote the expectations (--lac-update-baselines
    or --lac-regen-all), so nothing was compared; `rewritten` what it changed, `review` whether
    that fails the run until it is reviewed."""

    status: str
    why: str = ""  # when not applied: why not
    drift: tuple[Drift, ...] = ()
    changed_verdicts: tuple[Changed, ...] = ()
    without_expectations: tuple[str, ...] = ()  # "model / setup / grid" with nothing recorded
    unexpected_cells: tuple[CellOutcome, ...] = ()
    refused: tuple[str, ...] = ()  # pytest-xdist workers' results not merged, and why
    updating: bool = False
    rewritten: tuple[str, ...] = ()
    review: bool = False

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"gate status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping | None) -> "GateOutcome | None":
        """The outcome results.json holds (None: the run ended before the gate was applied)."""
        if d is None:
            return None
        kinds = {"drift": Drift, "changed_verdicts": Changed, "unexpected_cells": CellOutcome}
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        for key, kind in kinds.items():
            values[key] = tuple(kind(**x) for x in values.get(key) or ())
        for key in ("without_expectations", "refused", "rewritten"):
            values[key] = tuple(values.get(key) or ())
        values.setdefault("updating", "review" in d)  # files written before the field
        return cls(**values)

    def summary(self) -> tuple[str, str]:
        """The status and why, in words (REPORT.md, SUMMARY.md)."""
        if self.status == NOT_APPLIED:
            why = self.why or "the gate did not run"
            if self.review:
                why += (f"; {len(self.rewritten)} changes to review: the run fails until it is "
                        "rerun without --lac-update-baselines")
            return NOT_APPLIED, why
        bits = [_count(self.drift, "deciding number", "beyond tolerance"),
                _count(self.changed_verdicts, "verdict", "changed"),
                _count(self.refused, "worker's results", "refused")]
        why = "; ".join(b for b in bits if b) or "every deciding number within its baseline's " \
            "tolerance and every verdict as expected"
        if self.without_expectations:
            why += f"; not gated (no expectations): {', '.join(self.without_expectations)}"
        return self.status, why

    def failure_lines(self) -> list[str]:
        """Its failures as terminal (and JUnit) lines."""
        drift = [f"  {line(d)}" for d in self.drift]
        changed = [f"  {line(c)}" for c in self.changed_verdicts]
        return ([*(["lac: numeric drift beyond tolerance (regression gate):"] if drift else []),
                 *drift, *(["lac: verdicts that changed (regression gate):"] if changed else []),
                 *changed] + (["lac: if the change is intended, rerun with "
                               "--lac-update-baselines and review the diff"]
                              if drift or changed else []))
