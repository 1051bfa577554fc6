"""Everything that can be checked before a model loads, checked once at session start."""
# Options, grid files, the chat template, each model's identity (registry name, hub id in the
# local cache, checkpoint directory, GGUF file), its chat template and depth against the chosen
# layers. A failure raises one LacError that names the problem and the fix; nothing has run.
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import MissingWeightsError, UsageError
from .grids import Grid, resolve_grid
from .models.placement import resolve_device, resolve_dtype
from .models.pypi import gguf_path
from .models.registry import ModelSpec, resolve
from .prompts import swept_layers
from .settings import Settings
from .templates import FIXES, ChatTemplate, choose


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
    specs, warnings = {}, []
    for arg in settings.models:
        spec = resolve(arg)
        spec = replace(spec, dtype=resolve_dtype(spec.dtype, settings.dtype, device))
        if spec.name in specs:
            warnings.append(f"lac: --model {arg} repeats {spec.name}; it runs once")
            continue
        if template.name == "model" and not spec.chat_template:
            raise UsageError(f"{spec.name} has no chat template of its own; pass {FIXES}")
        if settings.offline and spec.source == "pypi-gguf" and \
                not gguf_path(spec, settings.cache_dir).exists():
            raise MissingWeightsError(f"weights of {spec.name} are not in the cache and lac runs "
                                      f"offline; fetch them first: {spec.fetch_command()}")
        if any("sweep" in g.experiments for g in grids):
            swept_layers(spec.n_layers, settings.layers)  # raises on a layer out of range
        specs[spec.name] = spec
    return Checked(labelled, specs, template, warnings)
