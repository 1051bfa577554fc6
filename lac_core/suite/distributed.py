"""pytest-xdist wiring: each model's tests on one worker, and each worker's results and progress
lines carried to the controller through xdist's own channel (so --tx remote workers work too),
with each test's report as they are made: a worker killed (SIGKILL, out of memory) loses none
of the verdicts it had finished, and the controller names it in run.failed with what it held."""
# The controller starts lac's part of the run when a lac option is on the command line, or when a
# worker collects lac's tests (recognised by a model name in their ids); it then locks and checks
# the report folder before any test is sent out. Import-light: no torch, no numpy.
from __future__ import annotations

import copy
import pickle

import pytest

from ..errors import LacError
from .folder import open_folder
from .start import lac_tests_named, run_id, start, started


USAGE = "lac_usage_error"  # a worker's workeroutput key: the bad input that stopped it
STATE = "lac_state"  # a test report's user property: what the worker's session gained since
WHOLE = ("fingerprint", "claims_planned", "claims")  # sent whole with each part of an export


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
        for _key, data in [p for p in report.user_properties if p[0] == STATE]:
            self.take(data)
        report.user_properties = [p for p in report.user_properties
                                  if p[0] not in ("lac_progress", STATE)]

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error):
        output = getattr(node, "workeroutput", {})
        if output.get(USAGE):  # nothing to merge: the run stops, exit 4, nothing written
            self.usage_error = output[USAGE]
            return
        if error is not None:  # lost (killed, crashed): what it sent with its reports is kept
            self.lost(node, error)
        if output.get("lac"):
            self.take(output["lac"])

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """The test a lost worker was running gave no verdict: why, for run.not_run."""
        lac = started(self.config)
        if lac is not None and crashitem in lac.collected:
            lac.outcomes[crashitem] = f"error: {report.longrepr}"

    def take(self, data: bytes) -> None:
        """Merge a part of a worker's session (Worker.send, Worker.export) into the run's."""
        lac = started(self.config)
        if lac is None:
            start(self.config)
            lac = started(self.config)
        try:
            other = pickle.loads(data)
            adopt(other.pop("claims", ()))  # before the provenance is compared: their files
            lac.take_late_claims()
            lac.merge(joined(lac, other))
        except LacError as exc:  # not merged: the run fails and says why (once per cause)
            if f"lac: {exc}" not in lac.refused:
                lac.refused.append(f"lac: {exc}")

    def lost(self, node, error) -> None:
        """A worker that went down without finishing: in run.failed, with the tests it held (as
        xdist's scheduler had them; xdist gives the unfinished ones to a new worker if it may
        start one) and how many it had finished, whose verdicts came with their reports."""
        lac = started(self.config)
        if lac is None:
            return
        worker = getattr(getattr(node, "gateway", None), "id", "?")
        sched = getattr(self.config.pluginmanager.getplugin("dsession"), "sched", None)
        work = getattr(sched, "assigned_work", {}).get(node)
        if work is None:  # a scheduler that does not say (xdist's --dist each, worksteal)
            held = "lac cannot tell which tests it held under this --dist"
        else:
            tests = [(nid, done) for unit in work.values() for nid, done in unit.items()]
            left = [nid for nid, done in tests if not done]
            models = sorted({self._model_of(nid) or nid for nid, _done in tests})
            held = (f"it held {', '.join(models)}: {len(tests) - len(left)} tests finished (their "
                    f"verdicts are kept), {len(left)} not finished: "
                    f"{', '.join(left[:3])}{', ...' if len(left) > 3 else ''}")
            for nid in left:  # why, for run.not_run, unless another worker runs them
                lac.outcomes.setdefault(nid, f"error: xdist worker {worker} was lost before it "
                                             "finished")
        lac.failed[(f"xdist worker {worker}", "lost")] = f"{str(error)[:200]}; {held}"


class Worker:
    """Hooks of an xdist worker: it reports nothing itself; the controller does. Registered in
    every worker at configure (plugin.py); it does nothing until lac's part of the run started
    (start.py), which happens at configure or collection, before any test runs."""

    def __init__(self, config):
        self.config = config
        self.sent: dict = {}  # what the controller has of this session (since)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        """The start and end lines so far, and what the session gained (the verdict this test
        made, the results it computed), travel with the test's report."""
        outcome = yield
        lac = started(self.config)
        if lac is None:  # not a lac run: nothing to send
            return
        report = outcome.get_result()
        lines = lac.progress.lines
        if lines:
            report.user_properties.append(("lac_progress", list(lines)))
            lines.clear()
        part = since({**lac.export(), "claims": declared()}, self.sent, stream=True)
        if part is not None:
            report.user_properties.append((STATE, pickle.dumps(part)))

    def export(self) -> None:
        """At the worker's end: the rest (all of it, for the fields only sent at the end)."""
        lac = started(self.config)
        part = since({**lac.export(), "claims": declared()}, self.sent, stream=False)
        self.config.workeroutput["lac"] = pickle.dumps(part)


def _mark(value):
    """What `since` keeps of a value sent: a copy of a list, set or dict (they grow in place),
    else the object itself (compared by identity)."""
    return copy.copy(value) if isinstance(value, (list, set, dict)) else value


def since(export: dict, sent: dict, stream: bool) -> dict | None:
    """The part of a session's export (Session.export, + claims) the controller does not have,
    `sent` updated to match: per dict field the keys new or changed, per list field its new tail;
    WHOLE fields whole. A set field (a state that can shrink) is sent only at the end (`stream`
    False), as it was before streaming; None when a streamed part would carry nothing new."""
    out, new = {}, False
    for name, value in export.items():
        if name in WHOLE:
            out[name] = value
        elif isinstance(value, dict):
            seen = sent.setdefault(name, {})
            out[name] = {k: v for k, v in value.items() if k not in seen or (
                seen[k] != v if isinstance(v, (list, set, dict)) else seen[k] is not v)}
            seen.update((k, _mark(v)) for k, v in out[name].items())
            new = new or bool(out[name])
        elif isinstance(value, list):
            out[name], sent[name] = value[sent.get(name, 0):], len(value)
            new = new or bool(out[name])
        elif stream and isinstance(value, set):
            out[name] = set()  # merged as nothing now: sent whole at the end
        else:
            out[name] = value
    return out if new or not stream else None


def joined(lac, part: dict) -> dict:
    """A worker's part as Session.merge takes it (dict.update), with a list or set value the run
    holds already joined to it: a model's cells checked by a worker that was lost and by the
    one that took over its tests are all kept."""
    out = dict(part)
    for name, values in part.items():
        mine = getattr(lac, name, None)
        if isinstance(values, dict) and isinstance(mine, dict):
            out[name] = {k: (mine[k] | v if isinstance(v, set) else
                             [*mine[k], *(x for x in v if x not in mine[k])])
                         if isinstance(v, (set, list)) and isinstance(mine.get(k), type(v))
                         else v for k, v in values.items()}
    return out


def declared() -> list[dict]:
    """Users' claims as this process registered them (a worker imports the conftests it
    collects; its controller, which collects nothing, may not have): what the controller needs
    to report them and to check their thresholds files, without their code."""
    from ..verdicts import claims as registry

    return [{"id": c.id, "statement": c.statement, "experiment": c.experiment,
             "thresholds": {k: "names" if v is registry.Names else "float"
                            for k, v in c.thresholds.items()},
             "thresholds_file": c.thresholds_file and str(c.thresholds_file),
             "cell_checks": [check.name for check in c.cell_checks],
             "units": dict(c.units or {})}
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
            checks, d["thresholds_file"] and Path(d["thresholds_file"]), units=d.get("units")))
