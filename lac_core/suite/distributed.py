"""pytest-xdist wiring: each model's tests on one worker, and each worker's results and progress
lines carried to the controller through xdist's own channel (so --tx remote workers work too)."""
from __future__ import annotations

import pickle

import pytest

from ..errors import LacError


class Controller:
    """Hooks of the controlling process of an xdist run."""

    def __init__(self, session):
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """Scopes by model (xdist_group needs Item._nodeid, which pytest 9.2 no longer reads)."""
        from xdist.scheduler import LoadScopeScheduling

        if config.getvalue("dist") not in ("load", "loadgroup"):
            return None
        models = sorted(self.session.checked.models, key=len, reverse=True)

        class ByModel(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                params = nodeid.rsplit("[", 1)[-1] if nodeid.endswith("]") else ""
                return next((m for m in models if params.startswith((f"{m}-", f"{m}]"))),
                            super()._split_scope(nodeid))

        return ByModel(config, log)

    @pytest.hookimpl
    def pytest_configure_node(self, node):
        """Every worker takes this run's id."""
        node.workerinput["lac_run_id"] = self.session.run_id

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        """The start and end lines a worker attached to its test reports, with the worker's id."""
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "?")
        for key, lines in report.user_properties:
            for line in lines if key == "lac_progress" else ():
                self.session.progress.say(f"[{worker}] {line}")

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error):
        data = getattr(node, "workeroutput", {}).get("lac")
        try:
            self.session.merge(pickle.loads(data)) if data else None
        except LacError as exc:  # not merged: the run fails and says why
            self.session.refused.append(f"lac: {exc}")


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
        self.config.workeroutput["lac"] = pickle.dumps(self.session.export())
