"""A run's state and its end, callable without pytest."""
# `start` checks everything that can be checked before a model loads (preflight.py). The claim
# tests record verdicts and per-cell outcomes here; `finish` writes the report set, then either
# rewrites the expectations (`update_baselines`) or applies the regression gate.
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..verdicts import claims as registry
from ..verdicts import expected
from ..verdicts.kinds import Kind
from . import gating, preflight, provenance, resume
from .provenance import new_run_id
from ..errors import LacError, UsageError
from .progress import Progress
from ..report.document import Plan, report_names, results_text, write_report_set
from ..report.source import RunSource
from .resultsfile import results_document
from ..report.reportset import Folder
from .settings import EXPECTED, READS, Settings
from ..verdicts.thresholds import Thresholds, load_thresholds


def indented(changes) -> list[str]:
    """Changes to the expectations as the terminal shows them, under their 'lac: wrote' line."""
    return [f"  {c}" for c in changes]


@dataclass
class Outcome:
    """What the end of a session says: lines to print, and whether the gate failed the run."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False


@dataclass
class Session:
    settings: Settings
    thresholds: Thresholds
    checked: preflight.Checked
    args: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)  # time.time() at the start
    provenance: dict = field(default_factory=dict)  # model -> provenance
    load_seconds: dict = field(default_factory=dict)  # model -> s
    results: dict = field(default_factory=dict)  # (model, grid, "sweep"|"markers"|"host") -> result
    verdicts: dict = field(default_factory=dict)  # (claim, model, grid) -> (Verdict, expected)
    cell_failures: dict = field(default_factory=dict)  # (check, model, grid) -> [cell ids]
    cell_checks: dict = field(default_factory=dict)  # (check, model, grid) -> cells that ran
    threads: int = 0  # torch CPU threads of this process
    timings: dict = field(default_factory=dict)  # (model, grid, kind) -> wall seconds
    interval_seconds: dict = field(default_factory=dict)  # model -> s resampling for intervals
    progress: Progress = field(default_factory=Progress)  # silent unless the plugin gives a say
    collected: dict = field(default_factory=dict)  # claim test node id -> (claim, model, grid)
    outcomes: dict = field(default_factory=dict)  # node id -> why it gave no verdict (error, skip)
    interrupted: bool = False  # Ctrl-C, -x or --maxfail stopped the run
    tests_left: set = field(default_factory=set)  # lac test node ids collected, not yet finished
    refused: list = field(default_factory=list)  # workers' results not merged, and why
    from_cache: dict = field(default_factory=dict)  # (model, grid, kind) -> run id it came from
    failed: dict = field(default_factory=dict)  # (model, grid, kind or "*") -> why it failed
    reported: set = field(default_factory=set)  # failures already told by a failing test
    resume_notes: list = field(default_factory=list)  # resume entries not used, and why
    resume: resume.ResultCache = field(default_factory=lambda: resume.ResultCache(None))
    folder: Folder | None = None  # the report folder, checked and locked at start
    claims_planned: set | None = None  # claims whose tests were collected (None: all registered)
    gate_outcome: object = None  # verdicts.gate.GateOutcome, once applied (Session.gate)
    report_folder: object = None  # where the report set went
    run_id: str = ""  # unique per run (new_run_id); a pytest-xdist worker takes its controller's
    _expectations: dict = field(default_factory=dict)
    _fingerprint: dict = field(default_factory=dict)

    def __post_init__(self):
        self.run_id = self.run_id or new_run_id(self.started_at)

    @classmethod
    def start(cls, settings: Settings, args=()) -> "Session":
        """Check the settings, grids, template and models; raises LacError before any work. The
        code's fingerprint (git commit, dirty or not) is taken now, not when the run ends."""
        gating.check_expectations_folder(settings)  # before preflight, which may download models
        session = cls(settings, load_thresholds(settings.claims_file), preflight.check(settings),
                      list(args))
        session.fingerprint()
        session.check_expectations()
        if not settings.no_cache:
            session.resume = resume.ResultCache(settings.cache_dir / "results")
        return session

    def take_late_claims(self) -> list[str]:
        """Claims registered after the session started (a conftest below the folder pytest starts
        in is imported while pytest collects): their thresholds are loaded and checked now,
        before any model loads (a bad one raises FixtureError), and their files join the
        provenance. Returns their ids."""
        late = [c for c in registry.CLAIMS if c not in self.thresholds.sections]
        if late:
            self.thresholds = load_thresholds(self.settings.claims_file)
            self._fingerprint["thresholds_sha256"] = provenance.fingerprint(
                self.settings.claims_file, self.grids, self.thresholds.files)["thresholds_sha256"]
        return late

    STEMS = (Kind.MARKERS, Kind.STEERING)  # the experiments that count marker words (claims.yaml)

    def result_key(self, model: str, grid: str, kind: str, params: dict) -> dict:
        """Everything that can change an experiment's numbers (see resume.py), and only that:
        the settings it reads (settings.READS; steering also reads the markers result's stems),
        so a run with other swept layers still finds the markers result."""
        s, p = self.settings, self.provenance.get(model, {})
        return {"model": model, "sha256": p.get("sha256"), "dtype": p.get("dtype"),
                "device": p.get("device"), "attention": p.get("attn_implementation"),
                "kernels": p.get("kernels"),
                "grid": self.grids[grid].sha256, "kind": kind,
                "template": self.checked.template.key, "token_budget": s.token_budget,
                **s.read_by(kind),
                **({"stems": self.thresholds.markers.stems} if kind in self.STEMS else {}),
                **({"metrics": registry.metric_keys()} if kind == Kind.SWEEP and registry.METRICS
                   else {}),  # users' cell metrics: absent when there are none
                "params": {k: v for k, v in params.items() if k != "metrics" and (
                    v is None or isinstance(v, (str, int, float, tuple)))},
                **resume.versions()}

    @property
    def grids(self) -> dict:
        return self.checked.grids

    def setup(self, model: str, experiment: str | None = None) -> str:
        """The part of an expectations key that is not the model or the grid: dtype and chat
        template, then whatever else was set away from its default (swept layers, probes,
        attention, plan) and, in bfloat16 or float16, the kernel family (placement.kernels), so
        a run is only ever compared with baselines of its own setup and the sections recorded
        with the defaults keep their names. For an experiment's claims, only the settings that
        experiment reads (settings.READS: the markers claims' setup has no swept layers);
        None: every setting."""
        s, default, spec = self.settings, Settings(), self.checked.models[model]
        some = {name for names in READS.values() for name in names}  # read by some experiments
        extra = [f"{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
                 for name, value, base in (("layers", s.layers, None),
                                           ("probes", s.probes, default.probes),
                                           ("attention", s.attention, default.attention),
                                           ("plan", s.plan, default.plan),
                                           ("kernels", spec.kernels, None)) if value != base
                 and (experiment is None or name not in some or name in s.read_by(experiment))]
        return " ".join([spec.dtype, self.checked.template.key, *extra])

    def tell_notes(self) -> None:
        """The resume cache's notes (entries not used, results not kept): to the log now, and to
        the report at the end (run.resume_cache_not_used)."""
        for note in self.resume.notes[len(self.resume_notes):]:
            self.resume_notes.append(note)
            self.progress.say(f"lac: {note}")

    def check_expectations(self) -> None:
        """Before any work: each model's expectations file is whole (and no link, if updating)."""
        where, s = self.settings.expected_dir, self.settings
        for model in self.checked.models:
            self.expectation_layers(model)
            if s.updating and expected.file_for(model, where).is_symlink():
                raise UsageError(f"{expected.file_for(model, where)} is a symbolic link; lac does "
                                 "not write expectations through or over links")

    def expectations(self, model: str, directory=None):
        """The model's expectations file in `directory` (default: --lac-expected-dir), read once."""
        where = Path(directory or self.settings.expected_dir)
        if (model, where) not in self._expectations:
            self._expectations[(model, where)] = expected.load(model, where)
        return self._expectations[(model, where)]

    def expectation_layers(self, model: str) -> tuple:
        """The model's expectations a run reads: --lac-expected-dir's, then (when that is another
        folder) the ones lac ships, which fill the claims the user's lack (expected.compose)."""
        folders = dict.fromkeys(Path(d).resolve() for d in (self.settings.expected_dir, EXPECTED))
        return tuple(e for d in folders if (e := self.expectations(model, d)) is not None)

    def expectation_key(self, model: str, grid: str) -> tuple:
        """(expectations, setup, grid key): the section this run is held to on (model, grid),
        put together claim by claim (expected.compose) under the run's whole setup; None
        when nothing is recorded for it."""
        claims = {c.id: self.setup(model, c.experiment) for c in registry.CLAIMS.values()}
        checks = {c.id: tuple(k.name for k in c.cell_checks) for c in registry.CLAIMS.values()}
        setup, key = self.setup(model), self.grids[grid].key
        section = expected.compose(self.expectation_layers(model), claims, key, checks)
        return (expected.Expectations(model, {setup: {key: section}}) if section else None,
                setup, key)

    def gated(self) -> bool:
        """Whether any claim that ran had an expected verdict to be compared with."""
        return any(status is not None for _v, status in self.verdicts.values())

    def record_verdict(self, claim: str, model: str, grid: str, verdict) -> str | None:
        """Keep a verdict; return the expected status for it (None: none recorded)."""
        exp, setup, key = self.expectation_key(model, grid)
        status = exp.verdict(setup, key, claim) if exp else None
        self.verdicts[(claim, model, grid)] = (verdict, status)
        return status

    def record_error(self, claim: str, model: str, grid: str, node: str, why: str) -> None:
        """A claim whose rule raised or returned no Verdict: no verdict, an error of its own
        (run.failed and run.not_run say it; the claim's key cannot be an experiment's)."""
        self.failed[(model, grid, f"claim {claim}")] = why
        self.outcomes[node] = why

    def record_cell(self, check: str, model: str, grid: str, cell: str, problems: list) -> bool:
        """Keep a per-cell outcome; return whether the expectations list it as a finding."""
        self.cell_checks.setdefault((check, model, grid), set()).add(cell)
        if problems:
            self.cell_failures.setdefault((check, model, grid), []).append(cell)
        exp, setup, key = self.expectation_key(model, grid)
        return bool(exp and exp.cell_fails(setup, key, check, cell))

    def unexpected(self) -> list[str]:
        """(model, setup, grid) that ran with no expectations recorded: the paper's rules decide."""
        out, ran = [], {}
        for c, m, g in self.verdicts:
            if c in registry.CLAIMS:
                claim = registry.CLAIMS[c]
                ran.setdefault((m, g, self.setup(m, claim.experiment)), []).append(claim)
        for (m, g, setup), claims in sorted(ran.items()):
            layers, key = self.expectation_layers(m), self.grids[g].key
            if any(expected.claim_entry(exp.section(setup, key), c.id, [k.name for k in
                                                                       c.cell_checks])
                   for exp in layers for c in claims):  # some claim that ran has an entry
                continue
            others = sorted({k for exp in layers for k in exp.other_kernels(setup, key)})
            out.append(f"{m} / {setup} / {key}" + (
                f" (recorded only for {', '.join(others)}: bfloat16 and float16 numbers "
                "depend on the kernels, so record this machine's with --lac-update-baselines)"
                if others else ""))
        return out

    SHARED = ("provenance", "load_seconds", "timings", "results", "verdicts", "cell_failures",
              "cell_checks", "collected", "outcomes", "from_cache", "failed", "resume_notes",
              "interval_seconds", "tests_left")

    def export(self) -> dict:
        """What a pytest-xdist worker sends the controller (see merge)."""
        return {"fingerprint": self.fingerprint(), "claims_planned": self.claims_planned,
                **{n: getattr(self, n) for n in self.SHARED}}

    def plan_claims(self, claims) -> None:
        """The claims whose tests were collected (before -k or -m deselect any): a run plans
        those, not every registered claim (a user's own suite runs only its own)."""
        self.claims_planned = set(claims)

    def planned(self) -> set:
        """Every (claim, model, grid) the run asks for, where the grid runs its experiment."""
        claims = [c for c in registry.CLAIMS
                  if self.claims_planned is None or c in self.claims_planned]
        return {(c, m, g) for m in self.checked.models for g, grid in self.grids.items()
                for c in claims if grid.not_run(c) is None}

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
            self._fingerprint.update(provenance.fingerprint(
                self.settings.claims_file, self.grids, getattr(self.thresholds, "files", ())))
        return self._fingerprint

    def merge(self, other: dict) -> None:
        """Take in a worker's export: each model runs on one worker, so keys never collide; a
        worker whose code, rules, grids or libraries differ is refused."""
        provenance.same_or_refuse(self.fingerprint(), other["fingerprint"], "a worker")
        if other.get("claims_planned") is not None:
            self.claims_planned = (self.claims_planned or set()) | other["claims_planned"]
        for name in self.SHARED:
            mine = getattr(self, name)
            if isinstance(mine, list):
                mine.extend(other[name])
            elif isinstance(mine, (dict, set)):
                mine.update(other[name])

    def report_files(self) -> list[str]:
        """Every file this run's report set may write (report.OUTPUTS)."""
        return report_names(Plan(tuple(self.checked.models),
                                 {label: g.experiments for label, g in self.grids.items()}))

    GRID_CONTENT = ("personas", "tasks", "baseline_persona", "baseline_task", "template",
                    "markers")  # in run.grids: what a report rebuilt from results.json reads

    def run_info(self) -> dict:
        s, c = self.settings, self.checked
        missing = self.not_run()
        stopped = sorted(self.tests_left) if self.interrupted else []  # e.g. cells after the claim
        return {"run_id": self.run_id,
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at)),
                **self.fingerprint(),
                "status": "PARTIAL" if missing or stopped else "COMPLETE",
                "tests_interrupted": stopped,
                "not_run": [{"claim": c, "model": m, "grid": g, "why": why}
                            for (c, m, g), why in missing.items()],
                "wall_seconds": round(time.time() - self.started_at, 1), "plan": s.plan,
                "token_budget": s.token_budget, "models_requested": list(s.models),
                "grids": {label: {"name": g.name, "sha256": g.sha256, "source": g.source,
                                  "experiments": list(g.experiments),
                                  **{k: getattr(g, k) for k in self.GRID_CONTENT}}
                          for label, g in c.grids.items()},
                "models_planned": list(c.models),
                "claims_planned": (None if self.claims_planned is None
                                   else sorted(self.claims_planned)),
                "without_expectations": self.unexpected(),
                "timings": [[*k, v] for k, v in sorted(self.timings.items())],
                "chat_template": c.template.name, "layers": s.layers, "probes": list(s.probes),
                "dtype_option": s.dtype, "device_option": s.device, "torch_threads": self.threads,
                "load_seconds": self.load_seconds,
                "seconds": {" / ".join(k): v for k, v in sorted(self.timings.items())},
                "from_resume_cache": {" / ".join(k): v for k, v in sorted(self.from_cache.items())},
                "resume_cache_not_used": list(self.resume_notes),
                "failed": {" / ".join(k): v for k, v in sorted(self.failed.items())},
                "platform": platform.platform(),
                "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
                "args": self.args}

    def update_expectations(self) -> list[str]:
        """Record this run's verdicts, cell findings and deciding numbers as the expectations and
        write them; what changed, one line each (a file written with no change says so)."""
        with expected.locked(self.settings.expected_dir):  # re-read: keep others' sections
            return self.save_expectations(self.record_expectations())[0]

    def record_expectations(self) -> dict:
        """model -> (its expectations with this run's verdicts, cell findings and deciding numbers
        recorded, what changed: a line each), not saved yet. Read under the expectations folder's
        lock, which the caller holds until save_expectations (others' sections are kept)."""
        ran = [(m, g) for (_c, m, g) in (*self.verdicts, *self.cell_checks)]
        return {model: self._update(model, [g for m, g in ran if m == model])
                for model in dict.fromkeys(m for m, _g in ran)}

    def save_expectations(self, pending: dict) -> tuple[list[str], bool]:
        """Write what record_expectations made: ('lac: wrote' and the changes per file, whether
        every file was written). A file that cannot be written (a full disk, a folder gone
        read-only) is one line naming it; it is left as it was, and so are those after it."""
        lines = []
        for model, (exp, changes) in pending.items():
            try:
                path = expected.save(exp, self.settings.expected_dir)
            except (OSError, LacError) as exc:
                where = expected.file_for(model, self.settings.expected_dir)
                why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
                return [*lines, *indented(changes), f"lac: {where} could not be written ({why}); "
                        "it is as it was, and the expectations were not rewritten (this run's "
                        "report set is published); fix that, then rerun with "
                        "--lac-update-baselines"], False
            lines += [f"lac: wrote {path}" + ("" if changes else " (nothing changed)"),
                      *indented(changes)]
        return lines, True

    def _update(self, model: str, grids: list[str]) -> tuple:
        exp, changes = expected.read_for_update(model, self.settings.expected_dir), []
        whole = self.setup(model)  # for a claim or check no longer registered
        claim_setup = {c.id: self.setup(model, c.experiment) for c in registry.CLAIMS.values()}
        check_setup = {n: self.setup(model, c.experiment) for n, c in registry.CELL_CHECKS.items()}
        for grid in dict.fromkeys(grids):  # each claim under the setup its experiment reads
            verdicts = {c: v for (c, m, g), (v, _e) in self.verdicts.items()
                        if (m, g) == (model, grid)}
            cells = {c: (ran, self.cell_failures.get((c, m, g), []))
                     for (c, m, g), ran in self.cell_checks.items()
                     if (m, g) == (model, grid)}
            for setup in dict.fromkeys([*(claim_setup.get(c, whole) for c in verdicts),
                                        *(check_setup.get(c, whole) for c in cells)]):
                where = f"{model} / {setup} / {self.grids[grid].key}"
                changes += [f"{where}: {c}" for c in exp.record(
                    setup, self.grids[grid].key,
                    {c: v for c, v in verdicts.items() if claim_setup.get(c, whole) == setup},
                    {c: r for c, r in cells.items() if check_setup.get(c, whole) == setup})]
        return exp, changes

    def gate(self, rewritten=None):
        """The regression gate's outcome (gating.gate, a verdicts.gate.GateOutcome)."""
        return gating.gate(self, rewritten)

    def finish(self) -> Outcome:
        """Apply the regression gate (or record the expectations), write the report set, which
        shows the gate's outcome, and only then rewrite the expectations: a rewrite that fails
        leaves this run's report set published."""
        if not (self.verdicts or self.results or self.refused or self.folder):
            return Outcome()  # no claim run started (collect-only, lac's own tests): no report
        if not self.settings.updating:
            return self._finish({})
        with expected.locked(self.settings.expected_dir):  # from re-reading to rewriting
            return self._finish(self.record_expectations())

    def _finish(self, pending: dict) -> Outcome:
        self.gate_outcome = gate = self.gate(tuple(
            change for _e, changes in pending.values() for change in changes))
        folder = self.folder or Folder(self.settings.report_dir, self.settings.reports_overwrite,
                                        run_id=self.run_id)
        # the report set is rendered from results.json as read back, never from this session
        doc = json.loads(results_text(results_document(self)))
        where, kept = write_report_set(RunSource.of(doc), folder)
        moved = [f"lac: {folder.path / name} appeared during the run and lac did not write it; "
                 "it is kept as it is" for name in kept] + \
            [f"lac: this run's report set is in {where} instead"] if kept else []
        self.report_folder = where
        if self.settings.updating:
            updates, saved = self.save_expectations(pending)
            review = [gating.REVIEW] if gate.review and saved else []
            return Outcome([*moved, *updates, *review], failed=bool(kept or review or not saved))
        notes = [f"lac: no expectations for {k}; the paper's rules decided"
                 for k in gate.without_expectations]
        return Outcome([*notes, *moved, *self.refused, *gate.failure_lines()],
                       failed=gate.failed or bool(kept))
