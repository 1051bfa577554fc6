"""Where each model ran (issue 38.3): every model's provenance names its host, platform, CPU, GPUs
(name and memory) and torch threads, gathered where it loaded (an xdist worker's own host);
REPORT.md has a "ran on" line per model, read from results.json alone; a results.json written
before these fields renders without the line."""
import json
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lac_core.models.host import Machine, cpu_model, host_fields
from lac_core.report import document
from lac_core.report.sections import ran_on
from lac_core.run.settings import ROOT

from .test_report import source, synthetic_session

XEON = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n\n" \
       "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n"
OLD_ARM = "Processor\t: ARMv7 Processor rev 4 (v7l)\nHardware\t: BCM2835\n"


def _no_cuda(*_):
    raise AssertionError("CUDA asked about on a model without a CUDA device")


def fake(cpuinfo=XEON, processor="x86_64", cuda=_no_cuda, current=_no_cuda) -> Machine:
    return Machine(node=lambda: "gpu-box-7", platform=lambda: "Linux-6.1-x86_64-with-glibc2.36",
                   cpuinfo=lambda: cpuinfo, processor=lambda: processor, threads=lambda: 3,
                   current_cuda=current, cuda_properties=cuda)


def test_the_cpu_is_named_from_cpuinfo_or_the_platform():
    assert cpu_model(XEON) == "Intel(R) Xeon(R) Gold 6338"
    assert cpu_model(OLD_ARM) == "BCM2835"  # no "model name": the board's
    assert cpu_model("") is None and cpu_model("model name\t:\n") is None
    assert host_fields(["cpu"], fake(cpuinfo="", processor="arm"))["cpu"] == "arm"  # no /proc
    assert host_fields(["cpu"], fake(cpuinfo="", processor=""))["cpu"] is None


def test_a_cpu_model_asks_nothing_of_cuda_and_lists_no_gpu():
    got = host_fields(["cpu"], fake())
    assert got == {"hostname": "gpu-box-7", "platform": "Linux-6.1-x86_64-with-glibc2.36",
                   "cpu": "Intel(R) Xeon(R) Gold 6338", "torch_threads": 3, "gpus": []}


def test_the_gpus_are_those_the_model_was_placed_on():
    asked = []

    def props(i):
        asked.append(i)
        return SimpleNamespace(name=f"NVIDIA A100 #{i}", total_memory=(40 + i) * 2**30)

    # "cuda": the current device (2); "0", "1": accelerate's device map by number; "cpu", "disk"
    # are not GPUs; "cuda:1" and "1" are one GPU
    got = host_fields(["cuda", "0", "1", "cuda:1", "cpu", "disk"], fake(cuda=props,
                                                                      current=lambda: 2))
    assert got["gpus"] == [{"device": f"cuda:{i}", "name": f"NVIDIA A100 #{i}",
                            "memory_bytes": (40 + i) * 2**30} for i in (0, 1, 2)]
    assert sorted(asked) == [0, 1, 2]
    assert ", devices" not in ran_on({**got, "device": "cpu", "dtype": "float32",
                                      "devices": ["cpu"]})  # said once
    assert "Gold 6338, 1 torch thread, GPU" in ran_on({**got, "torch_threads": 1})  # not threads
    line = ran_on({**got, "device": "cuda", "dtype": "bfloat16", "kernels": "cuda:sm_80",
                   "devices": ["cuda:0", "cuda:1"]})
    assert line == ("ran on host gpu-box-7 (Linux-6.1-x86_64-with-glibc2.36, CPU Intel(R) "
                    "Xeon(R) Gold 6338, 3 torch threads, GPU NVIDIA A100 #0 (cuda:0, 40.0 GiB), "
                    "GPU NVIDIA A100 #1 (cuda:1, 41.0 GiB), GPU NVIDIA A100 #2 (cuda:2, 42.0 GiB))"
                    ", cuda, bfloat16, kernels cuda:sm_80, devices cuda:0, cuda:1")


def test_a_results_json_without_host_fields_renders_without_the_line():
    s = synthetic_session()  # its provenance has no host fields, as before issue 38
    report = document.report_markdown(source(s), {})
    assert "## Provenance" in report and "ran on" not in report
    for model, p in s.ledger.provenance.items():
        p.update(host_fields(["cpu"], fake()), device="cpu", dtype="float32")
        p["hostname"] = f"box-of-{model}"
    report = document.report_markdown(source(s), {})
    for model in s.ledger.provenance:
        assert (f"  - ran on host box-of-{model} (Linux-6.1-x86_64-with-glibc2.36, CPU Intel(R) "
                "Xeon(R) Gold 6338, 3 torch threads), cpu, float32") in report


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ran_on") / "reports"
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-p",
           "no:cacheprovider", "--lac-grid", "example", "--lac-model", "tiny-llama",
           "--lac-model", "tiny-qwen2", "-k", "c1_additive", "--lac-reports", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert (out / "results.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "REPORT.md").read_text()


def test_each_model_of_a_run_names_where_it_ran(tiny_run):
    doc, report = tiny_run
    info = Path("/proc/cpuinfo")
    cpu = cpu_model(info.read_text() if info.exists() else "") or platform.processor() or None
    assert set(doc["models"]) == {"tiny-llama", "tiny-qwen2"}
    lines = report.splitlines()
    for model, p in doc["models"].items():
        assert p["hostname"] == platform.node() and p["platform"] == platform.platform()
        assert p["cpu"] == cpu and p["torch_threads"] == doc["run"]["torch_threads"]
        assert (p["gpus"] != []) == p["device"].startswith("cuda")
        at = next(i for i, x in enumerate(lines) if x.startswith(f"- **{model}**: "))
        line = lines[at + 1]  # under the model's own line
        assert line.startswith(f"  - ran on host {platform.node()} ({platform.platform()}, "
                               f"CPU {cpu}, {p['torch_threads']} torch thread"), line
        assert f"), {p['device']}, {p['dtype']}" in line, line
