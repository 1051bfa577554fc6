"""The pytest plugin: options, fixtures, collection and the terminal summary; nothing else."""
# The root conftest.py only loads this module. Settings are built once from the options and
# checked with the run's Session (session.py) before any work; results are computed once per
# (model, grid, experiment) and kept there; the session's end writes the report and gates.
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import time
from dataclasses import dataclass

import pytest
import torch

from . import rules
from .engine import Engine
from .errors import LacError
from .models import load
from .progress import Progress
from .session import Session
from .settings import OPTIONS, Settings

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


class _Xdist:
    """Hooks that exist only with pytest-xdist: each model's tests go to one worker, and each
    worker's results reach the controller through xdist's own channel (workeroutput), so
    workers on other hosts (--tx) work too."""

    def __init__(self, config):
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """Scopes by model (xdist_group needs Item._nodeid, which pytest 9.2 no longer reads)."""
        from xdist.scheduler import LoadScopeScheduling

        if config.getvalue("dist") not in ("load", "loadgroup"):
            return None
        models = sorted(config.stash[SESSION].checked.models, key=len, reverse=True)

        class ByModel(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                params = nodeid.rsplit("[", 1)[-1] if nodeid.endswith("]") else ""
                return next((m for m in models if params.startswith((f"{m}-", f"{m}]"))),
                            super()._split_scope(nodeid))

        return ByModel(config, log)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        """On the controller: the start and end lines a worker attached to its test reports."""
        progress = self.config.stash[SESSION].progress
        worker = getattr(getattr(report, "node", None), "gateway", None)
        for key, lines in report.user_properties:
            for line in lines if key == "lac_progress" else ():
                progress.say(f"[{getattr(worker, 'id', '?')}] {line}")

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error):
        data = getattr(node, "workeroutput", {}).get("lac")
        if data:
            node.config.stash[SESSION].merge(pickle.loads(data))


def pytest_configure(config):
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
    config.stash[SESSION] = session
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Xdist(config), "lac-xdist")


def _say(config):
    """A line on the terminal, past pytest's output capture (so it shows while tests run)."""
    def say(line: str) -> None:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        cap = config.pluginmanager.get_plugin("capturemanager")
        if tr is not None:
            with cap.global_and_fixture_disabled() if cap else contextlib.nullcontext():
                tr.write_line(line)
    return say


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On an xdist worker: the start and end lines so far travel with the next test report."""
    outcome = yield
    session = item.config.stash.get(SESSION, None)
    if session is not None and hasattr(item.config, "workerinput") and session.progress.lines:
        outcome.get_result().user_properties.append(("lac_progress", list(session.progress.lines)))
        session.progress.lines.clear()


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
    except Exception as exc:  # noqa: BLE001  any cause: reported once, other models go on
        progress.end(f"failed: {type(exc).__name__}")
        yield LoadFailure(model_name, f"{type(exc).__name__}: {exc}")
        return
    progress.end(f"{spec.dtype} on {loaded.provenance['device']}")
    lac_session.load_seconds[spec.name] = round(time.perf_counter() - t0, 1)
    lac_session.provenance[spec.name] = loaded.provenance
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
    and kept in the session (result fixtures are function-scoped so that _model_gate runs first)."""
    def get(grid: str, kind: str, experiment, **kw):
        key = (lm.spec.name, grid, kind)
        if key not in lac_session.results:
            progress, t0 = lac_session.progress, time.perf_counter()
            eng = Engine(lm, lac_session.settings.token_budget, progress=progress)
            progress.start(f"{lm.spec.name} / {grid} {kind}")
            lac_session.results[key] = experiment(eng, lac_session.grids[grid], **kw)
            lac_session.timings[key] = round(time.perf_counter() - t0, 1)
            progress.end(f"{len(lac_session.grids[grid].cells)} cells, {eng.cost.tokens:,} forward "
                         "tokens")
        return lac_session.results[key]

    return get


@pytest.fixture
def sweep_result(compute, sweep_grid, lac_session):
    from .experiments import sweep

    s = lac_session.settings
    return compute(sweep_grid, "sweep", sweep, layers=s.layers, probes=s.probes, plan=s.plan)


@pytest.fixture
def sweep_summary(sweep_result):
    return sweep_result.summary


def _residuals(compute, grid: str):
    """Residuals at p_last of the four conditions, shared by experiments 2, 3 and 4."""
    from .experiments import p_last_residuals

    return compute(grid, "residuals", p_last_residuals)


@pytest.fixture
def marker_result(compute, marker_grid, lac_session):
    from .experiments import markers

    return compute(marker_grid, "markers", markers, residuals=_residuals(compute, marker_grid),
                   stems=lac_session.thresholds.markers.stems)


@pytest.fixture
def host_result(compute, host_grid):
    from .experiments import host_injection

    return compute(host_grid, "host", host_injection, residuals=_residuals(compute, host_grid))


def _xfail(request, reason: str):
    request.applymarker(pytest.mark.xfail(strict=True, reason=f"finding: {reason}"))


@pytest.fixture
def claim_gate(request, lac_session):
    """Record a verdict and assert it: a claim must hold unless the model's expectations say
    otherwise, then it is a strict xfail (a change of verdict, either way, fails the run)."""

    def gate(claim: str, verdict: rules.Verdict, model: str, grid: str):
        exp = lac_session.record_verdict(claim, model, grid, verdict)
        if exp is not None and verdict.status != exp:
            pytest.fail(f"{claim} verdict changed on {model} / {grid}: expected {exp}, "
                        f"got {verdict.explain()}")
        if exp is not None and exp != rules.HOLDS:
            _xfail(request, verdict.explain())
        assert verdict.status == rules.HOLDS, verdict.explain()

    return gate


@pytest.fixture
def cell_gate(request, lac_session):
    """Run a per-cell check (rules.CELL_CHECKS): failures the model's expectations list are
    strict xfails, others must pass."""

    def gate(check: str, result, model: str, grid: str, cell: str):
        problems = rules.CELL_CHECKS[check](result, cell, lac_session.thresholds)
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
    if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller reports
        session.config.workeroutput["lac"] = pickle.dumps(lac.export())
        return
    outcome = lac.finish()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in outcome.lines:
        tr.write_line(line) if tr else print(line)
    if outcome.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
