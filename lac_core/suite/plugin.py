"""The pytest plugin (the pytest11 entry point): lac's options, and its hooks, which act only once
lac's part of the run has started (start.py). Fixtures are in fixtures.py, the claim and cell
gates in gates.py; every decision is taken in run/ and below."""
# Import-light by contract (.importlinter): this module and the plugins it names import none of
# torch, transformers, numpy or matplotlib at import time, so installing lac costs an unrelated
# pytest run nothing but the option registration.
from __future__ import annotations

import pytest

from ..errors import LacError
from ..run.settings import OPTIONS
from . import distributed
from .folder import open_folder, readable_interrupt, restore_sigterm
from .start import (FIXTURE, FIXTURES, SESSION, explicit, place, run_id, session,  # noqa: F401
                    start, started)

pytest_plugins = ["lac_core.suite.fixtures", "lac_core.suite.gates"]


def pytest_addoption(parser):
    group = parser.getgroup("lac", "persona x task claim suite")
    for flag, _field, _convert, kw, text in OPTIONS:
        group.addoption(flag, help=text, **kw)


def pytest_configure(config):
    config.addinivalue_line("markers", "claim(id): the claim a test decides (for the run status)")
    run_id(config)
    if hasattr(config, "workerinput"):  # before its settings are built: the controller's LAC_*
        distributed.take_environment(config.workerinput)
    if explicit(config):  # a lac option on the command line: a lac run, checked now
        try:
            start(config)
            if not hasattr(config, "workerinput"):
                lac = started(config)
                distributed.check_pins(config, lac.settings.pins, list(lac.checked.models))
        except pytest.exit.Exception as exc:  # at configure time, as pytest's own usage errors
            raise pytest.UsageError(str(exc.msg)) from None
        except LacError as exc:
            raise pytest.UsageError(f"lac: {exc}") from None
    if hasattr(config, "workerinput"):  # an xdist worker: it sends, once lac's part started
        config.pluginmanager.register(distributed.Worker(config), "lac-worker")
    elif config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(distributed.Controller(config), "lac-controller")


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if not FIXTURES.intersection(names):
        return
    lac = session(metafunc.config)
    if "model_name" in names:
        metafunc.parametrize("model_name", list(lac.checked.models), scope="session")
    for experiment, kind in FIXTURE.items():
        grids = [k for k, g in lac.grids.items() if experiment in g.experiments]
        if f"{kind}_cell" in names:
            pairs = [(k, c.id) for k in grids for c in lac.grids[k].cells]
            metafunc.parametrize((f"{kind}_grid", f"{kind}_cell"), pairs, scope="session",
                                 ids=[f"{k}-{c}" for k, c in pairs])
        elif f"{kind}_grid" in names:
            metafunc.parametrize(f"{kind}_grid", grids, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Every claim test collected, before -k or -m deselect some: what the run planned. Every
    conftest is imported by now: claims registered since the start are checked here, before any
    model loads (in each process that collects: the run's, or each xdist worker)."""
    lac = started(config)
    if lac is not None:
        take_late_claims(session, lac, items)
        lac.plan_claims(mark.args[0] for item in items
                        if (mark := item.get_closest_marker("claim")) is not None)


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_last(session, config, items):
    """Keep each model's tests together (stable sort after pytest's own reordering), so every model
    is loaded once; open the report folder (lock, check) before any test runs."""
    lac = started(config)
    if lac is None:
        return
    models = list(lac.checked.models)

    def model_index(item):
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name") if spec else None
        return models.index(name) if name in models else -1

    items.sort(key=model_index)
    if any("lm" in getattr(item, "fixturenames", ()) for item in items) and \
            not hasattr(config, "workerinput") and not config.option.collectonly:
        open_folder(lac)
    lac.tally.tests_left.update(i.nodeid for i in items if "lm" in getattr(i, "fixturenames", ()))
    for item in items:
        at = place(item)
        if at.claim is not None and at.model is not None and at.grid is not None:
            lac.tally.collected[item.nodeid] = (at.claim, at.model, at.grid)


def take_late_claims(session, lac, items: list) -> None:
    """Load and check the thresholds of claims registered after the start (exit 4 on a bad one,
    nothing loaded, nothing written). An xdist worker also stops its controller, which says
    why and exits 4 (distributed.Controller); it reports no test collected, so its controller
    neither opens the report folder nor sends it tests."""
    try:
        lac.take_late_claims()
    except LacError as exc:
        message = f"lac: {exc}"
        items.clear()  # pytest_collection_finish still runs (pytest calls it in a finally)
        if hasattr(session.config, "workerinput"):
            session.config.workeroutput[distributed.USAGE] = message
            session.shouldstop = message
        pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Under pytest-xdist, each model's provenance names the gateway that ran it (its id: the
    host name alone does not tell two gateways on one machine apart), once the model loaded."""
    try:
        return (yield)
    finally:
        lac, worker = started(item.config), getattr(item.config, "workerinput", {})
        if lac is not None and worker.get("workerid"):
            for provenance in lac.ledger.provenance.values():
                provenance.setdefault("xdist_gateway", worker["workerid"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Why a claim test gave no verdict (its setup error or skip), for the run status."""
    report = (yield).get_result()
    lac = started(item.config)
    if lac is not None and report.when == "teardown":  # finished: not one an interrupt stopped
        lac.tally.tests_left.discard(item.nodeid)
    if lac is not None and item.nodeid in lac.tally.collected and report.when == "setup" \
            and not report.passed:
        text = str(report.longrepr).strip().splitlines() or [""]
        lac.tally.outcomes[item.nodeid] = \
            ("error: " if report.failed else "skipped: ") + text[-1][:160]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lac = started(config)
    if lac is None or not lac.ledger.verdicts:
        return
    tr = terminalreporter
    tr.section("lac verdicts (claim x model x grid)")
    for (claim, model, grid), (v, exp) in sorted(lac.ledger.verdicts.items()):
        flag = "" if exp in (None, v.status) else f"  (expected {exp})"
        d = v.deciding
        tr.write_line(f"{claim:4} {model:32} {grid:8} {v.status:12} {d.name if d else '-'}: "
                      f"{d.detail if d else ''}{flag}")
    for model, secs in lac.ledger.load_seconds.items():
        runs = [f"{g} {k} {s} s" for (m, g, k), s in lac.ledger.timings.items() if m == model]
        tr.write_line(time_line(model, secs, runs, lac.ledger.interval_seconds.get(model)))


def time_line(model: str, load: float, runs: list[str], intervals: float | None) -> str:
    """'time: M loaded in S s; experiments; intervals S s.', leaving out a part with nothing in
    it (no experiment ran when every result came from the resume cache)."""
    parts = [f"{model} loaded in {load} s", ", ".join(runs),
             f"intervals {intervals} s" if intervals is not None else ""]
    return "time: " + "; ".join(p for p in parts if p) + "."


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo):
    readable_interrupt(excinfo)  # before pytest's terminal reporter formats it


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """The session's end: report set and regression gate (the controller's, under xdist). The
    gate is also one test case, lac/regression_gate, logged before the JUnit and terminal
    reporters finish, so CI counts it like any test."""
    lac = started(session.config)
    if lac is None:
        return
    from ..run.session import Outcome

    lac.tally.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop
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
        restore_sigterm()
        if lac.out.folder is not None:
            lac.out.folder.release()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and getattr(getattr(tr, "_tw", None), "width_of_current_line", 0):
        tr.line("")  # under -q the progress dots leave the line open: lac's lines start anew
    for line in outcome.lines:
        tr.write_line(line) if tr else print(line)
    if lac.out.report_folder is not None:
        line = f"lac: report set written to {lac.out.report_folder}"
        tr.write_line(line) if tr else print(line)
    elif not outcome.lines and (lac.tally.claims_planned or explicit(session.config)) and \
            not session.config.option.collectonly:  # no lac test ran: the folder is not touched
        line = f"lac: no lac test was selected; {lac.settings.report_dir} is left as it was"
        tr.write_line(line) if tr else print(line)
    if lac.out.gate_outcome is not None:
        session.config.hook.pytest_runtest_logreport(report=gate_report(lac.out.gate_outcome))
    if outcome.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def gate_report(gate) -> pytest.TestReport:
    """The regression gate (a verdicts.gate.GateOutcome) as a test report (nodeid
    lac/regression_gate): passed, failed with the drift and changed verdicts, failed with the
    changes when --lac-update-baselines rewrote something, else skipped when the run rewrote the
    expectations or nothing was gated."""
    from ..run.gating import REVIEW

    if gate.review:  # --lac-update-baselines changed something: red until reviewed
        outcome, longrepr = "failed", "\n".join([REVIEW, *gate.rewritten])
    elif gate.status == "not applied":
        outcome, longrepr = "skipped", ("lac", 0, f"regression gate not applied: {gate.why}")
    else:
        outcome = gate.status
        longrepr = "\n".join(gate.failure_lines() + list(gate.refused)) if gate.failed else None
    props = [("lac_gate", gate.status), ("lac_drift", len(gate.drift)),
             ("lac_changed_verdicts", len(gate.changed_verdicts))]
    return pytest.TestReport("lac/regression_gate", ("lac", None, "regression_gate"),
                             {"regression_gate": 1}, outcome, longrepr, "call",
                             user_properties=props)
