"""A run's state and its end, callable without pytest."""
# `start` checks everything that can be checked before a model loads (preflight.py). The claim
# tests record verdicts and per-cell outcomes here; `finish` writes the report set, then either
# rewrites the expectations (`update_baselines`) or applies the regression gate.
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

from . import expected, preflight, provenance, resume, rules
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
    cell_checks: dict = field(default_factory=dict)  # (check, model, grid) -> cells that ran
    threads: int = 0  # torch CPU threads of this process
    timings: dict = field(default_factory=dict)  # (model, grid, kind) -> wall seconds
    progress: Progress = field(default_factory=Progress)  # silent unless the plugin gives a say
    collected: dict = field(default_factory=dict)  # claim test node id -> (claim, model, grid)
    outcomes: dict = field(default_factory=dict)  # node id -> why it gave no verdict (error, skip)
    interrupted: bool = False  # Ctrl-C, -x or --maxfail stopped the run
    refused: list = field(default_factory=list)  # workers' results not merged, and why
    from_cache: dict = field(default_factory=dict)  # (model, grid, kind) -> run id it came from
    resume: resume.ResultCache = field(default_factory=lambda: resume.ResultCache(None))
    _expectations: dict = field(default_factory=dict)
    _fingerprint: dict = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, args=()) -> "Session":
        """Check the settings, grids, template and models; raises LacError before any work. The
        code's fingerprint (git commit, dirty or not) is taken now, not when the run ends."""
        session = cls(settings, load_thresholds(settings.claims_file), preflight.check(settings),
                      list(args))
        session.fingerprint()
        if not settings.no_cache:
            session.resume = resume.ResultCache(settings.cache_dir / "results")
        return session

    def run_info_id(self) -> str:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started))

    def result_key(self, model: str, grid: str, kind: str, params: dict) -> dict:
        """Everything that can change an experiment's numbers (see resume.py)."""
        s, p = self.settings, self.provenance.get(model, {})
        return {"model": model, "sha256": p.get("sha256"), "dtype": p.get("dtype"),
                "device": p.get("device"), "attention": p.get("attn_implementation"),
                "grid": self.grids[grid].sha256, "kind": kind,
                "template": self.checked.template.key, "plan": s.plan, "layers": s.layers,
                "probes": s.probes, "token_budget": s.token_budget,
                "stems": self.thresholds.markers.stems, "swap_pairs": s.swap_pairs,
                "params": {k: v for k, v in params.items()
                           if v is None or isinstance(v, (str, int, float, tuple))},
                **resume.versions()}

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
        self.cell_checks.setdefault((check, model, grid), set()).add(cell)
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
              "cell_checks", "collected", "outcomes", "from_cache")

    def planned(self) -> set:
        """Every (claim, model, grid) the settings ask for, where the grid runs its experiment."""
        return {(c, m, g) for m in self.checked.models for g, grid in self.grids.items()
                for c in rules.CLAIMS if grid.not_run(c) is None}

    def not_run(self) -> dict:
        """(claim, model, grid) -> why no verdict came (deselected, interrupted, or an error)."""
        by_key = {}
        for node, key in self.collected.items():
            by_key.setdefault(key, []).append(node)
        out = {}
        for key in sorted(self.planned() - set(self.verdicts)):
            why = next((self.outcomes[n] for n in by_key.get(key, ()) if n in self.outcomes), None)
            out[key] = "deselected" if key not in by_key else why or (
                "interrupted" if self.interrupted else "did not run")
        return out

    def fingerprint(self) -> dict:
        if not self._fingerprint:
            self._fingerprint.update(provenance.fingerprint(self.settings.claims_file, self.grids))
        return self._fingerprint

    def export(self) -> dict:
        """What a pytest-xdist worker sends the controller (see merge)."""
        return {"fingerprint": self.fingerprint(), **{n: getattr(self, n) for n in self.SHARED}}

    def merge(self, other: dict) -> None:
        """Take in a worker's export: each model runs on one worker, so keys never collide; a
        worker whose code, rules, grids or libraries differ is refused."""
        provenance.same_or_refuse(self.fingerprint(), other["fingerprint"], "a worker")
        for name in self.SHARED:
            mine = getattr(self, name)
            mine.update(other[name]) if isinstance(mine, (dict, set)) else None

    def report_files(self) -> list[str]:
        """The files this run's report set will write."""
        from .report import figure_name

        sweeps = [g for g, grid in self.grids.items() if "sweep" in grid.experiments]
        return ["results.json", "REPORT.md", *(figure_name(m, g) for m in self.checked.models
                                               for g in sweeps)]

    def run_info(self) -> dict:
        s, c = self.settings, self.checked
        missing = self.not_run()
        return {"run_id": self.run_info_id(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)),
                **self.fingerprint(),
                "status": "PARTIAL" if missing else "COMPLETE",
                "not_run": [{"claim": c, "model": m, "grid": g, "why": why}
                            for (c, m, g), why in missing.items()],
                "wall_seconds": round(time.time() - self.started, 1), "plan": s.plan,
                "token_budget": s.token_budget, "models_requested": list(s.models),
                "grids": {label: {"name": g.name, "sha256": g.sha256, "source": g.source,
                                  "experiments": list(g.experiments)}
                          for label, g in c.grids.items()},
                "chat_template": c.template.name, "layers": s.layers, "probes": list(s.probes),
                "dtype_option": s.dtype, "device_option": s.device, "torch_threads": self.threads,
                "load_seconds": self.load_seconds,
                "seconds": {" / ".join(k): v for k, v in sorted(self.timings.items())},
                "from_resume_cache": {" / ".join(k): v for k, v in sorted(self.from_cache.items())},
                "platform": platform.platform(),
                "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
                "args": self.args}

    def update_expectations(self) -> list[str]:
        """Record this run's verdicts, cell findings and deciding numbers as the expectations."""
        written, ran = [], [(m, g) for (_c, m, g) in (*self.verdicts, *self.cell_checks)]
        for model in dict.fromkeys(m for m, _g in ran):
            exp = self.expectations(model) or expected.Expectations(model)
            for grid in dict.fromkeys(g for m, g in ran if m == model):
                verdicts = {c: v for (c, m, g), (v, _e) in self.verdicts.items()
                            if (m, g) == (model, grid)}
                cells = {c: (ran, self.cell_failures.get((c, m, g), []))
                         for (c, m, g), ran in self.cell_checks.items()
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
        if not (self.verdicts or self.results or self.refused):
            return Outcome()
        write_report_set(self, self.settings.report_dir)
        if self.settings.update_baselines:
            return Outcome([f"lac: wrote {path}" for path in self.update_expectations()])
        notes = [f"lac: no expectations for {k}; the paper's rules decided"
                 for k in self.unexpected()]
        msgs = self.drift()
        gate = ["lac: numeric drift beyond tolerance (regression gate):", *(f"  {m}" for m in msgs),
                "lac: if the change is intended, rerun with --lac-update-baselines and review the "
                "diff"] if msgs else []
        return Outcome([*notes, *self.refused, *gate], failed=bool(msgs or self.refused))
