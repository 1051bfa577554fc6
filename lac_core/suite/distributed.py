"""pytest-xdist wiring: each model's tests on one worker, and each worker's results and progress
lines carried to the controller through xdist's own channel (so --tx remote workers work too)."""
# The controller starts lac's part of the run when a lac option is on the command line, or when a
# worker collects lac's tests (recognised by a model name in their ids); it then locks and checks
# the report folder before any test is sent out. Import-light: no torch, no numpy.
from __future__ import annotations

import pickle

import pytest

from ..errors import LacError
from .start import lac_tests_named, run_id, start, started


USAGE = "lac_usage_error"  # a worker's workeroutput key: the bad input that stopped it


class Controller:
    """Hooks of the controlling process of an xdist run."""

    def __init__(self, config):
        self.config = config
        self.usage_error = None  # a worker stopped on a bad input (plugin.take_late_claims)

    def _models(self) -> list[str]:
        """Model identities, longest first: the session's, else the --lac-model arguments as given
        (a registry name is its own identity), read without starting anything."""
        lac = started(self.config)
        if lac is not None:
            names = list(lac.checked.models)
        else:
            from ..run.settings import DEFAULT_MODELS
            names = list(self.config.getoption("--lac-model") or DEFAULT_MODELS)
        return sorted(names, key=len, reverse=True)

    def _model_of(self, nodeid: str) -> str | None:
        params = nodeid.rsplit("[", 1)[-1] if nodeid.endswith("]") else ""
        return next((m for m in self._models() if params.startswith((f"{m}-", f"{m}]"))), None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """In a run of lac's claims: scopes by model (xdist_group needs Item._nodeid, which
        pytest 9.2 no longer reads); a test of no lac model is its own scope."""
        from xdist.scheduler import LoadScopeScheduling

        if config.getvalue("dist") not in ("load", "loadgroup") or not lac_tests_named(config):
            return None  # xdist's own scheduling: lac leaves other runs as they are
        controller = self

        class ByModel(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return controller._model_of(nodeid) or nodeid

        return ByModel(config, log)

    @pytest.hookimpl
    def pytest_configure_node(self, node):
        """Every worker takes this run's id."""
        node.workerinput["lac_run_id"] = run_id(self.config)

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids):
        """Before any test is sent out: start lac's part if the workers collected its tests, and
        open the report folder (a problem stops the run with exit code 4)."""
        from .plugin import open_folder

        lac = started(self.config)
        if lac is None and any(self._model_of(i) for i in ids):
            start(self.config)
            lac = started(self.config)
        if lac is not None and lac.folder is None and ids and \
                not self.config.option.collectonly:
            open_folder(lac)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        """A worker stopped on a bad input: the run's exit code is a usage error's, 4."""
        if self.usage_error is not None:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report):
        """The start and end lines a worker attached to its test reports, said with the worker's
        id and taken off the report (before JUnit sees them: they are lac's, not the test's)."""
        lac = started(self.config)
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "?")
        for key, lines in [p for p in report.user_properties if p[0] == "lac_progress"]:
            for line in lines if lac is not None else ():
                lac.progress.say(f"[{worker}] {line}")
        report.user_properties = [p for p in report.user_properties if p[0] != "lac_progress"]

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error):
        output = getattr(node, "workeroutput", {})
        if output.get(USAGE):  # nothing to merge: the run stops, exit 4, nothing written
            self.usage_error = output[USAGE]
            return
        data = output.get("lac")
        if not data:
            return
        lac = started(self.config)
        if lac is None:
            start(self.config)
            lac = started(self.config)
        try:
            other = pickle.loads(data)
            adopt(other.pop("claims", ()))  # before the provenance is compared: their files
            lac.take_late_claims()
            lac.merge(other)
        except LacError as exc:  # not merged: the run fails and says why
            lac.refused.append(f"lac: {exc}")


class Worker:
    """Hooks of an xdist worker: it reports nothing itself; the controller does."""

    def __init__(self, session, config):
        self.session, self.config = session, config

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        """The start and end lines so far travel with the next test report."""
        outcome = yield
        lines = self.session.progress.lines
        if lines:
            outcome.get_result().user_properties.append(("lac_progress", list(lines)))
            lines.clear()

    def export(self) -> None:
        self.config.workeroutput["lac"] = pickle.dumps({**self.session.export(),
                                                        "claims": declared()})


def declared() -> list[dict]:
    """Users' claims as this process registered them (a worker imports the conftests it
    collects; its controller, which collects nothing, may not have): what the controller needs
    to report them and to check their thresholds files, without their code."""
    from ..verdicts import claims as registry

    return [{"id": c.id, "statement": c.statement, "experiment": c.experiment,
             "thresholds": {k: "names" if v is registry.Names else "float"
                            for k, v in c.thresholds.items()},
             "thresholds_file": c.thresholds_file and str(c.thresholds_file),
             "cell_checks": [check.name for check in c.cell_checks]}
            for c in registry.CLAIMS.values() if not c.builtin]


def computed_on_a_worker(*_args):
    """The rule or cell check of a claim a worker declared: its verdicts come computed."""
    raise LacError("a claim declared by an xdist worker is judged on that worker")


def adopt(claims) -> None:
    """Register the claims a worker declared that this process does not know (see declared)."""
    from pathlib import Path

    from ..verdicts import claims as registry

    for d in claims:
        if d["id"] in registry.CLAIMS:
            continue
        checks = tuple(registry.CellCheck(name, d["experiment"], computed_on_a_worker)
                       for name in d["cell_checks"])
        registry.register(registry.Claim(
            d["id"], d["statement"], d["experiment"], computed_on_a_worker,
            {k: registry.Names if v == "names" else float for k, v in d["thresholds"].items()},
            checks, d["thresholds_file"] and Path(d["thresholds_file"])))
