"""What a model on disk is, read without loading it: depth, chat template, identity."""
# Used before any work: a GGUF file is read with gguf.GGUFReader (a truncated or corrupt file
# fails here, not inside transformers); a checkpoint directory (a hub id's snapshot among them:
# hub.py finds or downloads it) by its config.json and tokenizer files. Whatever transformers
# would choke on later (a file that is not JSON, a depth that is not a whole number, weights
# missing from a snapshot, an attention kernel the architecture lacks) is refused here with the
# file and the fix.
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import MissingWeightsError, UnknownModelError, UsageError

WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# what the tokenizer and its chat template are read from: part of a checkpoint's identity
PROMPT_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*",
                "*.model", "vocab*", "merges*", "additional_chat_templates/*.jinja")
LAYER_FIELDS = ("num_hidden_layers", "n_layer")
RESAVE = "fix the file, or save the checkpoint again with save_pretrained"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_facts(path: Path) -> tuple[int, bool, str]:
    """(decoder layers, has a chat template, architecture) from a GGUF file's metadata."""
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
        arch = fields["general.architecture"].contents()
        layers = int(fields[f"{arch}.block_count"].contents())
        return layers, "tokenizer.chat_template" in fields, arch
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise UnknownModelError(f"{path} is not a readable GGUF file ({type(exc).__name__}: "
                                f"{exc}); fetch it again or pass another file") from None


def read_object(path: Path, fix: str = RESAVE) -> dict:
    """A JSON object from a model's file, or an UnknownModelError naming the file and the fix."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise UnknownModelError(f"{path} is not valid JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise UnknownModelError(f"{path} cannot be read ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise UnknownModelError(f"{path} holds a JSON {type(doc).__name__}, not the JSON object "
                                f"transformers reads; {fix}")
    return doc


def _layers(config: dict, path: Path) -> int:
    """The depth: text_config's (a multimodal model's language model), else the config's own."""
    text = config.get("text_config")
    for prefix, where in (("text_config.", text), ("", config)):
        for name in LAYER_FIELDS if isinstance(where, dict) else ():
            if where.get(name) is None:
                continue
            value = where[name]
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            raise UnknownModelError(
                f"{path}: {prefix}{name} is {value!r}, not a positive whole number of decoder "
                f"layers; set it to the model's depth ({RESAVE})")
    raise UnknownModelError(
        f"{path} has no num_hidden_layers (nor text_config.num_hidden_layers), which gives the "
        f"model's depth; set it to the number of decoder layers ({RESAVE})")


def _has_template(directory: Path) -> bool:
    """Whether the tokenizer files carry a chat template; every JSON file transformers will read
    for it must parse (it would fail at load otherwise)."""
    files = [directory / n for n in ("tokenizer_config.json", "chat_template.json")]
    docs = [read_object(f) if f.is_file() else {} for f in files]
    return ((directory / "chat_template.jinja").is_file() or files[1].is_file()
            or bool(docs[0].get("chat_template")))


def checkpoint_facts(directory: Path) -> tuple[int, bool, str | None]:
    """(decoder layers, has a chat template, model_type) of a transformers checkpoint directory."""
    path = directory / "config.json"
    config = read_object(path)
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) else None
    return _layers(config, path), _has_template(directory), model_type


def fingerprint(directory: Path) -> str:
    """sha256 over config.json; per weight file, its name, size and first and last MiB (a
    different checkpoint gets a different identity without hashing gigabytes); then each
    tokenizer and chat template file whole, since they change every prompt the model sees."""
    h = hashlib.sha256((directory / "config.json").read_bytes())
    for f in weight_files(directory):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(1 << 20)
            fh.seek(max(size - (1 << 20), 0))
            h.update(f"{f.name}:{size}".encode() + head + fh.read())
    prompt = {p for pattern in PROMPT_FILES for p in directory.glob(pattern) if p.is_file()}
    for f in sorted(prompt):
        data = f.read_bytes()
        h.update(f"{f.relative_to(directory).as_posix()}:{len(data)}".encode() + data)
    return h.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """The weight files present (a cache's link to a deleted blob is not one)."""
    return sorted({p for pattern in WEIGHTS for p in directory.glob(pattern) if p.is_file()})


def missing_weights(directory: Path) -> str | None:
    """What a checkpoint directory lacks of its weights, or None when they are all there (a
    single-file checkpoint is what transformers reads first; else every shard its index lists)."""
    if any((directory / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        return None
    shards = set()
    for index in sorted(directory.glob("*.index.json")):
        weight_map = read_object(index).get("weight_map")
        shards |= {str(v) for v in weight_map.values()} if isinstance(weight_map, dict) else set()
    absent = sorted(s for s in shards if not (directory / s).is_file())
    if absent:
        return f"{directory} lacks {', '.join(absent[:3])}, listed in its weight index"
    if not weight_files(directory):
        return f"{directory} holds no weight files ({', '.join(WEIGHTS)})"
    return None


def classify(path: Path) -> tuple[str, Path]:
    """("gguf", file) or ("checkpoint", directory) for a --lac-model path; else a clear error."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnknownModelError(f"{path} is a file but not a .gguf; pass a GGUF file, a model "
                                    "directory, a registry name or a hub id")
        return "gguf", path
    ggufs = sorted(path.glob("*.gguf"))
    if (path / "config.json").exists() and weight_files(path):
        lacking = missing_weights(path)
        if lacking:
            raise MissingWeightsError(f"{lacking}; copy the missing files in or pass a complete "
                                      "checkpoint directory")
        return "checkpoint", path
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise UnknownModelError(f"{path} holds several GGUF files ({names}); pass the one to "
                                "check as --lac-model FILE")
    raise UnknownModelError(f"{path} is not a model: no config.json with weights and no *.gguf "
                            "found; pass a checkpoint directory or a GGUF file")


def causal_lm_class(model_type: str | None):
    """The class AutoModelForCausalLM builds for a model_type (None when transformers has none)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type or "")
    return getattr(transformers, name, None) if isinstance(name, str) else None


def no_sdpa(class_name: str) -> UsageError:
    """In lac's options: transformers' own message advises a keyword lac does not take."""
    return UsageError(f"--lac-attention sdpa: {class_name} does not support it; use "
                      "--lac-attention grouped (default) or eager")


def check_attention(model_type: str | None, attention: str) -> None:
    """Refuse --lac-attention sdpa for an architecture whose transformers class lacks the kernel,
    known from its model_type before any weight loads (load.py checks the loaded class too)."""
    cls = causal_lm_class(model_type) if attention == "sdpa" else None
    if cls is not None and not getattr(cls, "_supports_sdpa", True):
        raise no_sdpa(cls.__name__)
