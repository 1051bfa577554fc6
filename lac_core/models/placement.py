"""Precision and placement: which dtype a model runs in and which devices hold its layers."""
# Registered models keep their registered dtype on every device (the paper's: float32 Gemma-2,
# bfloat16 Qwen2.5); other models run bfloat16 on a GPU and float32 on the CPU; --lac-dtype
# overrides both. Device `auto` is CUDA when visible (spread over every visible GPU with
# accelerate's device_map="auto" when there are several), else MPS, else the CPU.
from __future__ import annotations

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


def load_kwargs(device: str) -> dict:
    """from_pretrained keywords: a device map over every GPU when several are visible."""
    if device == "cuda" and torch.cuda.device_count() > 1:
        return {"device_map": "auto"}
    return {}
