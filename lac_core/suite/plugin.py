"""The pytest plugin: options, fixtures, collection and the terminal summary; nothing else."""
# The root conftest.py only loads this module. Settings are built once from the options and
# checked with the run's Session (session.py) before any work; results are computed once per
# (model, grid, experiment) and kept there; the session's end writes the report and gates.
from __future__ import annotations

import contextlib
import functools
import gc
import os
import time
from dataclasses import dataclass

import pytest
import torch

from ..verdicts import cells, rules, uncertainty
from . import distributed
from ..report import reportset
from ..engine.forward import Engine
from ..protocol.experiments import special_tokens_in, too_long
from ..engine.memory import release_freed
from ..errors import LacError
from ..models import load
from ..run.progress import Progress
from ..run.session import Outcome, Session
from ..run.settings import OPTIONS, Settings
from ..protocol.templates import check_model

SESSION = pytest.StashKey[Session]()
KINDS = ("sweep", "marker", "host")  # fixtures <kind>_grid and <kind>_cell
EXPERIMENT = {"sweep": "sweep", "marker": "markers", "host": "host"}


def pytest_addoption(parser):
    group = parser.getgroup("lac", "persona x task claim suite")
    for flag, _field, _convert, kw, text in OPTIONS:
        group.addoption(flag, help=text, **kw)


def pytest_cmdline_main(config):
    """Under pytest-xdist (-n N) each model's tests go to one worker: --dist loadgroup."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "") == "load":
        option.dist = "loadgroup"


def pytest_configure(config):
    config.addinivalue_line("markers", "claim(id): the claim a test decides (for the run status)")
    try:
        settings = Settings.from_options(config.getoption)
        session = Session.start(settings, config.invocation_params.args)
    except LacError as exc:  # one message, no test run, nothing written
        raise pytest.UsageError(f"lac: {exc}") from None
    for line in session.checked.warnings:
        config.issue_config_time_warning(UserWarning(line), stacklevel=2)
    workers = getattr(config, "workerinput", {}).get("workercount")
    shared = max(1, (os.cpu_count() or 1) // workers) if workers else None  # cores / workers
    threads = session.settings.threads or shared
    if threads:
        torch.set_num_threads(threads)
    session.threads = torch.get_num_threads()
    verbose, worker = config.option.verbose, hasattr(config, "workerinput")
    if verbose > -2 and not worker:
        session.progress = Progress(_say(config), detail=verbose >= 0)
    if worker:  # one run: the controller's id names what every worker computes
        session.run_id = config.workerinput.get("lac_run_id", session.run_id)
    config.stash[SESSION] = session
    if worker:
        config.pluginmanager.register(distributed.Worker(session, config), "lac-worker")
    elif config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(distributed.Controller(session), "lac-controller")


def _say(config):
    """A line on the terminal, past pytest's output capture (so it shows while tests run)."""
    def say(line: str) -> None:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        cap = config.pluginmanager.get_plugin("capturemanager")
        if tr is not None:
            with cap.global_and_fixture_disabled() if cap else contextlib.nullcontext():
                tr.write_line(line)
    return say


def pytest_generate_tests(metafunc):
    session = metafunc.config.stash[SESSION]
    names = metafunc.fixturenames
    if "model_name" in names:
        metafunc.parametrize("model_name", list(session.checked.models), scope="session")
    for kind in KINDS:
        grids = [k for k, g in session.grids.items() if EXPERIMENT[kind] in g.experiments]
        if f"{kind}_cell" in names:
            pairs = [(k, c.id) for k in grids for c in session.grids[k].cells]
            metafunc.parametrize((f"{kind}_grid", f"{kind}_cell"), pairs, scope="session",
                                 ids=[f"{k}-{c}" for k, c in pairs])
        elif f"{kind}_grid" in names:
            metafunc.parametrize(f"{kind}_grid", grids, scope="session")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Keep each model's tests together (stable sort after pytest's own reordering), so every model
    is loaded once: pytest would otherwise interleave models to group the session-scoped cells."""
    models = list(config.stash[SESSION].checked.models)

    def model_index(item):
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name") if spec else None
        return models.index(name) if name in models else -1

    items.sort(key=model_index)
    lac = config.stash[SESSION]
    if any("lm" in getattr(item, "fixturenames", ()) for item in items) and \
            not hasattr(config, "workerinput") and not config.option.collectonly:
        s = lac.settings
        folder = reportset.Folder(s.report_dir, s.reports_overwrite)
        try:  # held until the session ends: a second run into the folder is refused here
            folder.lock(lac.run_id)
            folder.check(lac.report_files())
        except LacError as exc:  # nothing is written: the folder is not this run's
            folder.release()
            pytest.exit(f"lac: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        lac.folder = folder
    for item in items:
        mark, params = item.get_closest_marker("claim"), getattr(item, "callspec", None)
        if mark and params:
            grid = next(v for k, v in params.params.items() if k.endswith("_grid"))
            lac.collected[item.nodeid] = (mark.args[0], params.params["model_name"], grid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Why a claim test gave no verdict (its setup error or skip), for the run status."""
    report = (yield).get_result()
    lac = item.config.stash.get(SESSION, None)
    if lac is not None and item.nodeid in lac.collected and report.when == "setup" \
            and not report.passed:
        text = str(report.longrepr).strip().splitlines() or [""]
        lac.outcomes[item.nodeid] = ("error: " if report.failed else "skipped: ") + text[-1][:160]


@pytest.fixture(scope="session")
def lac_session(request) -> Session:
    return request.config.stash[SESSION]


@pytest.fixture(scope="session")
def thresholds(lac_session):
    return lac_session.thresholds


@pytest.fixture(scope="session")
def lac_models(lac_session):
    """Loaded models by name, kept for the whole session (tests and benchmarks share them)."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load(name, lac_session.settings)
        return loaded[name]

    return get


@dataclass
class LoadFailure:
    """A model that did not load: its first test fails with the cause, the others are skipped."""

    model: str
    cause: str
    reported: bool = False


@pytest.fixture(scope="session")
def lm(model_name, lac_session):
    """The loaded model (or its LoadFailure); tests are grouped by model, one loaded at a time."""
    t0, progress = time.perf_counter(), lac_session.progress
    spec = lac_session.checked.models[model_name]
    progress.start(f"{model_name} load")
    try:
        loaded = load(spec, lac_session.settings, lac_session.checked.template,
                      say=lambda msg: progress.say(f"lac: {msg}"))
        check_model(f"{model_name}'s chat template ({loaded.template.name})", loaded.tokenizer,
                    loaded.template)  # the model's own is only known now
    except Exception as exc:  # noqa: BLE001  any cause: reported once, other models go on
        progress.end(f"failed: {type(exc).__name__}")
        lac_session.failed[(model_name, "load")] = f"{type(exc).__name__}: {exc}"
        yield LoadFailure(model_name, f"{type(exc).__name__}: {exc}")
        return
    progress.end(f"{spec.dtype} on {loaded.provenance['device']}")
    lac_session.load_seconds[spec.name] = round(time.perf_counter() - t0, 1)
    lac_session.provenance[spec.name] = loaded.provenance
    for label, grid in lac_session.grids.items():  # before any experiment: prompts that fit
        try:
            why = special_tokens_in(loaded, grid) or too_long(loaded, grid)
        except LacError as exc:  # a prompt that cannot be rendered for this model
            why = f"grid {grid.key}: {type(exc).__name__}: {exc}"
        if why:
            lac_session.failed[(spec.name, label, "*")] = why
    yield loaded
    del loaded
    gc.collect()


@pytest.fixture(autouse=True)
def _model_gate(request):
    """Fail the first test of a model that did not load, with the cause; skip its other tests."""
    if "model_name" not in request.fixturenames:
        return
    model = request.getfixturevalue("lm")
    if isinstance(model, LoadFailure):
        if not model.reported:
            model.reported = True
            pytest.fail(f"{model.model} failed to load: {model.cause}", pytrace=False)
        pytest.skip(f"{model.model} failed to load (the cause is reported once, above)")


@pytest.fixture(scope="session")
def compute(lm, lac_session):
    """compute(grid, kind, experiment, **kw): the experiment's result on this model, computed once
    and kept in the session (result fixtures are function-scoped so that _model_gate runs first).
    An experiment that raises fails the test that asked first, with the cause; every later test
    that needs it is skipped naming it, and other experiments and models go on."""
    def get(grid: str, kind: str, experiment, **kw):
        key, s = (lm.spec.name, grid, kind), lac_session
        if key in s.results:
            return s.results[key]
        failed = next((k for k in (key, (*key[:2], "*")) if k in s.failed), None)
        if failed is not None:  # the first test that needs it fails with the cause, once
            if failed not in s.reported:
                s.reported.add(failed)
                pytest.fail(f"{' / '.join(key)} failed: {s.failed[failed]}", pytrace=False)
            pytest.skip(f"needs {' / '.join(key)}, which failed (the cause is reported once, "
                        f"above): {s.failed[failed][:200]}")
        rkey = s.result_key(*key, kw)
        cached = s.resume.get(key, rkey)
        _tell_notes(s)
        if cached is not None:
            s.results[key], s.from_cache[key] = cached, s.resume.used[key]
            s.progress.say(f"{' / '.join(key)}: from the resume cache (run {s.from_cache[key]})")
            return cached
        progress, t0 = s.progress, time.perf_counter()
        kw = {k: v() if isinstance(v, functools.partial) else v for k, v in kw.items()}
        release_freed()  # earlier experiments' garbage would add to this one's peak memory
        eng = Engine(lm, s.settings.token_budget, progress=progress)
        progress.start(f"{lm.spec.name} / {grid} {kind}")
        try:
            s.results[key] = experiment(eng, s.grids[grid], **kw)
        except Exception as exc:  # noqa: BLE001  reported once; what does not need it goes on
            s.failed[key] = f"{type(exc).__name__}: {exc}"
            s.reported.add(key)
            progress.end(f"failed: {type(exc).__name__}")
            if isinstance(exc, LacError):  # lac's own errors say all there is to say
                pytest.fail(f"{' / '.join(key)} failed: {s.failed[key]}", pytrace=False)
            raise
        s.timings[key] = round(time.perf_counter() - t0, 1)
        s.resume.put(key, rkey, s.results[key], s.run_id)  # kept before it is announced
        _tell_notes(s)
        progress.end(f"{len(s.grids[grid].cells)} cells, {eng.cost.tokens:,} forward tokens")
        return s.results[key]

    return get


def _tell_notes(s: Session) -> None:
    """The resume cache's notes (entries not used, results not kept): in the log and the report."""
    for note in s.resume.notes[len(s.resume_notes):]:
        s.resume_notes.append(note)
        s.progress.say(f"lac: {note}")


@pytest.fixture
def sweep_result(compute, sweep_grid, lac_session):
    from ..protocol.experiments import sweep

    s = lac_session.settings
    return compute(sweep_grid, "sweep", sweep, layers=s.layers, probes=s.probes, plan=s.plan)


@pytest.fixture
def sweep_summary(sweep_result):
    return sweep_result.summary


def _residuals(compute, grid: str):
    """Residuals at p_last of the four conditions, shared by experiments 2, 3 and 4."""
    from ..protocol.experiments import p_last_residuals

    return compute(grid, "residuals", p_last_residuals)


def _target(compute, grid: str):
    """The clean XY prompts' first greedy tokens and log-probs, shared by host and steering."""
    from ..protocol.experiments import xy_target

    return compute(grid, "target", xy_target)


@pytest.fixture
def marker_result(compute, marker_grid, lac_session):
    from ..protocol.experiments import markers

    return compute(marker_grid, "markers", markers,
                   residuals=functools.partial(_residuals, compute, marker_grid),
                   stems=lac_session.thresholds.markers.stems)


@pytest.fixture
def steering_result(compute, marker_grid, marker_result, lac_session):
    from ..protocol.steering import steering

    return compute(marker_grid, "steering", steering, marker_result=marker_result,
                   residuals=functools.partial(_residuals, compute, marker_grid),
                   target=functools.partial(_target, compute, marker_grid),
                   pairs=lac_session.settings.swap_pairs)


@pytest.fixture
def host_result(compute, host_grid):
    from ..protocol.experiments import host_injection

    return compute(host_grid, "host", host_injection,
                   residuals=functools.partial(_residuals, compute, host_grid),
                   target=functools.partial(_target, compute, host_grid))


def _why(verdict, claim: str, result, thresholds) -> str:
    """The verdict, its deciding part's numbers and interval, and the cells against the line."""
    d = verdict.deciding
    against = cells.against(claim, d, result, thresholds) if d else []
    margin = d.intervals.get("margin") if d else None
    return (verdict.explain() + (f"; margin {d.margin:.4g}, 95% interval [{margin[0]:.4g}, "
                                 f"{margin[1]:.4g}]" if margin else "")
            + (f"; FRAGILE: {', '.join(verdict.fragile)}" if verdict.fragile else "")
            + (f"; cells against the line ({len(against)}/{len(result.cells)}): "
               f"{', '.join(against[:12])}" if against else ""))


def _xfail(request, reason: str):
    request.applymarker(pytest.mark.xfail(strict=True, reason=f"finding: {reason}"))


@pytest.fixture
def claim_gate(request, lac_session):
    """Record a verdict and assert it: a claim must hold unless the model's expectations say
    otherwise, then it is a strict xfail (a change of verdict, either way, fails the run)."""

    def gate(claim: str, result, model: str, grid: str):
        verdict = uncertainty.judge(claim, result, lac_session.thresholds)
        exp = lac_session.record_verdict(claim, model, grid, verdict)
        if exp is not None and verdict.status != exp:
            pytest.fail(f"{claim} verdict changed on {model} / {grid}: expected {exp}, "
                        f"got {_why(verdict, claim, result, lac_session.thresholds)}")
        if exp is not None and exp != rules.HOLDS:
            _xfail(request, verdict.explain())
        assert verdict.status == rules.HOLDS, _why(verdict, claim, result, lac_session.thresholds)

    return gate


@pytest.fixture
def cell_gate(request, lac_session):
    """Run a per-cell check (cells.CELL_CHECKS): failures the model's expectations list are
    strict xfails, others must pass."""

    def gate(check: str, result, model: str, grid: str, cell: str):
        problems = cells.CELL_CHECKS[check](result, cell, lac_session.thresholds)
        if lac_session.record_cell(check, model, grid, cell, problems):
            _xfail(request, f"{check} fails on {model} / {grid} / {cell}")
        assert not problems, f"{check} on {model} / {grid} / {cell}: " + "; ".join(problems)

    return gate


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = config.stash[SESSION]
    if not session.verdicts:
        return
    tr = terminalreporter
    tr.section("lac verdicts (claim x model x grid)")
    for (claim, model, grid), (v, exp) in sorted(session.verdicts.items()):
        flag = "" if exp in (None, v.status) else f"  (expected {exp})"
        d = v.deciding
        tr.write_line(f"{claim:4} {model:32} {grid:8} {v.status:12} {d.name if d else '-'}: "
                      f"{d.detail if d else ''}{flag}")
    for model, secs in session.load_seconds.items():
        runs = {f"{g} {k}": s for (m, g, k), s in session.timings.items() if m == model}
        tr.write_line(f"time {model}: load {secs}s, {runs}")


def pytest_sessionfinish(session, exitstatus):
    lac = session.config.stash.get(SESSION, None)
    if lac is None:
        return
    lac.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop
                                                                       or session.shouldfail)
    worker = session.config.pluginmanager.get_plugin("lac-worker")
    if worker:  # an xdist worker: the controller reports
        worker.export()
        return
    try:
        outcome = lac.finish()
    except LacError as exc:  # the report set could not be written: the previous one stands
        outcome = Outcome([f"lac: {exc}"], failed=True)
    finally:
        if lac.folder is not None:
            lac.folder.release()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in outcome.lines:
        tr.write_line(line) if tr else print(line)
    if outcome.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
