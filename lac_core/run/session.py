"""A run's state and its end, callable without pytest."""
# `start` checks everything that can be checked before a model loads (preflight.py). The claim
# tests record verdicts and per-cell outcomes here; `finish` writes the report set, then either
# rewrites the expectations (`update_baselines`) or applies the regression gate.
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field, fields

from ..verdicts import claims as registry
from ..verdicts import expected
from ..verdicts.kinds import Kind
from ..verdicts.results import RECORDS
from . import gating, preflight, provenance, resume
from .provenance import new_run_id
from ..errors import LacError, UsageError
from .progress import Progress
from ..report.document import Plan, report_names, results_text, write_report_set
from ..report.source import RunSource
from .resultsfile import results_document
from ..report.reportset import Folder
from .settings import READS, Settings
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
class Identity:
    """What names this run: its id, how and when it was started, and the fingerprint of the code,
    rules, grids and libraries taken then (not when the run ends)."""

    args: list = field(default_factory=list)
    started_at: float = field(default_factory=time.time)  # time.time() at the start
    run_id: str = ""  # unique per run (new_run_id); a pytest-xdist worker takes its controller's
    fingerprint: dict = field(default_factory=dict)  # provenance.fingerprint, taken at start

    def __post_init__(self):
        self.run_id = self.run_id or new_run_id(self.started_at)


@dataclass
class Ledger:
    """What the run's experiments and claims produced. Every field is keyed by model (each model
    runs on one xdist worker), so a worker's ledger merges into its controller's by key."""

    provenance: dict = field(default_factory=dict)  # model -> provenance
    load_seconds: dict = field(default_factory=dict)  # model -> s
    timings: dict = field(default_factory=dict)  # (model, grid, kind) -> wall seconds
    interval_seconds: dict = field(default_factory=dict)  # model -> s resampling for intervals
    results: dict = field(default_factory=dict)  # (model, grid, kind) -> result record
    from_cache: dict = field(default_factory=dict)  # (model, grid, kind) -> run id it came from
    verdicts: dict = field(default_factory=dict)  # (claim, model, grid) -> (Verdict, expected)
    cell_checks: dict = field(default_factory=dict)  # (check, model, grid) -> cells that ran
    cell_failures: dict = field(default_factory=dict)  # (check, model, grid) -> [cell ids]
    severities: dict = field(default_factory=dict)  # (check, model, grid) -> {cell: float | why}


LEDGER = tuple(f.name for f in fields(Ledger))  # what a worker's export carries of its ledger


@dataclass
class Tally:
    """Which lac tests the run planned and finished, and why any gave no verdict: what the run's
    status (COMPLETE or PARTIAL) and run.not_run / run.failed are made of."""

    claims_planned: set | None = None  # claims whose tests were collected (None: all registered)
    collected: dict = field(default_factory=dict)  # claim test node id -> (claim, model, grid)
    outcomes: dict = field(default_factory=dict)  # node id -> why it gave no verdict (error, skip)
    tests_left: set = field(default_factory=set)  # lac test node ids collected, not yet finished
    interrupted: bool = False  # Ctrl-C, -x or --maxfail stopped the run
    failed: dict = field(default_factory=dict)  # (model, grid, kind or "*") -> why it failed
    reported: set = field(default_factory=set)  # failures already told by a failing test
    resume_notes: list = field(default_factory=list)  # resume entries not used, and why
    refused: list = field(default_factory=list)  # workers' results not merged, and why

    SHARED = ("collected", "outcomes", "failed", "resume_notes", "tests_left")  # sent by workers


@dataclass
class Outputs:
    """Where the run keeps and writes things: the resume cache, the report folder (checked and
    locked at start), where the report set went, and the gate's outcome once applied."""

    resume: resume.ResultCache = field(default_factory=lambda: resume.ResultCache(None))
    folder: Folder | None = None
    report_folder: object = None
    gate_outcome: object = None  # verdicts.gate.GateOutcome (Session.finish)


@dataclass
class ExpectationBook:
    """The expectations a run is held to: its setups, made from the live settings, written out as
    results.json's `expectation_keys` (keys), and read through gating.DocBook, the one reader a
    run's gate and a merge of shards share. Each expectations file is read once."""

    settings: Settings
    checked: preflight.Checked
    read: dict = field(default_factory=dict)  # model -> its expectations, folder by folder
    _reader: tuple = ()  # (the claim ids it was made for, its DocBook): see reader

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

    def keys(self) -> dict:
        """results.json's `expectation_keys`: each grid's key, each claim's cell checks, each
        model's whole setup and each claim's (the claims registered now: a late one counts)."""
        claims = list(registry.CLAIMS.values())
        return {"grids": {label: g.key for label, g in self.checked.grids.items()},
                "claims": {c.id: [k.name for k in c.cell_checks] for c in claims},
                "models": {m: {"setup": self.setup(m),
                               "claims": {c.id: self.setup(m, c.experiment) for c in claims}}
                           for m in self.checked.models}}

    def reader(self) -> gating.DocBook:
        """The DocBook of this run's keys, made again only when a claim was registered since
        (a user's conftest, collected late): every verdict and every cell a run records looks
        its section up here, so the keys and each (model, grid)'s section are made once."""
        claims = tuple(registry.CLAIMS)
        if not self._reader or self._reader[0] != claims:
            self._reader = (claims, gating.DocBook(
                self.keys(), gating.expectation_folders(self.settings.expected_dir), self.read))
        return self._reader[1]

    def check(self) -> None:
        """Before any work: each model's expectations file is whole (and no link, if updating)."""
        where, s, reader = self.settings.expected_dir, self.settings, self.reader()
        for model in self.checked.models:
            reader.layers(model)
            if s.updating and expected.file_for(model, where).is_symlink():
                raise UsageError(f"{expected.file_for(model, where)} is a symbolic link; lac does "
                                 "not write expectations through or over links")

    def key(self, model: str, grid: str) -> tuple:
        """(expectations, setup, grid key): the section this run is held to on (model, grid),
        put together claim by claim (expected.compose) under the run's whole setup; None
        when nothing is recorded for it."""
        return self.reader().key(model, grid)

    def unexpected(self, verdicts) -> list[str]:
        """(model, setup, grid) of `verdicts` ((claim, model, grid) keys) that ran with no
        expectations recorded: the paper's rules decide."""
        return self.reader().unexpected(verdicts)


@dataclass
class Session:
    """One run, split by job: what it is (settings, thresholds, the checked grids and models,
    its identity), what it produced (ledger), which tests ran (tally), the expectations it is
    held to (book), and where it writes (out)."""

    settings: Settings
    thresholds: Thresholds
    checked: preflight.Checked
    ident: Identity = field(default_factory=Identity)
    ledger: Ledger = field(default_factory=Ledger)
    tally: Tally = field(default_factory=Tally)
    book: ExpectationBook | None = None  # made from settings and checked when None
    out: Outputs = field(default_factory=Outputs)
    progress: Progress = field(default_factory=Progress)  # silent unless the plugin gives a say
    threads: int = 0  # torch CPU threads of this process

    def __post_init__(self):
        self.book = self.book or ExpectationBook(self.settings, self.checked)

    @classmethod
    def start(cls, settings: Settings, args=()) -> "Session":
        """Check the settings, grids, template and models; raises LacError before any work. The
        code's fingerprint (git commit, dirty or not) is taken now, not when the run ends."""
        gating.check_expectations_folder(settings)  # before preflight, which may download models
        session = cls(settings, load_thresholds(settings.claims_file), preflight.check(settings),
                      Identity(list(args)))
        session.fingerprint()
        session.book.check()
        if not settings.no_cache:
            session.out.resume = resume.ResultCache(settings.cache_dir / "results")
        return session

    def take_late_claims(self) -> list[str]:
        """Claims registered after the session started (a conftest below the folder pytest starts
        in is imported while pytest collects): their thresholds are loaded and checked now,
        before any model loads (a bad one raises FixtureError), and their files join the
        provenance. Returns their ids."""
        late = [c for c in registry.CLAIMS if c not in self.thresholds.sections]
        if late:
            self.thresholds = load_thresholds(self.settings.claims_file)
            self.ident.fingerprint["thresholds_sha256"] = provenance.fingerprint(
                self.settings.claims_file, self.grids, self.thresholds.files)["thresholds_sha256"]
        return late

    STEMS = (Kind.MARKERS, Kind.STEERING)  # the experiments that count marker words (claims.yaml)

    def result_key(self, model: str, grid: str, kind: str, params: dict) -> dict:
        """Everything that can change an experiment's numbers (see resume.py), and only that:
        the settings it reads (settings.READS; steering also reads the markers result's stems),
        so a run with other swept layers still finds the markers result."""
        s, p = self.settings, self.ledger.provenance.get(model, {})
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

    def tell_notes(self) -> None:
        """The resume cache's notes (entries not used, results not kept): to the log now, and to
        the report at the end (run.resume_cache_not_used)."""
        for note in self.out.resume.notes[len(self.tally.resume_notes):]:
            self.tally.resume_notes.append(note)
            self.progress.say(f"lac: {note}")

    def record_verdict(self, claim: str, model: str, grid: str, verdict) -> str | None:
        """Keep a verdict; return the expected status for it (None: none recorded)."""
        exp, setup, key = self.book.key(model, grid)
        status = exp.verdict(setup, key, claim) if exp else None
        self.ledger.verdicts[(claim, model, grid)] = (verdict, status)
        return status

    def record_error(self, claim: str, model: str, grid: str, node: str, why: str) -> None:
        """A claim whose rule raised or returned no Verdict: no verdict, an error of its own
        (run.failed and run.not_run say it; the claim's key cannot be an experiment's)."""
        self.tally.failed[(model, grid, f"claim {claim}")] = why
        self.tally.outcomes[node] = why

    def record_cell(self, check: str, model: str, grid: str, cell: str, problems: list) -> bool:
        """Keep a per-cell outcome; return whether the expectations list it as a finding."""
        led = self.ledger
        led.cell_checks.setdefault((check, model, grid), set()).add(cell)
        if problems:
            led.cell_failures.setdefault((check, model, grid), []).append(cell)
            led.severities.setdefault((check, model, grid), {})[cell] = self.severity(
                check, model, grid, cell)
        exp, setup, key = self.book.key(model, grid)
        return bool(exp and exp.cell_fails(setup, key, check, cell))

    def severity(self, check: str, model: str, grid: str, cell: str) -> float | str:
        """How far a failing cell is from passing (its check's declared severity), computed here,
        where the check's code is (an xdist worker's, for a user's check the controller may not
        import): a number, or why the severity function failed (the report lists the cell
        unranked)."""
        c = registry.CELL_CHECKS[check]
        try:
            return c.severity_of(self.ledger.results.get((model, grid, c.experiment)), cell,
                                 self.thresholds)
        except Exception as exc:  # a user's severity function
            return f"{type(exc).__name__}: {exc}"

    def unexpected(self) -> list[str]:
        """(model, setup, grid) that ran with no expectations recorded: the paper's rules decide."""
        return self.book.unexpected(self.ledger.verdicts)

    def export(self) -> dict:
        """What a pytest-xdist worker sends the controller (see merge): its ledger whole, the
        tally's shared fields, the claims it planned and its fingerprint."""
        return {"fingerprint": self.fingerprint(), "claims_planned": self.tally.claims_planned,
                **{f.name: getattr(self.ledger, f.name) for f in fields(Ledger)},
                "results": {k: r for k, r in self.ledger.results.items()  # not the shared
                            if k[2] in RECORDS},  # parts (tensors its experiments continue)
                **{n: getattr(self.tally, n) for n in Tally.SHARED}}

    def held(self, name: str):
        """The field of the ledger or tally an export's `name` is merged into."""
        return getattr(self.ledger if name in LEDGER else self.tally, name)

    def plan_claims(self, claims) -> None:
        """The claims whose tests were collected (before -k or -m deselect any): a run plans
        those, not every registered claim (a user's own suite runs only its own)."""
        self.tally.claims_planned = set(claims)

    def planned(self) -> set:
        """Every (claim, model, grid) the run asks for, where the grid runs its experiment."""
        planned = self.tally.claims_planned
        claims = [c for c in registry.CLAIMS if planned is None or c in planned]
        return {(c, m, g) for m in self.checked.models for g, grid in self.grids.items()
                for c in claims if grid.not_run(c) is None}

    def not_run(self) -> dict:
        """(claim, model, grid) -> why no verdict came (deselected, interrupted, or an error)."""
        by_key, tally = {}, self.tally
        for node, key in tally.collected.items():
            by_key.setdefault(key, []).append(node)
        out = {}
        for key in sorted(self.planned() - set(self.ledger.verdicts)):
            why = next((tally.outcomes[n] for n in by_key.get(key, ()) if n in tally.outcomes),
                       None)
            out[key] = "deselected" if key not in by_key else why or (
                "interrupted" if tally.interrupted else "did not run")
        return out

    def fingerprint(self) -> dict:
        if not self.ident.fingerprint:
            self.ident.fingerprint.update(provenance.fingerprint(
                self.settings.claims_file, self.grids, getattr(self.thresholds, "files", ())))
        return self.ident.fingerprint

    def merge(self, other: dict) -> None:
        """Take in a worker's export: each model runs on one worker, so keys never collide; a
        worker whose code, rules, grids or libraries differ is refused."""
        provenance.same_or_refuse(self.fingerprint(), other["fingerprint"], "a worker")
        if other.get("claims_planned") is not None:
            self.tally.claims_planned = (self.tally.claims_planned or set()) | \
                set(other["claims_planned"])
        for name in (*LEDGER, *Tally.SHARED):
            mine = self.held(name)
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
        tally, led, ident = self.tally, self.ledger, self.ident
        stopped = sorted(tally.tests_left) if tally.interrupted else []  # e.g. cells after one
        return {"run_id": ident.run_id,
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ident.started_at)),
                **self.fingerprint(),
                "status": "PARTIAL" if missing or stopped else "COMPLETE",
                "tests_interrupted": stopped,
                "not_run": [{"claim": c, "model": m, "grid": g, "why": why}
                            for (c, m, g), why in missing.items()],
                "wall_seconds": round(time.time() - ident.started_at, 1), "plan": s.plan,
                "token_budget": s.token_budget, "models_requested": list(s.models),
                "grids": {label: {"name": g.name, "sha256": g.sha256, "source": g.source,
                                  "experiments": list(g.experiments),
                                  **{k: getattr(g, k) for k in self.GRID_CONTENT}}
                          for label, g in c.grids.items()},
                "models_planned": list(c.models),
                "claims_planned": (None if tally.claims_planned is None
                                   else sorted(tally.claims_planned)),
                "without_expectations": self.unexpected(),
                "timings": [[*k, v] for k, v in sorted(led.timings.items())],
                "chat_template": c.template.name, "layers": s.layers, "probes": list(s.probes),
                "dtype_option": s.dtype, "device_option": s.device, "torch_threads": self.threads,
                "load_seconds": led.load_seconds,
                "seconds": {" / ".join(k): v for k, v in sorted(led.timings.items())},
                "from_resume_cache": {" / ".join(k): v for k, v in sorted(led.from_cache.items())},
                "resume_cache_not_used": list(tally.resume_notes),
                "failed": {" / ".join(k): v for k, v in sorted(tally.failed.items())},
                "platform": platform.platform(),
                "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
                "args": ident.args}

    def update_expectations(self) -> list[str]:
        """Record this run's verdicts, cell findings and deciding numbers as the expectations and
        write them; what changed, one line each (a file written with no change says so)."""
        with expected.locked(self.settings.expected_dir):  # re-read: keep others' sections
            return self.save_expectations(self.record_expectations())[0]

    def record_expectations(self) -> dict:
        """model -> (its expectations with this run's verdicts, cell findings and deciding numbers
        recorded, what changed: a line each), not saved yet. Read under the expectations folder's
        lock, which the caller holds until save_expectations (others' sections are kept)."""
        ran = [(m, g) for (_c, m, g) in (*self.ledger.verdicts, *self.ledger.cell_checks)]
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
        setup, led = self.book.setup, self.ledger
        whole = setup(model)  # for a claim or check no longer registered
        claim_setup = {c.id: setup(model, c.experiment) for c in registry.CLAIMS.values()}
        check_setup = {n: setup(model, c.experiment) for n, c in registry.CELL_CHECKS.items()}
        for grid in dict.fromkeys(grids):  # each claim under the setup its experiment reads
            verdicts = {c: v for (c, m, g), (v, _e) in led.verdicts.items()
                        if (m, g) == (model, grid)}
            cells = {c: (ran, led.cell_failures.get((c, m, g), []))
                     for (c, m, g), ran in led.cell_checks.items()
                     if (m, g) == (model, grid)}
            for setup in dict.fromkeys([*(claim_setup.get(c, whole) for c in verdicts),
                                        *(check_setup.get(c, whole) for c in cells)]):
                where = f"{model} / {setup} / {self.grids[grid].key}"
                changes += [f"{where}: {c}" for c in exp.record(
                    setup, self.grids[grid].key,
                    {c: v for c, v in verdicts.items() if claim_setup.get(c, whole) == setup},
                    {c: r for c, r in cells.items() if check_setup.get(c, whole) == setup})]
        return exp, changes

    def gate(self, doc: dict, rewritten=None):
        """The regression gate's outcome (a verdicts.gate.GateOutcome) on this run's results.json
        `doc`: gating.gate_of, the one gate, which a merge of shards applies too."""
        s = self.settings
        return gating.gate_of(doc, gating.expectation_folders(s.expected_dir),
                              tuple(rewritten or ()) if s.updating else None, self.tally.refused,
                              s.regen_all)

    def finish(self) -> Outcome:
        """Apply the regression gate (or record the expectations), write the report set, which
        shows the gate's outcome, and only then rewrite the expectations: a rewrite that fails
        leaves this run's report set published."""
        if not (self.ledger.verdicts or self.ledger.results or self.tally.refused
                or self.out.folder):
            return Outcome()  # no claim run started (collect-only, lac's own tests): no report
        if not self.settings.updating:
            return self._finish({})
        with expected.locked(self.settings.expected_dir):  # from re-reading to rewriting
            return self._finish(self.record_expectations())

    def _finish(self, pending: dict) -> Outcome:
        out = self.out
        # the gate is applied to results.json as written (as a merge of shards applies it), and
        # the report set is rendered from results.json as read back, never from this session
        doc = results_document(self)  # plain JSON values
        out.gate_outcome = gate = self.gate(doc, tuple(
            change for _e, changes in pending.values() for change in changes))
        doc = json.loads(results_text({**doc, "regression_gate": gate.to_json()}))
        folder = out.folder or Folder(self.settings.report_dir, self.settings.reports_overwrite,
                                      run_id=self.ident.run_id)
        where, kept = write_report_set(RunSource.of(doc), folder)
        moved = [f"lac: {folder.path / name} appeared during the run and lac did not write it; "
                 "it is kept as it is" for name in kept] + \
            [f"lac: this run's report set is in {where} instead"] if kept else []
        out.report_folder = where
        if self.settings.updating:
            updates, saved = self.save_expectations(pending)
            review = [gating.REVIEW] if gate.review and saved else []
            return Outcome([*moved, *updates, *review], failed=bool(kept or review or not saved))
        notes = [f"lac: no expectations for {k}; the paper's rules decided"
                 for k in gate.without_expectations]
        return Outcome([*notes, *moved, *self.tally.refused, *gate.failure_lines()],
                       failed=gate.failed or bool(kept))
