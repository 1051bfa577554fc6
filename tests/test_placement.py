"""Precision, placement and workers: bfloat16 end to end, float16 overflow named by layer, a model
spread by accelerate's device map, dtype/device choices, and -n 2 giving the serial results."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from lac_core.protocol import experiments
from lac_core.engine.forward import Engine
from lac_core.errors import NonFiniteResidualError, UsageError
from lac_core.protocol.grids import resolve_grid
from lac_core.models import load
from lac_core.models.placement import kernels, resolve_device, resolve_dtype
from lac_core.run.settings import ROOT, Settings


def _claims(tmp_path, name, *args):
    (tmp_path / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-p", "no:cacheprovider", "--lac-grid", "example",
           "--lac-reports", str(tmp_path / name), "--lac-expected-dir", str(tmp_path / "expected"), *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in out.stdout, out.stdout[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


def _finite(x):
    return all(_finite(v) for v in x.values()) if isinstance(x, dict) else \
        all(_finite(v) for v in x) if isinstance(x, list) else x is None or math.isfinite(x)


def test_bfloat16_end_to_end(tmp_path):
    data = _claims(tmp_path, "bf16", "--lac-model", "tiny-llama", "--lac-dtype", "bfloat16")
    assert data["models"]["tiny-llama"]["dtype"] == "bfloat16"
    assert {v["claim"] for v in data["verdicts"]} == {"C1", "C1L", "C2", "C3", "C3R", "C4", "C5", "C6"}
    for record in (*data["sweeps"], *data["host_injection"]):
        assert _finite(record.get("kl_add") or record["kl"]) and _finite(record.get("kl_null", []))


def test_float16_overflow_names_the_first_layer(lac_models):
    lm = load("tiny-llama", Settings(dtype="float16").load_options())
    assert lm.dtype == torch.float16
    with torch.no_grad():
        lm.layers[2].mlp.down_proj.weight.mul_(1e5)  # layer 2's output: the residual entering 3
    with pytest.raises(NonFiniteResidualError, match=r"entering layer 3 \(dtype torch.float16\).*"
                                                     r"bfloat16 or float32"):
        experiments.sweep(Engine(lm), resolve_grid("example"))


def test_dtype_and_device_choices():
    assert resolve_dtype("bfloat16", None, "cpu") == "bfloat16"  # registered: kept on every device
    assert resolve_dtype(None, None, "cpu") == "float32" and resolve_dtype(None, "auto", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "float16", "cpu") == "float16"
    assert resolve_device("cpu") == "cpu" and resolve_device(None) in ("cpu", "cuda", "mps")
    for bad, message in (("gpu", "choose cpu, cuda, cuda:N, mps or auto"), ("cuda:7", "no such CUDA device")):
        if bad == "cuda:7" and torch.cuda.device_count() > 7:
            continue
        with pytest.raises(UsageError, match=message):
            resolve_device(bad)


def test_reduced_precision_names_its_kernel_family(monkeypatch):
    """bfloat16 numbers differ between kernel families (C5 flips on SmolLM2's example grid):
    the family is named from the device, ATen's CPU capability, the CPU's native bf16/fp16
    features and a oneDNN cap; float32 is not split."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert kernels("cpu", "float32") is None
    assert kernels("cpu", "bfloat16") == "cpu:AVX512+avx512_bf16" and kernels("cpu", "float16") == "cpu:AVX512"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert kernels("cpu", "bfloat16") == "cpu:AVX512+avx512_bf16+onednn_avx2"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: ((8, 0), (8, 6))[i])
    assert kernels("cuda", "bfloat16") == "cuda:sm_80+sm_86" and kernels("cuda:1", "bfloat16") == "cuda:sm_86"
    assert kernels("mps", "float16") == "mps"


@pytest.mark.parametrize("family, slow", [
    ("cpu:AVX512+avx512_bf16", False), ("cpu:AVX512+amx_bf16+avx512_bf16", False),
    ("cpu:AVX2", True), ("cpu:AVX512", True), ("cpu:AVX2+avx512_bf16", True),
    ("cpu:AVX512+avx512_bf16+onednn_avx2", True), ("cpu:AVX512+avx512_bf16+onednn_avx512_core_bf16", False),
    (None, False), ("cuda:sm_80", False), ("mps", False)])
def test_emulated_reduced_precision_is_named(family, slow):
    """Issue 35.2: bfloat16 on a CPU without native kernels (AVX2 only) is emulated and slower than
    float32; a run says so at start, with the float32 alternative."""
    from lac_core.models.placement import emulated

    assert emulated(family) is slow


def test_an_emulated_bfloat16_run_says_so_at_start(monkeypatch):
    from lac_core.run import preflight
    from lac_core.run.settings import Settings

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    checked = preflight.check(Settings(models=("tiny-llama",), grids=("example",), dtype="bfloat16"))
    said = [w for w in checked.warnings if "emulated" in w]
    assert len(said) == 1 and "--lac-dtype float32" in said[0]
    quiet = preflight.check(Settings(models=("tiny-llama",), grids=("example",)))
    assert not any("emulated" in w for w in quiet.warnings)


def test_a_model_spread_by_a_device_map_gives_the_same_numbers(lac_models):
    """accelerate's dispatch_model (what device_map='auto' does) wraps each layer in a hook that
    moves its inputs: captures, substitutions, start-at-layer runs and the cache still work, and
    the numbers equal the plain model's. (One CPU here: a real multi-GPU run is for a GPU box.)"""
    from accelerate import dispatch_model

    plain = lac_models("tiny-qwen2")
    spread = load("tiny-qwen2")
    n = spread.n_layers
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" for i in range(n)}}
    spread.model = dispatch_model(spread.model, device_map=device_map, force_hooks=True)
    assert hasattr(spread.layers[n // 2], "_hf_hook") and spread.model.hf_device_map == device_map
    grid = resolve_grid("example")
    ours, theirs = experiments.sweep(Engine(spread), grid), experiments.sweep(Engine(plain), grid)
    np.testing.assert_allclose(ours.kl_add, theirs.kl_add, rtol=1e-5, atol=1e-7)
    assert ours.references == theirs.references


def test_two_workers_give_the_serial_results(tmp_path):
    models = ["--lac-model", "tiny-llama", "--lac-model", "tiny-qwen2"]
    serial = _claims(tmp_path, "serial", *models, "--lac-threads", "1")
    parallel = _claims(tmp_path, "parallel", *models, "-n", "2")
    gateways = {m: p.pop("xdist_gateway") for m, p in parallel["models"].items()}
    assert sorted(gateways.values()) == ["gw0", "gw1"]  # where each model ran, named
    assert {k for k in serial if serial[k] != parallel[k]} == {"run"}
    assert sorted(parallel["models"]) == ["tiny-llama", "tiny-qwen2"] and parallel["sweeps"]
