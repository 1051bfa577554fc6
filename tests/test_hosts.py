"""pytest-xdist across hosts (issue 38.4): a second "host" on 127.0.0.1 only (execnet's socket
server, started here from a separate copy of the tree, always killed after), path options in the
form users write them, LAC_* settings carried by lac, a model pinned to a gateway (--lac-on), and
the scheduler's pinning on fake nodes."""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lac_core.errors import UsageError
from lac_core.paths import ROOT
from lac_core.run.settings import ENVIRONMENT, parse_pins
from lac_core.suite import distributed

from .conftest import installed_wheel

pytest.importorskip("xdist")
pytest.importorskip("execnet")

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "reports", "__pycache__",
                                     "*.egg-info", ".pytest_cache")
HOST_FIELDS = ("hostname", "host", "platform", "cpu", "torch_threads", "gpus",
               "xdist_gateway")
RUN_SECONDS = 240  # one run of two tiny models (about 20 s each on a quiet 2-core machine)


# -- the scheduler, on fake nodes --------------------------------------------------------------

class Node:
    """What xdist's LoadScopeScheduling uses of a WorkerController."""

    def __init__(self, gateway: str):
        self.gateway = SimpleNamespace(id=gateway)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices):
        self.sent += indices

    def shutdown(self):
        self.shutting_down = True


def fake_config(tx: list[str], dist: str = "load"):
    values = {"tx": tx, "dist": dist}
    return SimpleNamespace(getvalue=values.__getitem__, option=SimpleNamespace(
        loadscopereorder=False), pluginmanager=SimpleNamespace(hasplugin=lambda name: True))


TESTS = [f"claims/test_c1.py::test_c1[{m}-example]" for m in ("big", "small", "other")] + \
        [f"claims/test_c4.py::test_c4[{m}-example]" for m in ("big", "small", "other")]


def model_of(nodeid: str) -> str:
    return nodeid.rsplit("[", 1)[-1].split("-", 1)[0]


def scheduled(gateways: list[str], pins: dict) -> dict[str, set[str]]:
    """Each gateway's models once every node drained its work (tests finish one at a time)."""
    sched = distributed.by_model(fake_config(["popen"] * len(gateways)), None, model_of, pins)
    nodes = [Node(g) for g in gateways]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, TESTS)
    sched.schedule()
    ran = {g: set() for g in gateways}
    for _ in range(100):
        busy = [n for n in sched.nodes if n.sent]
        if not busy:
            break
        for node in busy:
            index = node.sent.pop(0)
            ran[node.gateway.id].add(model_of(TESTS[index]))
            sched.mark_test_complete(node, index)
    assert sched.tests_finished and not sched.workqueue
    return ran


@pytest.mark.parametrize("gateways", [["gw0", "big"], ["big", "gw0"], ["gw0", "gw1", "big"],
                                      ["gw0", "gw1", "gw2", "gw3", "big"]])
def test_a_pinned_model_runs_only_on_its_gateway(gateways):
    """Whatever the order the nodes came up in and however many there are (xdist shuts down
    the nodes beyond the number of models, the last added), the pinned model runs on its
    gateway and nowhere else; every model runs once."""
    ran = scheduled(gateways, {"big": "big"})
    assert "big" in ran["big"], ran
    assert all("big" not in models for g, models in ran.items() if g != "big"), ran
    assert sorted(m for models in ran.values() for m in models) == ["big", "other", "small"]


def test_two_models_pinned_to_one_gateway_leave_the_other_nodes_the_rest():
    ran = scheduled(["gw0", "big"], {"big": "big", "small": "big"})
    assert ran == {"gw0": {"other"}, "big": {"big", "small"}}


def test_without_pins_every_node_takes_models_as_xdist_does():
    ran = scheduled(["gw0", "gw1", "gw2"], {})
    assert sorted(len(m) for m in ran.values()) == [1, 1, 1]


# -- --lac-on at start ---------------------------------------------------------------------------

def test_gateway_ids_are_xdists():
    """//id=NAME, else gw0, gw1, ... counting only the specs without an id (execnet's rule)."""
    config = fake_config(["popen", "socket=127.0.0.1:1//id=far//chdir=/x", "2*popen"])
    assert distributed.gateway_ids(config) == ["gw0", "far", "gw1", "gw2"]
    assert distributed.gateway_ids(fake_config([], dist="no")) == []


@pytest.mark.parametrize("pins, tx, dist, says", [
    ((("big", "far"),), ["popen"], "load", "no pytest-xdist gateway has the id far (this run's: "
                                            "gw0)"),
    ((("big", "far"),), [], "no", "(this run's: none: this run is not distributed"),
    ((("tiny-gemma", "gw0"),), ["popen"], "load", "tiny-gemma is not a model of this run (its "
                                                  "models: big, small)"),
    ((("big", "gw0"),), ["popen"], "loadfile", "--lac-on needs --dist load"),
])
def test_a_mistyped_pin_is_refused_naming_what_is_known(pins, tx, dist, says):
    with pytest.raises(UsageError) as err:
        distributed.check_pins(fake_config(tx, dist), pins, ["big", "small"])
    assert says in str(err.value), err.value
    distributed.check_pins(fake_config(["popen", "x//id=far"]), (("big", "far"),), ["big"])


@pytest.mark.parametrize("text", ["big", "big=", "=far", "big=far=x"])
def test_a_pin_is_model_equals_gateway(text):
    with pytest.raises(UsageError, match="MODEL=GATEWAY_ID"):
        parse_pins([text])
    with pytest.raises(UsageError, match="already pinned to far"):
        parse_pins(["big=far", "big=near"])
    assert parse_pins(["big = far", "big=far", "small=gw0"]) == (("big", "far"), ("small", "gw0"))


PIN_TEXT = st.lists(st.sampled_from(["big", "small", "far", "gw0", "=", " ", "/", "\x00", "é",
                                     "\n", "-"]), max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(PIN_TEXT, st.text(max_size=20)), max_size=4))
def test_any_lac_on_is_a_pin_of_a_known_model_and_gateway_or_one_usage_error(texts):
    """Generated --lac-on values, as a user may type them (and worse): each either pins a model
    of the run to a gateway id of its --tx, or is one UsageError naming --lac-on, before any
    test is sent; never another exception, never a pin to something unknown."""
    config = fake_config(["popen", "popen//id=far"])
    try:
        pins = parse_pins(texts)
        distributed.check_pins(config, pins, ["big", "small"])
    except UsageError as exc:
        assert "--lac-on" in str(exc), exc
        return
    assert all(m in ("big", "small") and g in ("gw0", "far") for m, g in pins), pins


# -- path arguments and LAC_* settings -----------------------------------------------------------

def test_paths_go_to_a_gateway_as_written_unless_under_an_rsync_root(monkeypatch, tmp_path):
    """xdist's make_reltoroot refuses `claims/` and an option's existing path for any gateway
    with a chdir or a remote one; lac's passes them as written (the worker reads them from its
    own chdir) and keeps xdist's rewriting for a path under a --rsyncdir root."""
    from xdist.workermanage import make_reltoroot

    monkeypatch.chdir(ROOT)
    args = ["claims/", "--lac-grid", "fixtures/grids/example.yaml", "--lac-reports",
            str(tmp_path), "-k", "c4", "claims/test_c4_no_prompt_compression.py::test_c4"]
    pytest_root = [Path(pytest.__file__).parent.resolve()]
    with pytest.raises(ValueError, match="not relative to an rsync root"):
        make_reltoroot(pytest_root, args)  # xdist's own
    lac = distributed.paths_as_written(make_reltoroot)
    assert lac(pytest_root, args) == args
    under = lac([*pytest_root, ROOT.resolve()], args)
    name = ROOT.resolve().name
    assert under == [f"{name}/claims", "--lac-grid", f"{name}/fixtures/grids/example.yaml",
                     "--lac-reports", str(tmp_path), "-k", "c4",
                     f"{name}/claims/test_c4_no_prompt_compression.py::test_c4"]


def test_a_worker_takes_the_controllers_lac_settings_unless_its_gateway_sets_them(monkeypatch):
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAC_CACHE_DIR", "/controller/cache")
    monkeypatch.setenv("LAC_DEVICE", "cpu")
    sent = distributed.environment({"LAC_DEVICE": "cuda:1"})
    assert sent == {"LAC_CACHE_DIR": "/controller/cache", "LAC_OFFLINE": None}
    monkeypatch.setenv("LAC_OFFLINE", "left from an earlier run")  # the worker's host's own
    distributed.take_environment({distributed.ENVIRONMENT: sent})
    assert os.environ["LAC_CACHE_DIR"] == "/controller/cache" and "LAC_OFFLINE" not in os.environ
    assert os.environ["LAC_DEVICE"] == "cpu"  # untouched: the gateway's //env: set it there


def test_every_lac_variable_read_is_passed_to_workers():
    """A LAC_* variable read anywhere in lac_core is in settings.ENVIRONMENT."""
    import re

    read = set()
    for path in (ROOT / "lac_core").rglob("*.py"):
        read |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](LAC_[A-Z_]+)", path.read_text()))
    assert read and read <= set(ENVIRONMENT), read - set(ENVIRONMENT)


# -- two hosts on loopback -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def socket_server(where: Path, pythonpath: Path):
    """execnet's socket server on 127.0.0.1, in `where` with `pythonpath` first (the lac it
    runs), its own LAC_OFFLINE a value lac refuses (so a worker that did not take the
    controller's fails); yields its port; killed with its process group after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "LAC_OFFLINE": "not a boolean"}
    said = where.parent / f"server-{where.name}.log"
    log = open(said, "w")
    server = subprocess.Popen([sys.executable, "-u", "-m", "execnet.script.socketserver",
                               f"127.0.0.1:{port}"], cwd=where, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline and \
                "Entering Accept loop" not in said.read_text():
            time.sleep(0.1)
        assert server.poll() is None and "Accept" in said.read_text(), said.read_text()
        yield port
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def second_host(tmp_path_factory):
    """The socket server from a copy of the tree without .git (as a clone or an unpacked source
    on another machine)."""
    copy = tmp_path_factory.mktemp("host") / "lac"
    shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
    with socket_server(copy, copy) as port:
        yield SimpleNamespace(copy=copy, port=port)


def run(tmp: Path, name: str, *extra: str, tests=("claims/",), cwd: Path = ROOT,
        grid="fixtures/grids/example.yaml", expected="fixtures/expected",
        env=()) -> tuple[subprocess.CompletedProcess, dict]:
    """pytest claims/ (C4 only, so both models' host experiment: the transport is what is
    tested) on tiny-llama and tiny-qwen2, the example grid given as a file, options naming
    existing paths (the report folder exists; the shipped expectations folder)."""
    reports = tmp / name
    reports.mkdir()
    cmd = [sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "-k", "c4",
           "--lac-model", "tiny-llama", "--lac-model", "tiny-qwen2", "--lac-grid", grid,
           "--lac-expected-dir", expected, "--lac-reports", str(reports), "--lac-no-cache",
           "--lac-threads", "1", *extra]
    # one torch thread in every process: float32 sums split over another number of threads
    # differ in the 7th digit, and each host's workers take their own host's cores by default
    env = {**os.environ, "LAC_CACHE_DIR": str(tmp / "cache"), "LAC_OFFLINE": "1", **dict(env)}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=RUN_SECONDS)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "INTERNALERROR" not in out.stdout + out.stderr
    return out, json.loads((reports / "results.json").read_text())


def numbers(results: dict) -> dict:
    """results.json without what tells two runs apart (`run`; `fingerprint`, the code's hash,
    equal unless the tree was edited between the two runs) or where a model ran."""
    out = {k: v for k, v in results.items() if k not in ("run", "fingerprint")}
    out["models"] = {m: {k: v for k, v in p.items() if k not in HOST_FIELDS}
                     for m, p in results["models"].items()}
    return out


def test_two_hosts_on_loopback_give_one_host_numbers(second_host, tmp_path):
    """One report from a popen worker and a socket gateway whose worker runs in the copy,
    tiny-qwen2 pinned to the socket one: every number and verdict as one process gives, each
    model naming its host and gateway."""
    spec = f"socket=127.0.0.1:{second_host.port}//id=far//chdir={second_host.copy}"
    two, far = run(tmp_path, "two", "-d", "--tx", "popen", "--tx", spec,
                   "--lac-on", "tiny-qwen2=far")
    _one, near = run(tmp_path, "one")
    assert numbers(far) == numbers(near)
    assert far["run"]["status"] == near["run"]["status"]  # PARTIAL: -k left claims out
    assert {(v["claim"], v["model"]) for v in far["verdicts"]} == \
        {("C4", "tiny-llama"), ("C4", "tiny-qwen2")}, far["verdicts"]
    gateways = {m: p.get("xdist_gateway") for m, p in far["models"].items()}
    assert gateways == {"tiny-llama": "gw0", "tiny-qwen2": "far"}, gateways
    assert {p.get("hostname") for p in far["models"].values()} == {platform.node()}
    assert "[far] " in two.stdout and "lac: report set written to" in two.stdout
    # The wheel's route: lac installed from its wheel (no checkout anywhere), `--pyargs
    # lac_core.claims` from a user's folder holding their grid file and expectations, the far
    # host a server in a folder of its own holding the same files (xdist sends no files).
    (tmp_path / "wheel").mkdir()
    site = installed_wheel(tmp_path / "wheel")
    user, remote = tmp_path / "user", tmp_path / "remote"
    for folder in (user, remote):
        folder.mkdir()
        (folder / "grids").mkdir()
        shutil.copy(ROOT / "fixtures" / "grids" / "example.yaml", folder / "grids")
        shutil.copytree(ROOT / "fixtures" / "expected", folder / "expected")
    with socket_server(remote, site) as port:
        spec = f"socket=127.0.0.1:{port}//id=far//chdir={remote}"
        out, installed = run(tmp_path, "shipped", "-d", "--tx", "popen", "--tx", spec, "--lac-on",
                             "tiny-qwen2=far", tests=("--pyargs", "lac_core.claims"), cwd=user,
                             grid="grids/example.yaml", expected="expected",
                             env={"PYTHONPATH": str(site)})
    assert "[far] " in out.stdout, out.stdout[-3000:]
    assert numbers(installed) == numbers(near)
    assert {m: p.get("xdist_gateway") for m, p in installed["models"].items()} == gateways


def test_a_file_missing_on_a_far_host_stops_the_run_once_naming_both(second_host, tmp_path):
    """A grid file the controller's folder has and the far host's folder lacks: its worker stops
    at start, and the run stops with it, exit 4, the gateway and the file named. (xdist starts a
    --tx gateway's dead worker again without end: this run hung until its timeout.)"""
    user = tmp_path / "user"
    (user / "grids").mkdir(parents=True)
    shutil.copy(ROOT / "fixtures" / "grids" / "example.yaml", user / "grids")
    spec = f"socket=127.0.0.1:{second_host.port}//id=far//chdir={second_host.copy}"
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "lac_core.claims", "-p", "no:cacheprovider",
           "-q", "-k", "c4", "--lac-model", "tiny-llama", "--lac-grid", "grids/example.yaml",
           "--lac-reports", str(tmp_path / "r"), "-d", "--tx", "popen", "--tx", spec]
    env = {**os.environ, "LAC_CACHE_DIR": str(tmp_path / "cache"), "LAC_OFFLINE": "1"}
    try:
        out = subprocess.run(cmd, cwd=user, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not stop: xdist restarts the far worker without end")
    text = out.stdout + out.stderr
    assert out.returncode == 4, text[-3000:]
    said = [line for line in text.splitlines() if "lac: the xdist worker of gateway far" in line]
    assert said and "grid file grids/example.yaml does not exist" in said[0], text[-3000:]
    assert "replacing crashed worker" not in text, text[-3000:]
    if (tmp_path / "r" / "results.json").exists():  # the popen worker's test ran meanwhile
        run = json.loads((tmp_path / "r" / "results.json").read_text())["run"]
        assert run["status"] == "PARTIAL" and "xdist worker far" in json.dumps(run["failed"])


def test_a_pin_to_no_gateway_stops_the_run_at_start(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "-p", "no:cacheprovider", "-q",
         "--collect-only", "--lac-model", "tiny-llama", "--lac-grid", "example", "-d", "--tx",
         "popen", "--lac-on", "tiny-llama=far", "--lac-reports", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_SECONDS)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "--lac-on" in line]
    assert len(lines) == 1 and "no pytest-xdist gateway has the id far (this run's: gw0)" \
        in lines[0], out.stdout + out.stderr
