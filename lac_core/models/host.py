"""Where a model ran: the host's name, platform and CPU, the GPUs it was placed on and torch's
thread count when it loaded. Each model's provenance holds them (a run across hosts or workers
names each model's host, not only the controller's); REPORT.md's "ran on" line shows them."""
from __future__ import annotations

import platform as _platform  # a Machine field is named platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

# The /proc/cpuinfo keys that name the CPU, by architecture: x86 and most ARM kernels ("model
# name"), older ARM ("Hardware", "Processor"), POWER ("cpu"), MIPS ("cpu model").
CPU_KEYS = ("model name", "Hardware", "Processor", "cpu model", "cpu")
CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


@dataclass(frozen=True)
class Machine:
    """What host_fields reads of the machine it runs on: a test passes fakes."""

    node: Callable[[], str] = _platform.node
    platform: Callable[[], str] = _platform.platform
    cpuinfo: Callable[[], str] = _cpuinfo
    processor: Callable[[], str] = _platform.processor  # where there is no /proc/cpuinfo
    threads: Callable[[], int] = torch.get_num_threads
    current_cuda: Callable[[], int] = torch.cuda.current_device  # what a bare "cuda" means
    cuda_properties: Callable[[int], object] = torch.cuda.get_device_properties


def cpu_model(cpuinfo: str) -> str | None:
    """The CPU's name in /proc/cpuinfo's text (the first processor's), or None."""
    found = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in CPU_KEYS and value.strip():
            found.setdefault(key.strip(), value.strip())
    return next((found[k] for k in CPU_KEYS if k in found), None)


def cuda_indices(devices: Iterable[str], current: Callable[[], int]) -> list[int]:
    """The CUDA device numbers among a model's devices ("cuda:1"; "cuda": the current one; "0":
    accelerate's device map names a GPU by its number), sorted, each once."""
    out = set()
    for device in devices:
        m = CUDA.match(device)
        if m:
            out.add(int(m.group(1)) if m.group(1) else current())
        elif device.isdigit():
            out.add(int(device))
    return sorted(out)


def host_fields(devices: Iterable[str], machine: Machine = Machine()) -> dict:
    """The host part of a model's provenance: host, platform, cpu, torch_threads and gpus
    ([{device, name, memory_bytes}] for the CUDA devices among `devices`, those the model's
    weights are on; empty on a CPU or MPS)."""
    gpus = []
    for index in cuda_indices(devices, machine.current_cuda):
        props = machine.cuda_properties(index)
        gpus.append({"device": f"cuda:{index}", "name": props.name,
                     "memory_bytes": int(props.total_memory)})
    return {"hostname": machine.node(), "platform": machine.platform(),
            "cpu": cpu_model(machine.cpuinfo()) or machine.processor() or None,
            "torch_threads": machine.threads(), "gpus": gpus}
