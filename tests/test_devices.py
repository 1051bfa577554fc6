"""One GPU per worker and torch threads per host (issue 38.3, 38.5), on this CPU machine with the
CUDA device count faked: which GPUs a worker of rank r among W on a host with G gets, how the
controller counts the workers on each host from xdist's gateway specs, and what a worker's
start makes of both (its settings' GPUs, its torch threads); --lac-device and LAC_DEVICE win."""
import os
from types import SimpleNamespace

import execnet
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lac_core.models import load
from lac_core.models.load import LoadOptions
from lac_core.models import placement
from lac_core.models.placement import load_kwargs, share, target, worker_gpus
from lac_core.run.settings import Settings, default_threads
from lac_core.suite import start as start_module
from lac_core.suite.distributed import Controller
from lac_core.suite.start import HOST_RANK, HOST_WORKERS, host_of, host_share, threads_for


def fake_gpus(monkeypatch, count: int, free: int = 10 << 30) -> None:
    """`count` CUDA devices visible, as torch and accelerate are asked about them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free, 2 * free))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 16), st.integers(1, 16))
def test_every_worker_gets_a_device_and_none_shares_one_when_there_are_enough(gpus, workers):
    given_to = [share(gpus, workers, r) for r in range(workers)]
    assert all(g and set(g) <= set(range(gpus)) for g in given_to)  # >= 1 device, all real
    held = [i for g in given_to for i in g]
    if gpus >= workers:  # each GPU to exactly one worker, all of them used
        assert sorted(held) == list(range(gpus))
    else:  # round robin: each GPU serves floor or ceil(W / G) workers
        counts = [held.count(i) for i in range(gpus)]
        assert len(held) == workers and max(counts) - min(counts) <= 1
    assert share(gpus, 1, 0) == tuple(range(gpus))  # one worker: every GPU, as without xdist


def test_the_rule_round_robin():
    assert [share(2, 4, r) for r in range(4)] == [(0,), (1,), (0,), (1,)]
    assert [share(4, 2, r) for r in range(2)] == [(0, 2), (1, 3)]
    assert [share(3, 3, r) for r in range(3)] == [(0,), (1,), (2,)]


@pytest.mark.parametrize("option", ["cpu", "cuda", "cuda:1", "mps", "auto"])
def test_a_device_option_wins(option):
    """--lac-device (or LAC_DEVICE), `auto` included: the device the user named, not a share."""
    assert worker_gpus(option, count=4, workers=2, rank=1) is None
    assert worker_gpus(None, count=4, workers=2, rank=1) == (1, 3)


def test_no_share_without_gpus_or_without_other_workers():
    assert worker_gpus(None, count=0, workers=4, rank=1) is None  # CPU or MPS: nothing to share
    assert worker_gpus(None, count=4, workers=None, rank=0) is None  # not under xdist
    assert worker_gpus(None, count=4, workers=1, rank=0) is None  # alone on its host: all, as today


def test_lac_device_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("LAC_DEVICE", "cuda:0")
    fake_gpus(monkeypatch, 4)
    assert start_module.placed(Settings(), workers=4, rank=3).gpus is None
    monkeypatch.delenv("LAC_DEVICE")
    assert start_module.placed(Settings(), workers=4, rank=3).gpus == (3,)


def _spec(text: str, gid: str) -> execnet.XSpec:
    spec = execnet.XSpec(text)
    spec.id = gid  # as xdist's NodeManager allocates it
    return spec


def _node(specs, mine):
    return SimpleNamespace(nodemanager=SimpleNamespace(specs=specs), gateway=SimpleNamespace(
        spec=mine, id=mine.id), workerinput={"workerid": mine.id, "workercount": len(specs)})


def test_the_controller_counts_workers_per_host():
    """popen x2 + a socket gateway to 127.0.0.1 (in lac's tests, another host on loopback):
    2 workers on the controller's host (ranks 0, 1) and 1 on the other (rank 0)."""
    specs = [_spec("popen", "gw0"), _spec("popen", "gw1"), _spec("socket=127.0.0.1:1", "gw2")]
    controller = Controller(SimpleNamespace(stash=pytest.Stash()))
    seen = []
    for spec in specs:
        node = _node(specs, spec)
        controller.pytest_configure_node(node)
        seen.append((node.workerinput[HOST_WORKERS], node.workerinput[HOST_RANK]))
        assert node.workerinput["lac_run_id"]  # as before: the controller's run id
    assert seen == [(2, 0), (2, 1), (1, 0)]


def test_hosts_are_named_by_their_gateway_target():
    assert host_of(_spec("popen", "a")) == host_of(_spec("popen//python=python3", "b"))
    assert host_of(_spec("socket=127.0.0.1:1", "c")) != host_of(_spec("popen", "d"))
    assert host_of(_spec("ssh=box//chdir=x", "e")) == host_of(_spec("ssh=box//python=py", "f"))
    assert host_of(_spec("ssh=box", "g")) != host_of(_spec("ssh=other", "h"))
    assert host_of(_spec("popen//via=proxy", "i")) == host_of(_spec("popen//via=proxy", "j"))
    assert host_of(_spec("popen//via=proxy", "k")) != host_of(_spec("popen", "l"))


def test_a_worker_reads_its_share_of_its_host():
    assert host_share({"workercount": 3, HOST_WORKERS: 2, HOST_RANK: 1}) == (2, 1)
    assert host_share({}) == (None, 0)  # not a worker


def test_threads_follow_the_workers_on_the_host():
    """8 cores, 3 workers in all, 2 on this host: 4 threads each here (was 8 // 3 = 2)."""
    assert threads_for(None, cores=8, workers=2, load=0.0) == (4, 4)
    assert threads_for("auto", cores=8, workers=2, load=5.0) == (3, 3)
    assert threads_for(3, cores=8, workers=2, load=0.0) == (3, 4)
    assert threads_for(None, cores=8, workers=None, load=0.0) == (None, 8)  # torch's own
    for cores, workers, load_avg in ((2, 2, 0.0), (8, 3, 1.0), (1, 4, 0.0)):  # one host: as before
        assert threads_for(None, cores, workers, load_avg)[0] == max(1, cores // workers)
        assert threads_for("auto", cores, workers, load_avg)[0] == \
            default_threads(cores, workers, load_avg)


def _worker_config(workerinput):
    return SimpleNamespace(getoption=lambda name: None, workerinput=workerinput,
                           invocation_params=SimpleNamespace(args=()), stash=pytest.Stash(),
                           option=SimpleNamespace(verbose=0),
                           issue_config_time_warning=lambda *a, **k: None)


def test_a_worker_starts_with_its_gpus_and_its_hosts_threads(monkeypatch):
    """What `start` gives a worker of rank 1 among 2 on a host with 4 GPUs and 8 cores, 3
    workers in all: GPUs 1 and 3 in its settings, 8 // 2 torch threads."""
    monkeypatch.delenv("LAC_DEVICE", raising=False)
    fake_gpus(monkeypatch, 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    set_to, started = [], []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    from lac_core.run import session

    def fake_start(settings, args=()):
        started.append(settings)
        return SimpleNamespace(settings=settings, checked=SimpleNamespace(warnings=[]),
                               ident=SimpleNamespace())  # what start sets up, nothing else

    monkeypatch.setattr(session.Session, "start", staticmethod(fake_start))
    start_module.start(_worker_config({"workerid": "gw1", "workercount": 3,
                                       "lac_run_id": "r", HOST_WORKERS: 2, HOST_RANK: 1}))
    assert started[0].gpus == (1, 3) and set_to == [4]


def test_placement_keeps_to_the_assigned_gpus(monkeypatch):
    """One GPU: the model goes to it; several: accelerate's device map over those only (it never
    touches the others, so no worker makes a CUDA context on another's GPU)."""
    fake_gpus(monkeypatch, 4, free=7)
    assert target("cuda", (2,)) == "cuda:2" and load_kwargs("cuda", (2,)) == {}
    kw = load_kwargs("cuda", (1, 3))
    assert kw["device_map"] == "auto" and [k for k in kw["max_memory"]] == [1, 3, "cpu"]
    assert kw["max_memory"][1] == kw["max_memory"][3] == 7
    assert load_kwargs("cuda") == {"device_map": "auto"} and target("cuda") == "cuda"  # as before
    assert target("cuda:1", None) == "cuda:1" and target("cpu", None) == "cpu"


def test_load_places_a_model_on_its_gpu_and_records_it(monkeypatch):
    """load() with GPU 2 assigned moves the model to cuda:2 (faked here: the move is recorded,
    the model stays on the CPU) and its provenance names the devices its weights are on."""
    fake_gpus(monkeypatch, 4)
    moved = []
    real_to = torch.nn.Module.to

    def to(self, *args, **kw):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            moved.append(args[0])
            return self
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    lm = load("tiny-llama", LoadOptions(dtype="float32", gpus=(2,)))
    assert moved == ["cuda:2"]
    assert lm.provenance["device"] == "cuda"  # the kind: the resume key is the same on any GPU
    assert lm.provenance["devices"] == ["cpu"]  # where the weights really are (faked move)


def test_a_cpu_run_records_its_device():
    lm = load("tiny-llama", Settings(device="cpu").load_options())
    assert lm.provenance["devices"] == ["cpu"] and lm.provenance["device"] == "cpu"
    assert placement.devices_of(lm.model) == ["cpu"]
