"""Everything that can be checked before a model loads, checked once at session start."""
# Options, grid files, the chat template, each model's identity (registry name, hub id resolved to
# a commit and downloaded unless offline or collect-only, checkpoint directory, GGUF file), its
# chat template, its cached GGUF (a file where one belongs; offline, one of the registered size),
# --lac-attention against its architecture, and its depth against the chosen layers. A model
# named twice (the same identity, or the same GGUF sha256 in the same dtype: a registry name and
# its file's path) runs once, with a warning. A failure raises one LacError that names the problem
# and the fix; nothing has run.
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..protocol.grids import Grid, resolve_grid
from ..models.inspect import check_attention
from ..models.placement import emulated, kernels, resolve_device, resolve_dtype
from ..models.pypi import check_cached
from ..models.registry import ModelSpec, resolve
from ..protocol.prompts import swept_layers
from .settings import Settings
from ..verdicts.kinds import Kind
from ..protocol.templates import FIXES, ChatTemplate, choose


@dataclass(frozen=True)
class Checked:
    grids: dict[str, Grid]  # label (the grid's name; name@hash where two share a name) -> grid
    models: dict[str, ModelSpec]  # identity -> spec, in the order given, each once
    template: ChatTemplate
    warnings: list[str] = field(default_factory=list)


def check(settings: Settings) -> Checked:
    template = choose(settings.chat_template, settings.raw)
    device = resolve_device(settings.device)
    grids = [resolve_grid(g) for g in dict.fromkeys(settings.grids)]
    names = [g.name for g in grids]
    labelled = {g.name if names.count(g.name) == 1 else g.key: g for g in grids}
    specs, by_weights, warnings = {}, {}, []
    for arg in settings.models:
        spec = resolve(arg, offline=settings.offline, download=not settings.collect_only)
        if spec.source == "hub" and spec.local_dir is None:  # collect-only: nothing downloaded
            warnings.append(f"lac: --lac-model {arg} is not in the local Hugging Face cache; "
                            f"--collect-only downloads nothing (collected as {spec.name}, its "
                            "depth and chat template unchecked until a run downloads it)")
        dtype = resolve_dtype(spec.dtype, settings.dtype, device)
        spec = replace(spec, dtype=dtype, kernels=kernels(device, dtype))
        if emulated(spec.kernels) and not any("is emulated" in w for w in warnings):
            warnings.append(f"lac: {dtype} on this CPU is emulated ({spec.kernels}: no native "
                            f"{dtype} instructions), so it runs slower than float32 "
                            "(docs/performance.md); --lac-dtype float32 is faster here, and its "
                            "numbers agree across machines")
        weights = (spec.sha256, spec.dtype) if spec.sha256 else None  # a GGUF's, else by name
        first = spec.name if spec.name in specs else by_weights.get(weights)
        if first:
            same = "" if first == spec.name else f" (same weights: sha256 {spec.sha256[:12]}...)"
            warnings.append(f"lac: --lac-model {arg} repeats {first}{same}; it runs once")
            continue
        if template.name == "model" and not spec.chat_template:
            raise UsageError(f"{spec.name} has no chat template of its own; pass {FIXES}")
        if spec.source == "pypi-gguf":
            check_cached(spec, settings.cache_dir, settings.offline)
        check_attention(spec.model_type, settings.attention)
        if spec.n_layers and any(Kind.SWEEP in g.experiments for g in grids):
            swept_layers(spec.n_layers, settings.layers)  # raises on a layer out of range
        specs[spec.name] = spec
        if weights:
            by_weights.setdefault(weights, spec.name)
    return Checked(labelled, specs, template, warnings)
