"""A run's state and its end, callable without pytest."""
# `start` checks everything that can be checked before a model loads (preflight.py). The claim
# tests record verdicts and per-cell outcomes here; `finish` writes the report set, then either
# rewrites the expectations (`update_baselines`) or applies the regression gate.
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

from . import expected, preflight
from .progress import Progress
from .report import write_report_set
from .settings import Settings
from .thresholds import load_thresholds


@dataclass
class Outcome:
    """What the end of a session says: lines to print, and whether the gate failed the run."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False


@dataclass
class Session:
    settings: Settings
    thresholds: object
    checked: preflight.Checked
    args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    provenance: dict = field(default_factory=dict)  # model -> provenance
    load_seconds: dict = field(default_factory=dict)  # model -> s
    results: dict = field(default_factory=dict)  # (model, grid, "sweep"|"markers"|"host") -> result
    verdicts: dict = field(default_factory=dict)  # (claim, model, grid) -> (Verdict, expected)
    cell_failures: dict = field(default_factory=dict)  # (check, model, grid) -> [cell ids]
    cell_checks: set = field(default_factory=set)  # (check, model, grid) that ran
    threads: int = 0  # torch CPU threads of this process
    timings: dict = field(default_factory=dict)  # (model, grid, kind) -> wall seconds
    progress: Progress = field(default_factory=Progress)  # silent unless the plugin gives a say
    _expectations: dict = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, args=()) -> "Session":
        """Check the settings, grids, template and models; raises LacError before any work."""
        return cls(settings, load_thresholds(settings.claims_file), preflight.check(settings),
                   list(args))

    @property
    def grids(self) -> dict:
        return self.checked.grids

    def setup(self, model: str) -> str:
        """The part of an expectations key that is not the model or the grid."""
        return f"{self.checked.models[model].dtype} {self.checked.template.key}"

    def expectations(self, model: str):
        if model not in self._expectations:
            self._expectations[model] = expected.load(model, self.settings.expected_dir)
        return self._expectations[model]

    def _key(self, model: str, grid: str) -> tuple:
        return self.expectations(model), self.setup(model), self.grids[grid].key

    def record_verdict(self, claim: str, model: str, grid: str, verdict) -> str | None:
        """Keep a verdict; return the expected status for it (None: none recorded)."""
        exp, setup, key = self._key(model, grid)
        status = exp.verdict(setup, key, claim) if exp else None
        self.verdicts[(claim, model, grid)] = (verdict, status)
        return status

    def record_cell(self, check: str, model: str, grid: str, cell: str, problems: list) -> bool:
        """Keep a per-cell outcome; return whether the expectations list it as a finding."""
        self.cell_checks.add((check, model, grid))
        if problems:
            self.cell_failures.setdefault((check, model, grid), []).append(cell)
        exp, setup, key = self._key(model, grid)
        return bool(exp and exp.cell_fails(setup, key, check, cell))

    def unexpected(self) -> list[str]:
        """(model, setup, grid) that ran with no expectations recorded: the paper's rules decide."""
        pairs = sorted({(m, g) for (_c, m, g) in self.verdicts})
        return [f"{m} / {self.setup(m)} / {self.grids[g].key}" for m, g in pairs
                if not self.expectations(m)
                or not self.expectations(m).section(*self._key(m, g)[1:])]

    SHARED = ("provenance", "load_seconds", "timings", "results", "verdicts", "cell_failures",
              "cell_checks")

    def export(self) -> dict:
        """What a pytest-xdist worker sends the controller (see merge)."""
        return {name: getattr(self, name) for name in self.SHARED}

    def merge(self, other: dict) -> None:
        """Take in a worker's export: each model runs on one worker, so keys never collide."""
        for name in self.SHARED:
            mine = getattr(self, name)
            mine.update(other[name]) if isinstance(mine, (dict, set)) else None

    def run_info(self) -> dict:
        import numpy

        s, c = self.settings, self.checked
        return {"run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started)),
                "wall_seconds": round(time.time() - self.started, 1), "plan": s.plan,
                "token_budget": s.token_budget, "models_requested": list(s.models),
                "grids": {label: {"name": g.name, "sha256": g.sha256, "source": g.source,
                                  "experiments": list(g.experiments)}
                          for label, g in c.grids.items()},
                "chat_template": c.template.name, "layers": s.layers, "probes": list(s.probes),
                "dtype_option": s.dtype, "device_option": s.device, "torch_threads": self.threads,
                "load_seconds": self.load_seconds,
                "seconds": {" / ".join(k): v for k, v in sorted(self.timings.items())},
                "numpy": numpy.__version__,
                "platform": platform.platform(),
                "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
                "args": self.args}

    def update_expectations(self) -> list[str]:
        """Record this run's verdicts, cell findings and deciding numbers as the expectations."""
        written = []
        for model in dict.fromkeys(m for (_c, m, _g) in self.verdicts):
            exp = self.expectations(model) or expected.Expectations(model)
            for grid in dict.fromkeys(g for (_c, m, g) in self.verdicts if m == model):
                verdicts = {c: v for (c, m, g), (v, _e) in self.verdicts.items()
                            if (m, g) == (model, grid)}
                cells = {c: self.cell_failures.get((c, m, g), []) for (c, m, g) in self.cell_checks
                         if (m, g) == (model, grid)}
                exp.record(self.setup(model), self.grids[grid].key, verdicts, cells)
            self._expectations[model] = exp
            written.append(str(expected.save(exp, self.settings.expected_dir)))
        return written

    def drift(self) -> list[str]:
        """Every deciding number outside its baseline's tolerance, per model and grid."""
        msgs = []
        for model, grid in dict.fromkeys((m, g) for (_c, m, g) in self.verdicts):
            exp, setup, key = self._key(model, grid)
            base = ((exp.section(setup, key) if exp else None) or {}).get("baselines")
            if base:
                now = expected.quantities({c: v for (c, m, g), (v, _e) in self.verdicts.items()
                                           if (m, g) == (model, grid)})
                msgs += [f"{model} / {grid}: {m}" for m in expected.drift(base, now)]
        return msgs

    def finish(self) -> Outcome:
        """Write the report set, then update the expectations or apply the regression gate."""
        if not (self.verdicts or self.results):
            return Outcome()
        write_report_set(self, self.settings.report_dir)
        if self.settings.update_baselines:
            return Outcome([f"lac: wrote {path}" for path in self.update_expectations()])
        notes = [f"lac: no expectations for {k}; the paper's rules decided"
                 for k in self.unexpected()]
        msgs = self.drift()
        if not msgs:
            return Outcome(notes)
        return Outcome([*notes, "lac: numeric drift beyond tolerance (regression gate):",
                        *(f"  {m}" for m in msgs), "lac: if the change is intended, rerun with "
                        "--lac-update-baselines and review the diff"], failed=True)
