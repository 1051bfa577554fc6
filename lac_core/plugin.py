"""The pytest plugin: options, one model per session at a time, result fixtures, verdicts, report.

The root conftest.py only loads this module. Results are computed once per
(model, grid) and kept in the session stash; verdicts recorded by the claim
tests are printed as a table and written, with every number, to reports/.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import pytest

from . import DEFAULT_TOKEN_BUDGET, baselines, rules
from . import expected as expected_mod
from .models import resolve
from .paths import REPORTS
from .prompts import load_grids

DEFAULT_MODELS = ["smollm2-135m-instruct"]
SWEEP_GRIDS = ("short", "long")


@dataclass
class RunState:
    models: list[str]
    grids: list[str]
    plan: str
    token_budget: int
    started: float = field(default_factory=time.time)
    provenance: dict = field(default_factory=dict)  # model -> provenance
    sweeps: dict = field(default_factory=dict)  # (model, grid) -> SweepResult
    markers: dict = field(default_factory=dict)  # model -> MarkerResult
    hosts: dict = field(default_factory=dict)  # model -> HostResult
    verdicts: dict = field(default_factory=dict)  # (claim, model, grid) -> (Verdict, expected status)
    cell_failures: dict = field(default_factory=dict)  # (check, model, grid) -> [cell ids]
    cell_checks: set = field(default_factory=set)  # (check, model, grid) that ran
    load_seconds: dict = field(default_factory=dict)


STATE = pytest.StashKey[RunState]()


def pytest_addoption(parser):
    g = parser.getgroup("lac", "persona x task claim suite")
    g.addoption("--model", action="append", default=None,
                help="model to check: registry name, hub id or local directory (repeatable; "
                     f"default {DEFAULT_MODELS[0]})")
    g.addoption("--grid", action="append", default=None, choices=SWEEP_GRIDS,
                help="sweep grid(s) for C1/C1L/C2/C5 (repeatable; default both)")
    g.addoption("--lac-plan", default="fast", choices=("fast", "naive"),
                help="execution plan of the sweep (naive = one full forward per site, the oracle)")
    g.addoption("--lac-token-budget", type=int, default=DEFAULT_TOKEN_BUDGET,
                help=f"max tokens per forward call (memory knob; default {DEFAULT_TOKEN_BUDGET})")
    g.addoption("--lac-offline", action="store_true", help="never fetch weights; a missing model is an error")
    g.addoption("--lac-update-baselines", action="store_true",
                help="rewrite fixtures/expected/<model>.yaml (verdicts, cell findings, baselines) from this run")
    g.addoption("--lac-reports", default=str(REPORTS), help="directory for results.json, REPORT.md and figures")


def pytest_configure(config):
    import os

    if config.getoption("--lac-offline"):
        os.environ["LAC_OFFLINE"] = "1"
    config.stash[STATE] = RunState(
        models=config.getoption("--model") or list(DEFAULT_MODELS),
        grids=config.getoption("--grid") or list(SWEEP_GRIDS),
        plan=config.getoption("--lac-plan"),
        token_budget=config.getoption("--lac-token-budget"),
    )


def pytest_generate_tests(metafunc):
    state = metafunc.config.stash[STATE]
    names = metafunc.fixturenames
    if "model_name" in names:
        metafunc.parametrize("model_name", state.models,
                             ids=[resolve(m).name for m in state.models], scope="session")
    if "grid_name" in names and "cell_id" in names:
        grids = load_grids()
        pairs = [(g, c.id) for g in state.grids for c in grids[g].cells]
        metafunc.parametrize(("grid_name", "cell_id"), pairs, ids=[f"{g}-{c}" for g, c in pairs], scope="session")
    elif "grid_name" in names:
        metafunc.parametrize("grid_name", state.grids, scope="session")
    elif "marker_cell" in names:
        cells = [c.id for c in load_grids()["markers"].cells]
        metafunc.parametrize("marker_cell", cells, scope="session")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Keep each model's tests together (stable sort after pytest's own reordering), so every model
    is loaded once: pytest would otherwise interleave models to group the session-scoped cells."""
    models = config.stash[STATE].models

    def model_index(item):
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name") if spec else None
        return models.index(name) if name in models else -1

    items.sort(key=model_index)


@pytest.fixture(scope="session")
def lac_state(request) -> RunState:
    return request.config.stash[STATE]


@pytest.fixture(scope="session")
def thresholds():
    return rules.load_thresholds()


@pytest.fixture(scope="session")
def lm(model_name, lac_state):
    """The loaded model; pytest groups tests by model, so one is in memory at a time."""
    from .models import load

    t0 = time.perf_counter()
    loaded = load(model_name)
    lac_state.load_seconds[loaded.spec.name] = round(time.perf_counter() - t0, 1)
    lac_state.provenance[loaded.spec.name] = loaded.provenance
    yield loaded
    del loaded
    gc.collect()


@pytest.fixture(scope="session")
def expectations(model_name):
    return expected_mod.load(resolve(model_name).name)


@pytest.fixture(scope="session")
def sweep_result(lm, grid_name, lac_state):
    key = (lm.spec.name, grid_name)
    if key not in lac_state.sweeps:
        from .experiments import sweep

        lac_state.sweeps[key] = sweep(lm, load_grids()[grid_name], plan=lac_state.plan,
                                      token_budget=lac_state.token_budget)
    return lac_state.sweeps[key]


@pytest.fixture(scope="session")
def sweep_summary(sweep_result):
    return sweep_result.summary()


@pytest.fixture(scope="session")
def marker_grid_residuals(lm, lac_state):
    """Residuals at p_last on the marker grid, shared by experiments 2, 3 and 4."""
    from .experiments import p_last_residuals

    return p_last_residuals(lm, load_grids()["markers"], token_budget=lac_state.token_budget)


@pytest.fixture(scope="session")
def marker_result(lm, lac_state, thresholds, marker_grid_residuals):
    if lm.spec.name not in lac_state.markers:
        from .experiments import markers

        lac_state.markers[lm.spec.name] = markers(lm, load_grids()["markers"], residuals=marker_grid_residuals,
                                                  stems=thresholds["markers"]["stems"])
    return lac_state.markers[lm.spec.name]


@pytest.fixture(scope="session")
def host_result(lm, lac_state, marker_grid_residuals):
    if lm.spec.name not in lac_state.hosts:
        from .experiments import host_injection

        lac_state.hosts[lm.spec.name] = host_injection(lm, load_grids()["markers"], residuals=marker_grid_residuals,
                                                       token_budget=lac_state.token_budget)
    return lac_state.hosts[lm.spec.name]


@pytest.fixture
def claim_gate(request, lac_state, expectations):
    """Record a verdict and assert it: a claim must hold unless the model's fixture says otherwise,
    in which case it is a strict xfail (so a change of verdict, either way, fails the run)."""

    def gate(claim: str, verdict: rules.Verdict, model: str, grid: str):
        exp = expectations.verdict(claim, grid) if expectations else None
        lac_state.verdicts[(claim, model, grid)] = (verdict, exp)
        if exp is not None and verdict.status != exp:
            pytest.fail(f"{claim} verdict changed on {model} / {grid}: expected {exp}, got {verdict.explain()}")
        if exp is not None and exp != rules.HOLDS:
            request.applymarker(pytest.mark.xfail(strict=True, reason=f"finding: {verdict.explain()}"))
        assert verdict.status == rules.HOLDS, verdict.explain()

    return gate


@pytest.fixture
def cell_gate(request, lac_state, expectations):
    """Per-cell checks: failures listed in the model's fixture are strict xfails, others must pass."""

    def gate(check: str, model: str, grid: str, cell: str, problems: list[str]):
        lac_state.cell_checks.add((check, model, grid))
        if problems:
            lac_state.cell_failures.setdefault((check, model, grid), []).append(cell)
        if expectations and expectations.cell_fails(check, grid, cell):
            request.applymarker(pytest.mark.xfail(
                strict=True, reason=f"finding: {check} fails on {model} / {grid} / {cell}"))
        assert not problems, f"{check} on {model} / {grid} / {cell}: " + "; ".join(problems)

    return gate


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash[STATE]
    if not state.verdicts:
        return
    tr = terminalreporter
    tr.section("lac verdicts (claim x model x grid)")
    for (claim, model, grid), (v, exp) in sorted(state.verdicts.items()):
        flag = "" if exp in (None, v.status) else f"  (expected {exp})"
        tr.write_line(f"{claim:4} {model:32} {grid:8} {v.status:12} {v.deciding.name if v.deciding else '-'}: "
                      f"{v.deciding.detail if v.deciding else ''}{flag}")
    for model, secs in state.load_seconds.items():
        runs = {g: r.cost.get("wall_seconds") for (m, g), r in state.sweeps.items() if m == model}
        tr.write_line(f"time {model}: load {secs}s, sweeps {runs}")


def _by_model(state):
    models = {m for (_c, m, _g) in state.verdicts}
    return {m: {k: v for k, v in state.verdicts.items() if k[1] == m} for m in models}


def _update_expectations(state) -> list[str]:
    """--lac-update-baselines: record this run's verdicts, per-cell findings and deciding numbers."""
    written = []
    for model, verdicts in _by_model(state).items():
        exp = expected_mod.load(model) or expected_mod.Expectations(model=model)
        for (claim, _m, grid), (v, _e) in verdicts.items():
            exp.verdicts.setdefault(claim, {})[grid] = v.status
            notes = exp.notes.setdefault(claim, {})
            if v.status != rules.HOLDS:
                notes[grid] = v.explain()
            else:
                notes.pop(grid, None)
            if not notes:
                exp.notes.pop(claim)
        ran = {(c, g) for (c, m, g) in state.cell_checks if m == model}
        for check, grid in ran:
            cells = sorted(state.cell_failures.get((check, model, grid), []))
            exp.cell_findings.setdefault(check, {})[grid] = cells
        new = baselines.make_baselines(baselines.quantities(verdicts))
        exp.baselines = {**exp.baselines, **new}
        written.append(str(expected_mod.save(exp)))
    return written


def _gate(state) -> list[str]:
    msgs = []
    for model, verdicts in _by_model(state).items():
        exp = expected_mod.load(model)
        if exp and exp.baselines:
            msgs += [f"{model}: {m}" for m in baselines.drift(exp.baselines, baselines.quantities(verdicts))]
    return msgs


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(STATE, None)
    if state is None or not (state.verdicts or state.sweeps):
        return
    from .report import write_reports

    write_reports(state, session.config)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr else print
    if session.config.getoption("--lac-update-baselines"):
        for path in _update_expectations(state):
            say(f"lac: wrote {path}")
        return
    msgs = _gate(state)
    if msgs:
        say("lac: numeric drift beyond tolerance (regression gate):", red=True) if tr else None
        for m in msgs:
            say(f"  {m}")
        say("lac: if the change is intended, rerun with --lac-update-baselines and review the diff")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
