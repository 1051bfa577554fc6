"""What a model on disk is, read without loading it: depth, chat template, identity."""
# Used before any work: a GGUF file is read with gguf.GGUFReader (a truncated or corrupt file
# fails here, not inside transformers); a checkpoint directory by its config.json and tokenizer
# files; a hub id through the local Hugging Face cache only.
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import MissingWeightsError, UnknownModelError

WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def gguf_facts(path: Path) -> tuple[int, bool]:
    """(decoder layers, has a chat template) from a GGUF file's metadata."""
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
        arch = fields["general.architecture"].contents()
        return int(fields[f"{arch}.block_count"].contents()), "tokenizer.chat_template" in fields
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise UnknownModelError(f"{path} is not a readable GGUF file ({type(exc).__name__}: "
                                f"{exc}); fetch it again or pass another file") from None


def _layers(config: dict) -> int:
    config = config.get("text_config", config)
    return int(config.get("num_hidden_layers") or config.get("n_layer"))


def _has_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").exists() or (directory / "chat_template.json").exists():
        return True
    tok = directory / "tokenizer_config.json"
    return tok.exists() and bool(json.loads(tok.read_text()).get("chat_template"))


def checkpoint_facts(directory: Path) -> tuple[int, bool]:
    """(decoder layers, has a chat template) of a transformers checkpoint directory."""
    return _layers(json.loads((directory / "config.json").read_text())), _has_template(directory)


def fingerprint(directory: Path) -> str:
    """sha256 over config.json and, per weight file, its name, size and first and last MiB: a
    different checkpoint gets a different identity without hashing gigabytes."""
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for f in sorted(p for pattern in WEIGHTS for p in directory.glob(pattern)):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(1 << 20)
            fh.seek(max(size - (1 << 20), 0))
            h.update(f"{f.name}:{size}".encode() + head + fh.read())
    return h.hexdigest()


def classify(path: Path) -> tuple[str, Path]:
    """("gguf", file) or ("checkpoint", directory) for a --model path; a clear error otherwise."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnknownModelError(f"{path} is a file but not a .gguf; pass a GGUF file, a model "
                                    "directory, a registry name or a hub id")
        return "gguf", path
    ggufs = sorted(path.glob("*.gguf"))
    has_weights = any(p for pattern in WEIGHTS for p in path.glob(pattern))
    if (path / "config.json").exists() and has_weights:
        return "checkpoint", path
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise UnknownModelError(f"{path} holds several GGUF files ({names}); pass the one to "
                                "check as --model FILE")
    raise UnknownModelError(f"{path} is not a model: no config.json with weights and no *.gguf "
                            "found; pass a checkpoint directory or a GGUF file")


def hub_snapshot(hub_id: str) -> Path:
    """The local Hugging Face cache's snapshot of a hub id (its folder name is the revision)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(config, str):
        raise MissingWeightsError(
            f"weights of {hub_id} are not in the local Hugging Face cache; no hub is reachable "
            f"here. On a machine with hub access run `hf download {hub_id}` and copy the cache "
            "over (HF_HOME), or pass --model with a local directory holding the weights.")
    return Path(config).parent
