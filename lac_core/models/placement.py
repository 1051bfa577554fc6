"""Precision and placement: which dtype a model runs in and which devices hold its layers."""
# Registered models keep their registered dtype on every device (the paper's: float32 Gemma-2,
# bfloat16 Qwen2.5); other models run bfloat16 on a GPU and float32 on the CPU; --lac-dtype
# overrides both. Device `auto` is CUDA when visible (spread over every visible GPU with
# accelerate's device_map="auto" when there are several), else MPS, else the CPU.
#
# One GPU per worker (docs/scale.md): with the device left at its default (no --lac-device, no
# LAC_DEVICE) and W pytest-xdist workers on a host with G visible GPUs, worker r of the host
# (suite.start.host_share) places its models on `share(G, W, r)` only: GPU r mod G when there are
# fewer GPUs than workers (round robin), else every GPU i with i mod W == r, so a big model may
# spread over its worker's part. The list travels in the settings (Settings.gpus ->
# LoadOptions.gpus) to `target` and `load_kwargs`, which name those GPUs to torch and accelerate
# explicitly: no CUDA_VISIBLE_DEVICES, which torch reads once, before lac could set it.
from __future__ import annotations

import os
import re

import torch

from ..errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")


def resolve_device(option: str | None) -> str:
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto` (also LAC_DEVICE) -> the device a run uses."""
    option = option or "auto"
    if not DEVICE.match(option):
        raise UsageError(f"--lac-device {option!r} (or LAC_DEVICE): choose cpu, cuda, cuda:N, mps "
                         "or auto")
    if option == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if option.startswith("cuda"):
        index = int(option.split(":")[1]) if ":" in option else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UsageError(f"--lac-device {option}: no such CUDA device is visible "
                             f"({torch.cuda.device_count()} visible); pass --lac-device cpu or "
                             "auto")
    if option == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--lac-device mps: MPS is not available here; pass --lac-device cpu or "
                         "auto")
    return option


def resolve_dtype(registered: str | None, option: str | None, device: str) -> str:
    """The dtype a model runs in: --lac-dtype, else its registered dtype, else by device."""
    if option and option != "auto":
        if option not in DTYPES:
            raise UsageError(f"--lac-dtype {option!r}: choose float32, bfloat16, float16 or auto")
        return option
    return registered or ("float32" if device == "cpu" else "bfloat16")


# CPU features whose kernels compute a reduced-precision dtype natively (else it is emulated)
NATIVE = {"bfloat16": ("amx_bf16", "avx512_bf16"), "float16": ("amx_fp16", "avx512_fp16")}


def kernels(device: str, dtype: str) -> str | None:
    """Which kernel family computes a bfloat16 or float16 run (None for float32). Their rounding
    differs by family: on SmolLM2's example grid in bfloat16, one CPU gives C5 FAILS with its
    AVX-512 BF16 kernels and HOLDS with ATen's or oneDNN's capped at AVX2, and deciding numbers
    move by 10-300% between machines, so expectations in these dtypes are kept per family.
    float32 agrees across machines within the gate's tolerances and is not split."""
    if dtype not in NATIVE:
        return None
    if device.startswith("cuda"):  # every GPU holding layers: one, or all under a device map
        ids = ([int(device.split(":")[1])] if ":" in device
               else range(max(1, torch.cuda.device_count())))
        return "cuda:" + "+".join(sorted({"sm_%d%d" % torch.cuda.get_device_capability(i)
                                          for i in ids}))
    if device != "cpu":
        return device
    flags = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return "cpu:" + "+".join([torch.backends.cpu.get_cpu_capability(),
                              *(f for f in NATIVE[dtype] if flags.get(f)),
                              *([f"onednn_{capped.lower()}"] if capped else [])])


def emulated(family: str | None) -> bool:
    """Whether a CPU kernel family (kernels()) computes its reduced-precision dtype without native
    instructions: no AVX-512 BF16/FP16 or AMX feature, or ATen or oneDNN capped below AVX-512.
    Such a run converts every product to float32 and back, so it is slower than float32 itself."""
    if not family or not family.startswith("cpu:"):
        return False
    capability, *rest = family[4:].split("+")
    native = any(f in rest for features in NATIVE.values() for f in features)
    capped = any(f.startswith("onednn_") and "avx512" not in f and "amx" not in f for f in rest)
    return not native or not capability.upper().startswith("AVX512") or capped


def share(count: int, workers: int, rank: int) -> tuple[int, ...]:
    """The GPUs worker `rank` of `workers` on a host with `count` GPUs uses: each its own when
    there are enough (GPU i to worker i mod W), else round robin (worker r on GPU r mod G)."""
    return tuple(i for i in range(count) if i % workers == rank) or (rank % count,)


def worker_gpus(option: str | None, count: int, workers: int | None,
                rank: int) -> tuple[int, ...] | None:
    """This worker's GPUs (share), or None for every visible one as without xdist: when the user
    named a device (--lac-device or LAC_DEVICE: `option`, `auto` included, wins), when there is
    no GPU, or when the worker is alone on its host."""
    if option is not None or count < 1 or not workers or workers < 2:
        return None
    return share(count, workers, rank)


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def target(device: str, gpus: tuple[int, ...] | None = None) -> str:
    """Where a model without a device map goes: its worker's first GPU under `cuda`, else the
    device itself."""
    return f"cuda:{gpus[0]}" if device == "cuda" and gpus else device


def load_kwargs(device: str, gpus: tuple[int, ...] | None = None) -> dict:
    """from_pretrained keywords: a device map over several GPUs, the worker's own (accelerate
    told their free memory, and the CPU's for what does not fit, as its own `auto` does), else
    every visible GPU when several are and no worker share was given."""
    if device != "cuda":
        return {}
    if gpus is None:
        return {"device_map": "auto"} if torch.cuda.device_count() > 1 else {}
    if len(gpus) < 2:
        return {}
    import psutil  # accelerate's own dependency

    memory = {i: torch.cuda.mem_get_info(i)[0] for i in gpus}  # free bytes, as accelerate asks
    memory["cpu"] = psutil.virtual_memory().available
    return {"device_map": "auto", "max_memory": memory}


def devices_of(model: torch.nn.Module) -> list[str]:
    """The devices a loaded model's weights are on (one, or several under a device map)."""
    return sorted({str(t.device) for t in (*model.parameters(), *model.buffers())})
