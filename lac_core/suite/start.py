"""Starting lac's part of a pytest run, only when the run has lac's tests in it: an unrelated
project with lac installed gets lac's options and nothing else (no session, no preflight, no
import of torch, transformers, numpy or matplotlib, no thread setting, no line, no file)."""
# A session starts at configure time when a lac option is on the command line, else on the first
# test that asks for a lac fixture (pytest_generate_tests) and, in a pytest-xdist controller, on
# the first report a worker sends from a lac session. Everything heavy is imported here, inside
# `start`, never at this module's import.
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..errors import LacError
from ..run.settings import OPTIONS, default_threads
from ..verdicts.kinds import FIXTURE

SESSION = pytest.StashKey[object]()  # the run.session.Session, once started
RUN_ID = pytest.StashKey[str]()  # this run's id, from configure time (a worker's: its controller's)
FIXTURES = frozenset({  # a test asking for one of these is lac's
    "lac_session", "thresholds", "lac_models", "lm", "lac_loaded", "model_name", "claim_gate",
    "cell_gate",
    *(f"{k}_{s}" for k in FIXTURE.values() for s in ("grid", "cell", "result")),
    "sweep_summary", "steering_result"})
FLAGS = frozenset(flag for flag, *_ in OPTIONS)


def explicit(config) -> bool:
    """Whether the command line names a lac option: then lac starts at configure time."""
    return any(str(a).split("=", 1)[0] in FLAGS for a in config.invocation_params.args)


def lac_tests_named(config) -> bool:
    """Whether the command line asks for lac's claim tests (a lac option, lac's claims folder or
    the installed lac_core.claims): known before collection, unlike `started`, so xdist's
    scheduling is changed only for such a run."""
    from ..paths import CORE, ROOT

    if explicit(config):
        return True
    checkout, installed = (ROOT / "claims").resolve(), (CORE / "claims").resolve()
    for arg in config.args:
        name = str(arg).split("::", 1)[0]
        if name == "lac_core.claims" or name.startswith("lac_core.claims."):
            return True
        path = (Path(config.invocation_params.dir) / name).resolve()
        if path in (checkout, installed) or {checkout, installed} & set(path.parents):
            return True
        if path in checkout.parents and checkout.is_dir():  # `pytest .` in lac's checkout; not
            return True  # a project holding the venv lac is installed in (pytest skips venvs)
    return False


@dataclass(frozen=True)
class Place:
    """Where a lac test stands, read from the test itself: the claim its `claim` mark names and
    the model, grid and cell its parameters hold (None where it has none), so a test names
    each once and the gates, the run status and the report agree on it."""

    claim: str | None
    model: str | None
    grid: str | None
    cell: str | None


def place(item, experiment: str | None = None) -> Place:
    """The Place of a collected test; `experiment` picks its grid (and cell) where a test is
    parametrized over several experiments' grids, else the first one."""
    mark = item.get_closest_marker("claim")
    params = getattr(getattr(item, "callspec", None), "params", {})
    grids = [k.removesuffix("_grid") for k in params if k.endswith("_grid")]
    name = FIXTURE.get(experiment)
    name = name if name in grids else next(iter(grids), "")
    return Place(mark.args[0] if mark is not None and mark.args else None,
                 params.get("model_name"), params.get(f"{name}_grid"), params.get(f"{name}_cell"))


def session(config):
    """The run's lac session, started now if it was not (None: it could not be)."""
    if SESSION not in config.stash:
        start(config)
    return config.stash[SESSION]


def started(config):
    """The session if lac's part of the run started, else None (then lac does nothing)."""
    return config.stash.get(SESSION, None)


def run_id(config) -> str:
    """This run's id: a worker takes its controller's; every process makes it at configure."""
    if RUN_ID not in config.stash:
        from ..run.provenance import new_run_id

        given = getattr(config, "workerinput", {}).get("lac_run_id")
        config.stash[RUN_ID] = given or new_run_id(time.time())
    return config.stash[RUN_ID]


HOST_WORKERS, HOST_RANK = "lac_host_workers", "lac_host_rank"  # workerinput keys: host_share


def host_of(spec) -> str:
    """The host an xdist gateway spec (execnet.XSpec) runs its worker on, as far as the
    controller can tell from the spec: a proxy's id (`via=`), else the ssh or socket target as
    written (`ssh=user@box`, `socket=127.0.0.1:8888`; a socket server on loopback counts as
    another host, as in lac's tests), else popen: the controller's own host. Two spellings of
    one machine (`ssh=box`, `ssh=me@box`) count as two hosts (docs/scale.md)."""
    for kind in ("via", "ssh", "socket", "vagrant_ssh"):
        if getattr(spec, kind, None):
            return f"{kind}={getattr(spec, kind)}"
    return "popen"


def host_ranks(specs, mine) -> tuple[int, int]:
    """How many of the run's gateway specs share `mine`'s host, and `mine`'s rank among them
    (in the order xdist was given them; a restarted worker keeps its spec, so its rank)."""
    same = [s for s in specs if host_of(s) == host_of(mine)]
    at = [i for i, s in enumerate(same) if s is mine] or \
        [i for i, s in enumerate(same) if s.id == mine.id]
    rank = at[0] if at else len(same)  # a spec xdist did not list: one more on its host
    return max(len(same), rank + 1), rank


def host_share(workerinput: dict) -> tuple[int | None, int]:
    """(xdist workers on this worker's host, its rank among them), as its controller said
    (Controller.pytest_configure_node); xdist's total when the controller did not say; (None, 0)
    outside xdist."""
    workers = workerinput.get(HOST_WORKERS, workerinput.get("workercount"))
    return workers, workerinput.get(HOST_RANK, 0)


def threads_for(option, cores: int, workers: int | None, load: float) -> tuple[int | None, int]:
    """(torch threads to set, None for torch's own; the cores free by the load average), for
    --lac-threads `option` with `workers` xdist workers on this host: cores / workers by default,
    the free cores (default_threads) under `auto`, the number given otherwise."""
    shared = max(1, cores // workers) if workers else None
    free = default_threads(cores, workers, load)
    return (free if option == "auto" else option or shared), free


def placed(settings, workers: int | None, rank: int):
    """The settings with this worker's own GPUs (models.placement.worker_gpus): with the device
    left at its default, each of the host's workers its own."""
    from dataclasses import replace

    from ..models.placement import visible_gpus, worker_gpus

    return replace(settings, gpus=worker_gpus(settings.device, visible_gpus(), workers, rank))


def start(config) -> None:
    """Build the settings, check everything that can be checked before any work, and set up the
    process (torch threads, progress lines). A bad input stops the run: exit 4."""
    import torch

    from ..run.progress import Progress
    from ..run.session import Session
    from ..run.settings import Settings

    workers, rank = host_share(getattr(config, "workerinput", {}))  # on this worker's host
    try:
        settings = placed(Settings.from_options(config.getoption), workers, rank)
        lac = Session.start(settings, config.invocation_params.args)
    except LacError as exc:  # one message, no test run, nothing written
        pytest.exit(f"lac: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    for line in lac.checked.warnings:
        config.issue_config_time_warning(UserWarning(line), stacklevel=2)
    cores, load = os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads, free = threads_for(lac.settings.threads, cores, workers, load)
    if threads:
        torch.set_num_threads(threads)
    lac.threads = torch.get_num_threads()
    verbose, worker = config.option.verbose, hasattr(config, "workerinput")
    if verbose > -2 and not worker:
        lac.progress = Progress(_say(config), detail=verbose >= 0)
        if lac.settings.threads == "auto":
            lac.progress.say(f"lac: {lac.threads} torch thread(s) (--lac-threads auto: the load "
                             f"average {load:.1f} leaves {free} of {cores} cores free)")
        elif lac.threads > free:  # a busy machine: spinning threads wait on each other
            lac.progress.say(f"lac: this machine is busy (load average {load:.1f} on {cores} "
                             f"cores) and the run uses {lac.threads} torch threads: "
                             f"--lac-threads {free} or auto runs much faster here "
                             "(docs/performance.md#threads-on-a-shared-machine)")
    lac.ident.run_id = run_id(config)  # the controller's id names what every worker computes
    config.stash[SESSION] = lac


def _say(config):
    """A line on the terminal, past pytest's output capture (so it shows while tests run)."""
    def say(line: str) -> None:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        cap = config.pluginmanager.get_plugin("capturemanager")
        if tr is not None:
            with cap.global_and_fixture_disabled() if cap else contextlib.nullcontext():
                if getattr(getattr(tr, "_tw", None), "width_of_current_line", 0):
                    tr.line("")  # under -q the progress dots leave the line open
                tr.write_line(line)
    return say
