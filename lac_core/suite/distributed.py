"""pytest-xdist wiring: each model's tests on one worker, and each worker's results and progress
lines carried to the controller through xdist's own channel (so --tx remote workers work too),
with each test's report as they are made: a worker killed (SIGKILL, out of memory) loses none
of the verdicts it had finished, and the controller names it in run.failed with what it held."""
# The controller starts lac's part of the run when a lac option is on the command line, or when a
# worker collects lac's tests (recognised by a model name in their ids); it then locks and checks
# the report folder before any test is sent out. Import-light: no torch, no numpy.
from __future__ import annotations

import copy

import pytest

from ..errors import LacError, UsageError
from .folder import open_folder
from .start import (HOST_RANK, HOST_WORKERS, host_ranks, lac_tests_named, run_id, start,
                    started)


USAGE = "lac_usage_error"  # a worker's workeroutput key: the bad input that stopped it
ENVIRONMENT = "lac_environment"  # a worker's workerinput key: the LAC_* settings it takes
STATE = "lac_state"  # a test report's user property: what the worker's session gained since
WHOLE = ("fingerprint", "claims_planned", "claims")  # sent whole with each part of an export


class Controller:
    """Hooks of the controlling process of an xdist run."""

    def __init__(self, config):
        self.config = config
        self.usage_error = None  # a worker stopped on a bad input (plugin.take_late_claims)
        self.reltoroot = None  # xdist's make_reltoroot, while lac's stands in for it
        self.collected: set[str] = set()  # the gateway ids whose workers finished collecting

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
        pytest 9.2 no longer reads); a test of no lac model is its own scope; a model pinned
        with --lac-on runs only on its gateway."""
        if config.getvalue("dist") not in ("load", "loadgroup") or not lac_tests_named(config):
            return None  # xdist's own scheduling: lac leaves other runs as they are
        lac = started(config)
        return by_model(config, log, self._model_of, dict(lac.settings.pins) if lac else {})

    @pytest.hookimpl
    def pytest_xdist_setupnodes(self, config, specs):
        """Before xdist starts a gateway: path arguments the way users write them (see
        paths_as_written)."""
        import xdist.workermanage as manage

        if lac_tests_named(config) and self.reltoroot is None:
            self.reltoroot = manage.make_reltoroot
            manage.make_reltoroot = paths_as_written(self.reltoroot)

    @pytest.hookimpl(specname="pytest_configure_node")
    def pytest_configure_node_environment(self, node):
        """Every worker of a lac run takes the controller's LAC_* settings (take_environment)."""
        if lac_tests_named(self.config):
            node.workerinput[ENVIRONMENT] = environment(node.gateway.spec.env)

    def pytest_unconfigure(self, config):
        if self.reltoroot is not None:  # xdist's own again (an in-process run ends)
            import xdist.workermanage as manage

            manage.make_reltoroot, self.reltoroot = self.reltoroot, None

    @pytest.hookimpl
    def pytest_configure_node(self, node):
        """Every worker takes this run's id, and how many workers share its host and its rank
        among them (start.host_ranks: hosts told apart by their gateway specs), for its torch
        threads and its own GPU(s)."""
        node.workerinput["lac_run_id"] = run_id(self.config)
        workers, rank = host_ranks(node.nodemanager.specs, node.gateway.spec)
        node.workerinput.update({HOST_WORKERS: workers, HOST_RANK: rank})

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids):
        """Before any test is sent out: start lac's part if the workers collected its tests, and
        open the report folder (a problem stops the run with exit code 4)."""
        self.collected.add(node.gateway.id)
        lac = started(self.config)
        if lac is None and any(self._model_of(i) for i in ids):
            start(self.config)
            lac = started(self.config)
        if lac is not None and lac.out.folder is None and ids and \
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
        if error is not None and node.gateway.id not in self.collected and \
                lac_tests_named(self.config):
            self.not_started(node, error)
            return
        if error is not None:  # lost (killed, crashed): what it sent with its reports is kept
            self.lost(node, error)
        if output.get("lac"):
            self.take(output["lac"])

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """The test a lost worker was running gave no verdict: why, for run.not_run."""
        lac = started(self.config)
        if lac is not None and crashitem in lac.tally.collected:
            lac.tally.outcomes[crashitem] = f"error: {report.longrepr}"

    def take(self, data: bytes) -> None:
        """Merge a part of a worker's session (Worker's, packed) into the run's. Read as data
        (datacodec.unpack: no pickle, every value checked), its fields those of this run's own
        export; anything else is refused whole (datacodec.WireError)."""
        from ..run.datacodec import WireError, fields_like, unpack

        lac = started(self.config)
        if lac is None:
            start(self.config)
            lac = started(self.config)
        try:
            other = unpack(data)
            fields_like(other, {**lac.export(), "claims": []})
            try:
                adopt(other.pop("claims"))  # before the provenance is compared: their files
            except (KeyError, TypeError, AttributeError) as exc:
                raise WireError(f"its claims are malformed: {type(exc).__name__}: {exc}") from None
            lac.take_late_claims()
            lac.merge(joined(lac, other))
        except LacError as exc:  # not merged: the run fails and says why (once per cause)
            if f"lac: {exc}" not in lac.tally.refused:
                lac.tally.refused.append(f"lac: {exc}")

    def not_started(self, node, error) -> None:
        """A worker that died before it collected (a bad input on its host: a file missing
        there, lac or a package not installed there) stops the run once, exit 4, saying why:
        xdist would start it again, without end for a --tx gateway, each dying alike."""
        last = [line.strip() for line in str(error).splitlines() if line.strip()]
        why = last[-1].removeprefix("pytest.UsageError: ").removeprefix("lac: ") if last else "?"
        self.usage_error = (f"lac: the xdist worker of gateway {node.gateway.id} stopped "
                            f"before it collected any test: {why}")
        lac = started(self.config)
        if lac is not None:  # the report set, if the other workers' tests opened it, says so
            lac.tally.failed[(f"xdist worker {node.gateway.id}", "not started")] = why
        pytest.exit(self.usage_error, returncode=pytest.ExitCode.USAGE_ERROR)  # no restart

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
                lac.tally.outcomes.setdefault(
                    nid, f"error: xdist worker {worker} was lost before it finished")
        lac.tally.failed[(f"xdist worker {worker}", "lost")] = f"{str(error)[:200]}; {held}"


def by_model(config, log, model_of, pins: dict[str, str]):
    """xdist's LoadScopeScheduling with one scope per model (`model_of` a test id's model, None
    for a test of none: its own scope), and each model in `pins` (model -> gateway id,
    --lac-on) sent only to the node of that gateway. A node takes the models pinned to it
    first, then free ones; a node left with nothing it may take is shut down, as xdist does
    when nothing is left; the nodes xdist shuts down for having no work unit are never a pinned
    gateway's. A pinned node lost is replaced by xdist (same spec, same id) or the run stops."""
    from xdist.scheduler import LoadScopeScheduling

    targets = set(pins.values())

    class ByModel(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return model_of(nodeid) or nodeid

        def next_scope(self, node) -> str | None:
            """The work unit `node` takes next: one pinned to it, else a free one."""
            mine = (s for s in self.workqueue if pins.get(s) == node.gateway.id)
            free = (s for s in self.workqueue if s not in pins)
            return next(mine, None) or next(free, None)

        def _assign_work_unit(self, node) -> None:
            scope = self.next_scope(node)
            if scope is not None:  # xdist's own, on the unit moved to the queue's front
                self.workqueue.move_to_end(scope, last=False)
                super()._assign_work_unit(node)

        def _reschedule(self, node) -> None:
            if not node.shutting_down and self.workqueue and self.next_scope(node) is None:
                node.shutdown()  # what is left is pinned elsewhere
                return
            super()._reschedule(node)

        def schedule(self) -> None:
            if self.collection is None:  # xdist shuts down the nodes added last beyond the
                self.assigned_work = dict(sorted(  # number of units: never a pinned gateway
                    self.assigned_work.items(), key=lambda kv: kv[0].gateway.id not in targets))
            super().schedule()

    return ByModel(config, log)


def gateway_ids(config) -> list[str]:
    """The ids xdist's gateways will have, known before any starts: execnet's, //id=NAME or
    else gw0, gw1, ... counting the specs without one, in --tx order (-n N: N popen specs);
    none when the run is not distributed."""
    if not config.pluginmanager.hasplugin("xdist") or config.getvalue("dist") == "no":
        return []
    import execnet
    from xdist.workermanage import parse_tx_spec_config

    ids, auto = [], 0
    for text in parse_tx_spec_config(config):
        given = execnet.XSpec(text).id
        ids.append(given or f"gw{auto}")
        auto += not given
    return ids


def check_pins(config, pins, models) -> None:
    """--lac-on: each pinned model one of the run's (`models`, by identity: the name in test ids
    and the report) and each gateway one of its --tx ids, under a --dist that keeps a model's
    tests together; else one UsageError naming what is known (exit 4, nothing run)."""
    if not pins:
        return
    ids = gateway_ids(config)
    for model, gateway in pins:
        if model not in models:
            raise UsageError(f"--lac-on {model}={gateway}: {model} is not a model of this run "
                             f"(its models: {', '.join(models)}); name a model as the test ids do")
        if gateway not in ids:
            known = ", ".join(ids) if ids else "none: this run is not distributed (-d --tx ...)"
            raise UsageError(f"--lac-on {model}={gateway}: no pytest-xdist gateway has the id "
                             f"{gateway} (this run's: {known}); name one with --tx ...//id=NAME")
    if config.getvalue("dist") not in ("load", "loadgroup"):
        raise UsageError(f"--lac-on needs --dist load (-d or -n N), which keeps each model's tests "
                         f"together; --dist {config.getvalue('dist')} does not")


def paths_as_written(make_reltoroot):
    """xdist's make_reltoroot, which rewrites each command-line argument naming an existing path
    for a remote or chdir gateway, made to pass a path under no rsync root as written. xdist
    rewrites a path under a --rsyncdir root to that root's copy beside the worker's chdir; any
    other path (`pytest claims/`, --lac-grid FILE, --lac-expected-dir DIR) it refuses,
    relative ones under a root too (pytest-xdist issue 971), though every gateway without
    --rsyncdir starts in a tree of its own. Here a relative path under a root is tried resolved
    (as xdist 2 did), and any other path goes as written: the worker reads it on its host, a
    relative one from its chdir, like a pytest run started there (docs/scale.md)."""
    from pathlib import Path

    def rewrite(roots, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            path, sep, rest = arg.partition("::")
            tries = [arg] + ([str(Path(path).resolve()) + sep + rest]
                             if path and not Path(path).is_absolute() else [])
            for text in tries:
                try:
                    out += make_reltoroot(roots, [text])
                    break
                except ValueError:  # under no rsync root
                    continue
            else:
                out.append(arg)
        return out

    return rewrite


def environment(gateway_env: dict) -> dict[str, str | None]:
    """The LAC_* settings (settings.ENVIRONMENT) a worker takes: the controller's, None for one
    unset there (unset on the worker too: a socket server keeps its environment from run to
    run), except those its gateway sets with //env:NAME=VALUE, which win (a host's own cache
    folder or device)."""
    import os

    from ..run.settings import ENVIRONMENT as NAMES

    return {name: os.environ.get(name) for name in NAMES if name not in gateway_env}


def take_environment(workerinput: dict) -> None:
    """In a worker, before its settings are built: the controller's LAC_* settings."""
    import os

    for name, value in workerinput.get(ENVIRONMENT, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
        part = since(part_of(lac), self.sent, stream=True)
        if part is not None:
            from ..run.datacodec import pack

            report.user_properties.append((STATE, pack(part)))

    def export(self) -> None:
        """At the worker's end: the rest (all of it, for the fields only sent at the end)."""
        from ..run.datacodec import pack

        lac = started(self.config)
        self.config.workeroutput["lac"] = pack(since(part_of(lac), self.sent, stream=False))


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
        mine = None if name in WHOLE else lac.held(name)
        if isinstance(values, dict) and isinstance(mine, dict):
            out[name] = {k: (mine[k] | v if isinstance(v, set) else
                             [*mine[k], *(x for x in v if x not in mine[k])])
                         if isinstance(v, (set, list)) and isinstance(mine.get(k), type(v))
                         else v for k, v in values.items()}
    return out


def part_of(lac) -> dict:
    """What a worker sends of its session: its export (field name -> value: Session.export,
    which leaves out the shared parts) and the claims it declared."""
    return {**lac.export(), "claims": declared()}


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
