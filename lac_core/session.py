"""A run's state and its end, callable without pytest."""
# The claim tests record verdicts and per-cell outcomes here; `finish` writes the report set, then
# either rewrites the expectations (`update_baselines`) or applies the regression gate.
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

from . import expected
from .report import write_report_set
from .settings import Settings
from .thresholds import Thresholds, load_thresholds


@dataclass
class Outcome:
    """What the end of a session says: lines to print, and whether the gate failed the run."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False


@dataclass
class Session:
    settings: Settings
    thresholds: Thresholds
    args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    provenance: dict = field(default_factory=dict)  # model -> provenance
    load_seconds: dict = field(default_factory=dict)  # model -> s
    results: dict = field(default_factory=dict)  # (model, grid, "sweep"|"markers"|"host") -> result
    verdicts: dict = field(default_factory=dict)  # (claim, model, grid) -> (Verdict, expected)
    cell_failures: dict = field(default_factory=dict)  # (check, model, grid) -> [cell ids]
    cell_checks: set = field(default_factory=set)  # (check, model, grid) that ran
    _expectations: dict = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, args=()) -> "Session":
        return cls(settings, load_thresholds(settings.claims_file), list(args))

    def expectations(self, model: str):
        if model not in self._expectations:
            self._expectations[model] = expected.load(model, self.settings.expected_dir)
        return self._expectations[model]

    def expected_verdict(self, claim: str, model: str, grid: str) -> str | None:
        exp = self.expectations(model)
        return exp.verdict(claim, grid) if exp else None

    def record_verdict(self, claim: str, model: str, grid: str, verdict) -> str | None:
        """Keep a verdict; return the model's expected status for it (None: none recorded)."""
        exp = self.expected_verdict(claim, model, grid)
        self.verdicts[(claim, model, grid)] = (verdict, exp)
        return exp

    def record_cell(self, check: str, model: str, grid: str, cell: str, problems: list) -> bool:
        """Keep a per-cell outcome; return whether the model's expectations list it as a finding."""
        self.cell_checks.add((check, model, grid))
        if problems:
            self.cell_failures.setdefault((check, model, grid), []).append(cell)
        exp = self.expectations(model)
        return bool(exp and exp.cell_fails(check, grid, cell))

    def run_info(self) -> dict:
        import numpy

        s = self.settings
        return {"run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started)),
                "wall_seconds": round(time.time() - self.started, 1), "plan": s.plan,
                "token_budget": s.token_budget, "models_requested": list(s.models),
                "grids": list(s.grids), "load_seconds": self.load_seconds,
                "numpy": numpy.__version__, "platform": platform.platform(),
                "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
                "args": self.args}

    def _by_model(self) -> dict:
        models = {m for (_c, m, _g) in self.verdicts}
        return {m: {k: v for k, v in self.verdicts.items() if k[1] == m} for m in models}

    def update_expectations(self) -> list[str]:
        """Record this run's verdicts, cell findings and deciding numbers as the expectations."""
        written = []
        for model, verdicts in self._by_model().items():
            exp = self.expectations(model) or expected.Expectations(model)
            cells = {(c, g): self.cell_failures.get((c, m, g), []) for (c, m, g) in self.cell_checks
                     if m == model}
            exp.record(verdicts, cells)
            written.append(str(expected.save(exp, self.settings.expected_dir)))
        return written

    def drift(self) -> list[str]:
        """Every deciding number outside its baseline's tolerance, per model."""
        msgs = []
        for model, verdicts in self._by_model().items():
            exp = self.expectations(model)
            if exp and exp.baselines:
                now = expected.quantities(verdicts)
                msgs += [f"{model}: {m}" for m in expected.drift(exp.baselines, now)]
        return msgs

    def finish(self) -> Outcome:
        """Write the report set, then update the expectations or apply the regression gate."""
        if not (self.verdicts or self.results):
            return Outcome()
        write_report_set(self, self.settings.report_dir)
        if self.settings.update_baselines:
            return Outcome([f"lac: wrote {path}" for path in self.update_expectations()])
        msgs = self.drift()
        if not msgs:
            return Outcome()
        return Outcome(["lac: numeric drift beyond tolerance (regression gate):",
                        *(f"  {m}" for m in msgs), "lac: if the change is intended, rerun with "
                        "--lac-update-baselines and review the diff"], failed=True)
