"""The pytest plugin: options, fixtures, collection and the terminal summary; nothing else."""
# The root conftest.py only loads this module. Settings are built once from the options and kept
# with the run's Session (session.py) in the config stash; results are computed once per (model,
# grid, experiment) and kept there; the session's end writes the report and gates.
from __future__ import annotations

import gc
import time

import pytest

from . import rules
from .engine import Engine
from .models import load, resolve
from .prompts import load_grids
from .session import Session
from .settings import OPTIONS, Settings

SESSION = pytest.StashKey[Session]()


def pytest_addoption(parser):
    group = parser.getgroup("lac", "persona x task claim suite")
    for flag, _field, _convert, kw, text in OPTIONS:
        group.addoption(flag, help=text, **kw)


def pytest_configure(config):
    settings = Settings.from_options(config.getoption)
    config.stash[SESSION] = Session.start(settings, args=config.invocation_params.args)


def pytest_generate_tests(metafunc):
    settings = metafunc.config.stash[SESSION].settings
    names, session = metafunc.fixturenames, "session"
    if "model_name" in names:
        ids = [resolve(m).name for m in settings.models]
        metafunc.parametrize("model_name", settings.models, ids=ids, scope=session)
    if "grid_name" in names and "cell_id" in names:
        grids = load_grids()
        pairs = [(g, c.id) for g in settings.grids for c in grids[g].cells]
        ids = [f"{g}-{c}" for g, c in pairs]
        metafunc.parametrize(("grid_name", "cell_id"), pairs, ids=ids, scope=session)
    elif "grid_name" in names:
        metafunc.parametrize("grid_name", settings.grids, scope=session)
    elif "marker_cell" in names:
        cells = [c.id for c in load_grids()["markers"].cells]
        metafunc.parametrize("marker_cell", cells, scope=session)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Keep each model's tests together (stable sort after pytest's own reordering), so every model
    is loaded once: pytest would otherwise interleave models to group the session-scoped cells."""
    models = config.stash[SESSION].settings.models

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


@pytest.fixture(scope="session")
def lm(model_name, lac_session):
    """The loaded model; pytest groups tests by model, so one is in memory at a time."""
    t0 = time.perf_counter()
    loaded = load(model_name, lac_session.settings)
    lac_session.load_seconds[loaded.spec.name] = round(time.perf_counter() - t0, 1)
    lac_session.provenance[loaded.spec.name] = loaded.provenance
    yield loaded
    del loaded
    gc.collect()


@pytest.fixture(scope="session")
def compute(lm, lac_session):
    """compute(grid, kind, experiment, **kw): the experiment's result on this model, once."""
    def get(grid: str, kind: str, experiment, **kw):
        key = (lm.spec.name, grid, kind)
        if key not in lac_session.results:
            eng = Engine(lm, lac_session.settings.token_budget)
            lac_session.results[key] = experiment(eng, load_grids()[grid], **kw)
        return lac_session.results[key]

    return get


@pytest.fixture(scope="session")
def sweep_result(compute, grid_name, lac_session):
    from .experiments import sweep

    return compute(grid_name, "sweep", sweep, plan=lac_session.settings.plan)


@pytest.fixture(scope="session")
def sweep_summary(sweep_result):
    return sweep_result.summary


@pytest.fixture(scope="session")
def marker_grid_residuals(lm, lac_session):
    """Residuals at p_last on the marker grid, shared by experiments 2, 3 and 4."""
    from .experiments import p_last_residuals

    return p_last_residuals(Engine(lm, lac_session.settings.token_budget), load_grids()["markers"])


@pytest.fixture(scope="session")
def marker_result(compute, lac_session, marker_grid_residuals):
    from .experiments import markers

    return compute("markers", "markers", markers, residuals=marker_grid_residuals,
                   stems=lac_session.thresholds.markers.stems)


@pytest.fixture(scope="session")
def host_result(compute, marker_grid_residuals):
    from .experiments import host_injection

    return compute("markers", "host", host_injection, residuals=marker_grid_residuals)


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
        runs = {g: r.cost.get("wall_seconds") for (m, g, k), r in session.results.items()
                if m == model and k == "sweep"}
        tr.write_line(f"time {model}: load {secs}s, sweeps {runs}")


def pytest_sessionfinish(session, exitstatus):
    lac = session.config.stash.get(SESSION, None)
    if lac is None:
        return
    outcome = lac.finish()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in outcome.lines:
        tr.write_line(line) if tr else print(line)
    if outcome.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
