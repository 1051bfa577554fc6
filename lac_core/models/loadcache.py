"""GGUF models kept dequantized as safetensors, so that only their first load pays for it."""
# An entry is <cache_dir>/loaded/<gguf sha256>-<dtype>-transformers<version>-<key digest>/:
# config.json and model.safetensors (tied duplicates left out) as from_pretrained reads them, the
# tokenizer's files in tokenizer/ (beside config.json they would steer AutoTokenizer to another
# class), and manifest.json, written last: the key (GGUF sha256, dtype, entry format, and the
# transformers, torch and gguf versions that dequantize), how to load the tokenizer as the GGUF
# loader built it, and the sha256 of every file. An entry is built in a temporary folder beside
# it, loaded back and compared with what it was built from (every parameter and buffer bit for
# bit, tied weights, config, tokenizer), and only then moved into place with os.replace. An entry
# whose manifest is missing, unreadable or of another key, whose files fail their checksums or are
# not all listed, or that fails to load is rebuilt from the GGUF and replaced, never used. Weights
# loaded from an entry are copied out of the file's mapping into fresh tensors: the mapping puts
# every tensor at an offset CPU kernels treat as unaligned, which moved window KLs by ~4e-7 on
# SmolLM2 although the weights were equal; fresh tensors give the GGUF load's numbers bit for
# bit, and a model edited in memory never writes to the cache.
# The checksums find damage, not tampering: whoever can write an entry's files can update its
# manifest too. So an entry is used only when it and every folder and file in it belong to the
# current user and none is writable by group or others, and entries are written so (at most
# readable by others, whatever the mode of the folder holding them, even a shared 1777 one). On a
# shared machine this keeps weights another user wrote from loading as the GGUF's (the entry is
# rebuilt instead). It cannot stop the same user (or root) rewriting their own cache, nor someone
# who may rename folders in loaded/ (writable by others without the sticky bit) from swapping an
# entry between this check and the load.
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from .inspect import sha256_of
from .pypi import to_stderr
from .registry import ModelSpec

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
# config fields that name the file read (and the dtype, which the tensors' own dtypes check)
UNCOMPARED = ("_name_or_path", "quantization_config", "dtype")
NO_ENTRY = "no entry yet"
SAMPLE = "Hello, world!\n\tcafé 123 <|im_start|> <start_of_turn>"


def key_of(sha256: str, dtype: torch.dtype) -> dict:
    """What an entry must match: the GGUF and everything that turns it into tensors."""
    import transformers

    return {"format": FORMAT, "gguf_sha256": sha256, "dtype": str(dtype).removeprefix("torch."),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "gguf": metadata.version("gguf")}


def entry_dir(root: Path, key: dict) -> Path:
    """Named by the whole key (its digest covers torch, gguf and the format): environments that
    differ in any of them keep entries side by side instead of rebuilding each other's."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / (f"{key['gguf_sha256']}-{key['dtype']}-transformers{key['transformers']}"
                         f"-{digest}")


def problem(entry: Path, key: dict) -> str | None:
    """Why the entry must not be used, or None when it is whole and of this key."""
    if not entry.is_dir():
        return NO_ENTRY
    foreign = _writable_by_others(entry)
    if foreign:
        return foreign
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
        same_key = manifest["key"] == key
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return f"manifest missing or unreadable ({type(exc).__name__}: {exc})"
    if not same_key:
        return "manifest of another key"
    if not isinstance(files, dict) or WEIGHTS not in files:
        return "manifest lists no weights"
    try:  # OSError: another process replaced the entry meanwhile
        stray = {f.relative_to(entry).as_posix() for f in _files(entry)} - {MANIFEST, *files}
        if stray:  # a file the loaders might read that the checksums do not cover
            return f"files not in the manifest: {sorted(stray)[:3]}"
        for name, digest in files.items():
            path = entry / str(name)
            if not _inside(str(name)) or not path.is_file() or sha256_of(path) != digest:
                return f"{name} fails its checksum"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def others_may_write(st: os.stat_result, name: str = "the entry") -> str | None:
    """Why someone other than the user running lac could have written the file or folder of
    `st`, or None. The rule of both caches (this one and the resume cache, run/resume.py): a
    checksum finds damage, not tampering, so an entry is trusted only when it is yours alone."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None  # who writes our entries
    if uid is not None and st.st_uid != uid:
        return f"{name} is not owned by you (owner uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"{name} is writable by group or others (mode {st.st_mode & 0o7777:o})"
    return None


def _writable_by_others(entry: Path) -> str | None:
    """Why someone other than the current user could have written the entry, or None."""
    try:
        for path in [entry, *entry.rglob("*")]:
            name = "the entry" if path == entry else path.relative_to(entry).as_posix()
            if path.is_symlink():
                return f"{name} is a symbolic link"
            why = others_may_write(path.stat(), name)
            if why:
                return why
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def _inside(name: str) -> bool:
    return not Path(name).is_absolute() and ".." not in Path(name).parts


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def load_gguf(spec: ModelSpec, path: Path, kw: dict, root: Path, say=to_stderr):
    """(model, tokenizer) of a GGUF file: from its entry under `root` when that is valid, else
    dequantized from the file and kept in a new entry for the next load."""
    # resolve() and fetch() hash the file already; a spec made by hand costs one more hash
    key = key_of(spec.sha256 or sha256_of(path), kw["dtype"])
    entry = entry_dir(root, key)
    why = problem(entry, key)
    if why is None:
        say(f"loading {spec.name} from the load cache {entry} (dequantized from {path.name} "
            "by an earlier load)")
        try:
            return from_entry(entry, kw)
        except Exception as exc:  # noqa: BLE001  any failure to load: the entry is not trusted
            why = f"it fails to load ({type(exc).__name__}: {exc})"
    say(f"load cache: no entry for {spec.name} yet; keeping one after this load" if why == NO_ENTRY
        else f"load cache: not using {entry} ({why}); rebuilding it from {path.name}")
    model, tok = from_gguf(spec, path, kw, say)
    keep(model, tok, key, entry, kw, say)
    return model, tok


def from_gguf(spec: ModelSpec, path: Path, kw: dict, say):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"loading {spec.name} from {path.name} ({path.stat().st_size / 1e6:,.0f} MB GGUF, "
        f"dequantized to {kw['dtype']})")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
    return model, tok


def from_entry(entry: Path, kw: dict):
    """(model, tokenizer) of an entry, the tokenizer loaded the way its manifest says."""
    recipe = json.loads((entry / MANIFEST).read_text())["tokenizer"]
    return _load_model(entry, kw), _load_tokenizer(entry / TOKENIZER, recipe)


def _load_model(folder: Path, kw: dict):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                 use_safetensors=True, **kw)
    with torch.no_grad():  # out of the mapping (see the module comment); tied weights stay tied
        for p in model.parameters():
            p.data = p.data.clone()
        for module in model.modules():
            for name, b in module.named_buffers(recurse=False):
                if b is not None:
                    module._buffers[name] = b.clone()
    return model


def _load_tokenizer(folder: Path, recipe: dict):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    extra = dict(recipe["flags"])
    if recipe["saved_backend"]:
        extra["tokenizer_object"] = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)


def _recipes(tok) -> list[dict]:
    """Ways to load the saved tokenizer as the GGUF loader built it, fastest first. The flags
    are passed as the GGUF loader passed them (save_pretrained drops them); a class that builds
    its backend from the vocabulary (Qwen2's adds an NFC normalizer) is handed the saved one."""
    flags = {k: tok.init_kwargs[k] for k in ("add_bos_token", "add_eos_token")
             if k in tok.init_kwargs}
    return [{"flags": flags, "saved_backend": False}, {"flags": flags, "saved_backend": True}]


def keep(model, tok, key: dict, entry: Path, kw: dict, say) -> None:
    """Write, check and publish an entry. A failure costs the next load time, never this load."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name[:16]}.build-"))
        write_entry(model, tok, tmp)
        _same_model(model, _load_model(tmp, kw))
        _seal(tmp, key, _recipe(tok, tmp / TOKENIZER))
        _open_up(tmp)
        _publish(tmp, entry)
        size = sum(f.stat().st_size for f in _files(entry))
        say(f"load cache: kept {entry} ({size / 1e6:,.0f} MB)")
    except Exception as exc:  # noqa: BLE001  a full disk, a model that cannot round-trip...
        say(f"load cache: could not keep an entry ({type(exc).__name__}: {exc}); the next load "
            "dequantizes the GGUF again")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _recipe(tok, folder: Path) -> dict:
    """The first recipe that loads a tokenizer identical to `tok`."""
    wanted = _tokenizer_facts(tok)
    for recipe in _recipes(tok):
        try:
            if _tokenizer_facts(_load_tokenizer(folder, recipe)) == wanted:
                return recipe
        except Exception:  # noqa: BLE001, S112  a recipe this tokenizer cannot take
            continue
    raise ValueError("tokenizers differ after the round trip")


def write_entry(model, tok, folder: Path) -> None:
    """An entry's files (weights, config, tokenizer) into folder; public as a test's seam."""
    from safetensors.torch import save_file

    save_file(untied(model), folder / WEIGHTS, metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # else from_pretrained would expect a GGUF
        del config.quantization_config
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tok.save_pretrained(folder / TOKENIZER)


def _seal(folder: Path, key: dict, recipe: dict) -> None:
    """Write the manifest, last: the key, how to load the tokenizer, the files' checksums."""
    files = {f.relative_to(folder).as_posix(): sha256_of(f) for f in _files(folder)}
    manifest = {"key": key, "tokenizer": recipe, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _open_up(folder: Path) -> None:
    """Let whoever may read the folder holding the entry read it too (mkdtemp and safetensors
    make owner-only files), never write it: at most 0755 folders and 0644 files, even in a
    world-writable folder, since an entry others could write is not used (module comment)."""
    mode = (folder.parent.stat().st_mode & 0o755) | 0o700
    for path in folder.rglob("*"):
        os.chmod(path, mode if path.is_dir() else mode & 0o644)
    os.chmod(folder, mode)


def untied(model) -> dict:
    """The state dict without the duplicates of tied weights (safetensors refuses tensors that
    share memory; from_pretrained ties them back)."""
    state = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    drop = {name for group in _shared(state) for name in group if name in tied}
    return {n: t.detach().to("cpu").contiguous() for n, t in state.items() if n not in drop}


def _shared(tensors: dict) -> list[list[str]]:
    """Groups of names of the same tensor (same memory, shape and strides)."""
    owners: dict[tuple, list[str]] = {}
    for name, t in tensors.items():
        owners.setdefault((t.device, t.data_ptr(), t.shape, t.stride()), []).append(name)
    return sorted(sorted(group) for group in owners.values() if len(group) > 1)


def _tensors(model) -> dict:
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def _config(model) -> dict:
    facts = {k: v for k, v in model.config.to_dict().items() if k not in UNCOMPARED}
    return {**facts, "attention": getattr(model.config, "_attn_implementation", None)}


def _tokenizer_facts(tok) -> tuple:
    backend = getattr(tok, "backend_tokenizer", None)
    return (type(tok), backend.to_str() if backend is not None else tok.get_vocab(),
            tok.chat_template, tok.all_special_tokens, tok.all_special_ids, tok.bos_token_id,
            tok.eos_token_id, tok.pad_token_id, getattr(tok, "add_bos_token", None),
            getattr(tok, "add_eos_token", None), tok.padding_side, tok.model_max_length,
            tok.clean_up_tokenization_spaces, tok(SAMPLE)["input_ids"],
            tok.decode(tok(SAMPLE)["input_ids"]))


def _same_model(model, model2) -> None:
    a, b = _tensors(model), _tensors(model2)
    if a.keys() != b.keys():
        raise ValueError(f"tensors differ in name: {sorted(a.keys() ^ b.keys())[:5]}")
    for name, t in a.items():
        if t.dtype != b[name].dtype or not torch.equal(t, b[name].to(t.device)):
            raise ValueError(f"{name} differs after the round trip")
    if _shared(a) != _shared(b):
        raise ValueError(f"tied weights differ: {_shared(a)} vs {_shared(b)}")
    if _config(model) != _config(model2):
        raise ValueError("configs differ after the round trip")


def _same_tokenizer(tok, tok2) -> None:
    if _tokenizer_facts(tok) != _tokenizer_facts(tok2):
        raise ValueError("tokenizers differ after the round trip")


def check_same(model, tok, model2, tok2) -> None:
    """Raise ValueError unless (model2, tok2) compute exactly what (model, tok) compute."""
    _same_model(model, model2)
    _same_tokenizer(tok, tok2)


def _publish(tmp: Path, entry: Path) -> None:
    """Move a checked entry into place. An older one is moved aside first (a folder cannot
    replace a non-empty one): readers see the old entry, none, or the new one, never a mix."""
    stale = None
    if entry.exists():
        stale = entry.with_name(f".{entry.name[:16]}.stale-{os.getpid()}-{tmp.name[-8:]}")
        try:
            os.replace(entry, stale)
        except FileNotFoundError:  # another process moved it aside meanwhile
            stale = None
    try:
        os.replace(tmp, entry)
    except OSError:
        if not entry.is_dir():  # else another process published its entry meanwhile
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
