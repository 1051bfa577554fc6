"""The load cache of GGUF models: a cached load computes exactly what a GGUF load computes, and a
damaged entry is rebuilt, never used."""
import copy
import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from lac_core import models
from lac_core.engine.forward import Engine
from lac_core.protocol.experiments import sweep
from lac_core.protocol.grids import resolve_grid
from lac_core.models import loadcache
from lac_core.models.registry import ModelSpec
from lac_core.protocol.prompts import render
from lac_core.run.settings import Settings
from lac_core.models.tiny import ARCHITECTURES, tiny_model, tiny_tokenizer

SMOL = "smollm2-135m-instruct"
KW = {"dtype": torch.float32, "attn_implementation": "eager"}
MESSAGE = [{"role": "user", "content": "As a pirate, summarise: the tide is out.\nBe brief."}]
TEXTS = ["The capital of France is", "As a pirate, do Y.\n\ttabs, café, 123 <|im_start|>"]
FAKE = ModelSpec("fake", "gguf", 8, sha256="f" * 64)
Q8 = gguf.GGMLQuantizationType.Q8_0


def write_gguf(path: Path, d=64, ff=128, heads=4, kv=2, layers=2) -> Path:
    """A tiny Llama GGUF (Q8_0 matrices, the tiny Llama's BPE tokenizer): the real GGUF loader
    dequantizes it in a fraction of a second."""
    tok = tiny_tokenizer("llama")
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {a["content"] for a in state["added_tokens"]}
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("context_length", 128), ("embedding_length", d), ("block_count", layers),
                       ("feed_forward_length", ff), ("head_count", heads), ("head_count_kv", kv),
                       ("rope_freq_base", 1e4), ("layer_norm_rms_eps", 1e-5),
                       ("tokenizer_model", "gpt2"), ("token_list", tokens),
                       ("token_types", [3 if t in specials else 1 for t in tokens]),
                       ("token_merges", [m if isinstance(m, str) else " ".join(m)
                                         for m in state["model"]["merges"]]),
                       ("bos_token_id", vocab["<s>"]), ("eos_token_id", vocab["</s>"]),
                       ("pad_token_id", vocab["<pad>"]), ("add_bos_token", True),
                       ("chat_template", tok.chat_template)]:
        getattr(w, f"add_{add}")(value)
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (len(tokens), d), "output_norm": (d,), "output": (len(tokens), d)}
    for i in range(layers):
        shapes.update({f"blk.{i}.{n}": s for n, s in [
            ("attn_norm", (d,)), ("ffn_norm", (d,)), ("attn_q", (d, d)), ("attn_output", (d, d)),
            ("attn_k", (kv * d // heads, d)), ("attn_v", (kv * d // heads, d)),
            ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))]})
    for name, shape in shapes.items():
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(f"{name}.weight", a)
        else:
            w.add_tensor(f"{name}.weight", gguf.quants.quantize(a, Q8), raw_dtype=Q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tied_gemma3():
    tok = tiny_tokenizer("gemma3")
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, tie_word_embeddings=True,
                              attn_implementation="eager")
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval(), tok


def _tiny(arch):
    return _tied_gemma3() if arch == "gemma3-tied" else (tiny_model(arch), tiny_tokenizer(arch))


def _logits(model, tok, text=TEXTS[0]):
    with torch.inference_mode():
        return model(torch.tensor([tok(text)["input_ids"]])).logits


def _assert_identical(a, tok_a, b, tok_b):
    """Every parameter and buffer bit for bit, tied weights, one forward, the tokenizer."""
    loadcache.check_same(a, tok_a, b, tok_b)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert torch.equal(_logits(a, tok_a), _logits(b, tok_b))
    tied = a.get_output_embeddings().weight is a.get_input_embeddings().weight
    assert tied == (b.get_output_embeddings().weight is b.get_input_embeddings().weight)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.glob(".*")]


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "gemma3-tied"])
def test_an_entry_rebuilds_the_model_exactly(tmp_path, arch):
    model, tok = _tiny(arch)
    key = loadcache.key_of(FAKE.sha256, torch.float32)
    entry = loadcache.entry_dir(tmp_path, key)
    said = []
    loadcache.keep(model, tok, key, entry, KW, said.append)
    assert "kept" in said[-1] and loadcache.problem(entry, key) is None
    cached = loadcache.from_entry(entry, KW)
    _assert_identical(model, tok, *cached)
    assert not _leftovers(tmp_path)
    with safe_open(entry / loadcache.WEIGHTS, "pt") as f:  # tied weights: stored once, tied back
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names
    assert ("lm_head.weight" in names) == (arch != "gemma3-tied")
    assert (cached[0].lm_head.weight is cached[0].model.embed_tokens.weight) == (
        arch == "gemma3-tied")


def test_a_tokenizer_class_that_rebuilds_its_backend_is_handed_the_saved_one(tmp_path):
    """As the GGUF loader builds Qwen2's: its class around a backend without the NFC normalizer
    the class would build from the vocabulary."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(tokenizer_object=copy.deepcopy(tiny_tokenizer("qwen2").backend_tokenizer),
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos_token=False)
    key = loadcache.key_of(FAKE.sha256, torch.float32)
    entry = loadcache.entry_dir(tmp_path, key)
    said = []
    loadcache.keep(tiny_model("qwen2"), tok, key, entry, KW, said.append)
    assert "kept" in said[-1]
    assert json.loads((entry / loadcache.MANIFEST).read_text())["tokenizer"]["saved_backend"]
    cached = loadcache.from_entry(entry, KW)[1]
    assert type(cached) is Qwen2Tokenizer and cached.backend_tokenizer.normalizer is None
    decomposed = "cafe\u0301 e\u0301"
    assert cached(decomposed)["input_ids"] == tok(decomposed)["input_ids"]


@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory):
    model, tok = tiny_model("llama"), tiny_tokenizer("llama")
    key = loadcache.key_of(FAKE.sha256, torch.float32)
    entry = loadcache.entry_dir(tmp_path_factory.mktemp("tiny-entry"), key)
    loadcache.keep(model, tok, key, entry, KW, print)
    return entry, key


def _truncate(entry):
    weights = entry / loadcache.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _edit_manifest(entry, edit):
    manifest = json.loads((entry / loadcache.MANIFEST).read_text())
    edit(manifest)
    (entry / loadcache.MANIFEST).write_text(json.dumps(manifest))


DAMAGE = {  # how an entry is damaged -> what problem() says
    "no manifest": (lambda e: (e / loadcache.MANIFEST).unlink(), "manifest missing"),
    "unreadable manifest": (lambda e: (e / loadcache.MANIFEST).write_text("{"), "unreadable"),
    "wrong key": (lambda e: _edit_manifest(e, lambda m: m["key"].update(dtype="bfloat16")),
                  "another key"),
    "older transformers": (lambda e: _edit_manifest(e, lambda m: m["key"].update(
        transformers="4.0.0")), "another key"),
    "truncated weights": (_truncate, "model.safetensors fails its checksum"),
    "flipped byte": (lambda e: (e / "config.json").write_text(
        (e / "config.json").read_text().replace("8", "9", 1)), "config.json fails"),
    "missing tokenizer": (lambda e: (e / "tokenizer" / "tokenizer.json").unlink(),
                          "tokenizer/tokenizer.json fails"),
    "no weights listed": (lambda e: _edit_manifest(e, lambda m: m["files"].pop(
        loadcache.WEIGHTS)), "no weights"),
    "file outside": (lambda e: _edit_manifest(e, lambda m: m["files"].update(
        {"../x": "0"})), "../x fails"),
    "stray file": (lambda e: (e / "tokenizer" / "added_tokens.json").write_text("{}"),
                   "not in the manifest"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_not_valid(tiny_entry, tmp_path, damage):
    entry, key = tiny_entry
    damaged = tmp_path / entry.name
    shutil.copytree(entry, damaged)
    assert loadcache.problem(damaged, key) is None
    harm, expected = DAMAGE[damage]
    harm(damaged)
    assert expected in loadcache.problem(damaged, key)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny GGUF file, and its spec with its sha256 as lac registers one."""
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return ModelSpec("synthetic", "gguf", 2, sha256=models.sha256_of(path)), path


@pytest.fixture
def load(monkeypatch, synthetic):
    """load_gguf of the synthetic GGUF into a cache root; load.calls counts the GGUF loads."""
    spec, path = synthetic
    calls, real = [], loadcache.from_gguf
    monkeypatch.setattr(loadcache, "from_gguf", lambda *a: calls.append(a[1]) or real(*a))

    def load(root, said=None, spec=spec):
        return loadcache.load_gguf(spec, path, KW, root, [].append if said is None else said.append)

    load.calls, load.entry = calls, lambda root: loadcache.entry_dir(root, load.key)
    load.key = loadcache.key_of(spec.sha256, torch.float32)
    return load


def test_the_second_load_comes_from_the_cache_bit_identical(tmp_path, load):
    said = []
    first = load(tmp_path, said)
    assert len(load.calls) == 1 and "no entry" in said[0] and "kept" in said[-1]
    assert any("GGUF, dequantized" in m for m in said)
    said.clear()
    second = load(tmp_path, said)
    assert len(load.calls) == 1 and said == [said[0]] and "from the load cache" in said[0]
    _assert_identical(*first, *second)
    assert not _leftovers(tmp_path)


def test_a_gguf_without_a_registered_sha256_is_keyed_by_its_own(tmp_path, load, synthetic):
    anonymous = ModelSpec("synthetic", "gguf", 2)
    first = load(tmp_path, spec=anonymous)
    assert [p.name for p in tmp_path.iterdir()] == [load.entry(tmp_path).name]
    said = []
    _assert_identical(*first, *load(tmp_path, said, spec=anonymous))
    assert len(load.calls) == 1 and "from the load cache" in said[0]


def test_a_cached_model_owns_aligned_memory(tmp_path, load):
    """Out of the file's mapping: mapped tensors sit at offsets CPU kernels treat as unaligned
    and gave other window KLs (~4e-7 on SmolLM2) from equal weights."""
    load(tmp_path)
    model = load(tmp_path)[0]
    assert len(load.calls) == 1
    assert all(t.data_ptr() % 64 == 0 for t in (*model.parameters(), *model.buffers()))


def test_editing_a_cached_model_never_writes_to_the_cache(tmp_path, load):
    reference = load(tmp_path)
    weights = load.entry(tmp_path) / loadcache.WEIGHTS
    digest = models.sha256_of(weights)
    model = load(tmp_path)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-3.0).add_(1.0)
    assert models.sha256_of(weights) == digest
    assert loadcache.problem(load.entry(tmp_path), load.key) is None
    _assert_identical(*reference, *load(tmp_path))
    assert len(load.calls) == 1


@pytest.mark.parametrize("damage", ["truncated weights", "wrong key", "no manifest", "stray file"])
def test_a_damaged_entry_is_rebuilt_and_replaced(tmp_path, load, damage):
    reference = load(tmp_path)
    DAMAGE[damage][0](load.entry(tmp_path))
    said = []
    rebuilt = load(tmp_path, said)
    assert len(load.calls) == 2 and "not using" in said[0] and "kept" in said[-1]
    assert loadcache.problem(load.entry(tmp_path), load.key) is None
    assert not _leftovers(tmp_path)
    _assert_identical(*reference, *rebuilt)
    _assert_identical(*reference, *load(tmp_path))
    assert len(load.calls) == 2


def test_an_entry_that_fails_to_load_is_rebuilt(tmp_path, load):
    """Checksums that match files transformers cannot load: the load raising is what tells."""
    reference = load(tmp_path)
    entry = load.entry(tmp_path)
    (entry / "config.json").write_text("not json")
    _edit_manifest(entry, lambda m: m["files"].update(
        {"config.json": models.sha256_of(entry / "config.json")}))
    said = []
    rebuilt = load(tmp_path, said)
    assert "from the load cache" in said[0] and "fails to load" in said[1] and "kept" in said[-1]
    assert len(load.calls) == 2
    _assert_identical(*reference, *rebuilt)


def test_an_entry_that_cannot_be_kept_costs_nothing_but_time(tmp_path, load, monkeypatch):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loadcache, "write_entry", disk_full)
    said = []
    model, tok = load(tmp_path, said)
    assert "could not keep" in said[-1] and "No space left" in said[-1]
    assert not list(tmp_path.iterdir())
    assert _logits(model, tok).isfinite().all()


def test_an_entry_differing_from_its_model_is_not_kept(tmp_path, load, monkeypatch):
    """The round trip is checked before an entry is published: here the weights drift."""
    untied = loadcache.untied

    def drifted(model):
        state = untied(model)
        state["model.norm.weight"] = state["model.norm.weight"] + 1e-3
        return state

    monkeypatch.setattr(loadcache, "untied", drifted)
    said = []
    load(tmp_path, said)
    assert "could not keep" in said[-1] and "model.norm.weight differs" in said[-1]
    assert not list(tmp_path.iterdir())


# SmolLM2 from its real GGUF, in a cache of its own (the GGUF linked in from the lac cache)


def _smol_settings(root: Path) -> Settings:
    spec, real = models.resolve(SMOL), Settings()
    gguf = models.fetch(spec, real.cache_dir, offline=real.offline)
    link = models.gguf_path(spec, root)
    link.parent.mkdir(parents=True)
    link.symlink_to(gguf)
    return Settings(cache_dir=root)


@pytest.fixture(scope="module")
def smol_loads(tmp_path_factory):
    """(GGUF load, cached load, what each said, settings), in a fresh cache."""
    settings = _smol_settings(tmp_path_factory.mktemp("smol-cache"))
    said_gguf, said_cached = [], []
    gguf = models.load(SMOL, settings, say=said_gguf.append)
    cached = models.load(SMOL, settings, say=said_cached.append)
    return gguf, cached, said_gguf, said_cached, settings


@pytest.mark.slow
def test_smollm2_second_load_comes_from_the_cache_bit_identical(smol_loads):
    gguf, cached, said_gguf, said_cached, settings = smol_loads
    assert any("GGUF, dequantized" in m for m in said_gguf) and "kept" in said_gguf[-1]
    assert "from the load cache" in said_cached[-1]
    assert not any("GGUF, dequantized" in m for m in said_cached)
    assert not _leftovers(settings.cache_dir / "loaded")
    _assert_identical(gguf.model, gguf.tokenizer, cached.model, cached.tokenizer)
    assert cached.model.lm_head.weight is cached.model.model.embed_tokens.weight
    ids = torch.tensor([list(render(gguf.tokenizer, MESSAGE[0]["content"]).ids)])
    with torch.inference_mode():
        assert torch.equal(gguf.model(ids).logits, cached.model(ids).logits)
    assert gguf.provenance == cached.provenance
    short = resolve_grid("short")  # batched, padded forwards: the sweep's numbers, bit for bit
    a = sweep(Engine(gguf), short, layers=(8, 16), probes=("p_last", "g1"))
    b = sweep(Engine(cached), short, layers=(8, 16), probes=("p_last", "g1"))
    assert np.array_equal(a.kl_add, b.kl_add) and np.array_equal(a.kl_null, b.kl_null)
    gguf, cached = gguf.tokenizer, cached.tokenizer
    for text in TEXTS:
        assert gguf(text)["input_ids"] == cached(text)["input_ids"]
        assert render(gguf, text) == render(cached, text)
    for header in (False, True):
        rendered = [tok.apply_chat_template(MESSAGE, tokenize=False, add_generation_prompt=header)
                    for tok in (gguf, cached)]
        assert rendered[0] == rendered[1] and "<|im_start|>user" in rendered[0]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated weights", "wrong key"])
def test_smollm2_damaged_entry_is_rebuilt(smol_loads, tmp_path, damage):
    gguf, settings = smol_loads[0], smol_loads[4]
    mine = _smol_settings(tmp_path)
    entry = next((settings.cache_dir / "loaded").iterdir())
    shutil.copytree(entry, mine.cache_dir / "loaded" / entry.name)
    DAMAGE[damage][0](mine.cache_dir / "loaded" / entry.name)
    said = []
    rebuilt = models.load(SMOL, mine, say=said.append)
    assert any("not using" in m for m in said) and "kept" in said[-1]
    _assert_identical(gguf.model, gguf.tokenizer, rebuilt.model, rebuilt.tokenizer)
    said.clear()
    again = models.load(SMOL, mine, say=said.append)
    assert "from the load cache" in said[-1]
    _assert_identical(gguf.model, gguf.tokenizer, again.model, again.tokenizer)


# Who may have written an entry: in a shared cache, only its owner, and nobody else can write it


def _modes(entry: Path) -> dict:
    return {p.relative_to(entry.parent).as_posix(): p.stat().st_mode & 0o7777
            for p in [entry, *entry.rglob("*")]}


@pytest.mark.parametrize("parent, dirs, files", [(0o1777, 0o755, 0o644), (0o777, 0o755, 0o644),
                                                 (0o775, 0o755, 0o644), (0o750, 0o750, 0o640),
                                                 (0o700, 0o700, 0o600)],
                         ids=["1777", "777", "775", "750", "700"])
def test_an_entry_is_never_writable_by_others_whatever_its_folder(tmp_path, parent, dirs, files):
    """At most readable by those who can read the folder holding it; writable by its owner only."""
    root = tmp_path / "loaded"
    root.mkdir()
    root.chmod(parent)
    key = loadcache.key_of(FAKE.sha256, torch.float32)
    entry = loadcache.entry_dir(root, key)
    said = []
    loadcache.keep(tiny_model("llama"), tiny_tokenizer("llama"), key, entry, KW, said.append)
    assert "kept" in said[-1]
    modes = _modes(entry)
    assert modes[entry.name] == dirs and modes[f"{entry.name}/{loadcache.TOKENIZER}"] == dirs
    assert {m for n, m in modes.items() if (root / n).is_file()} == {files}, modes
    assert loadcache.problem(entry, key) is None


def _plant(entry: Path) -> None:
    """Another user's rewrite of the weights, with the manifest's sha256 updated to match."""
    from safetensors.torch import load_file, save_file

    weights = entry / loadcache.WEIGHTS
    state = load_file(weights)
    state["model.norm.weight"] = state["model.norm.weight"] + 1.0
    save_file(state, weights, metadata={"format": "pt"})
    digest = models.sha256_of(weights)
    _edit_manifest(entry, lambda m: m["files"].update({loadcache.WEIGHTS: digest}))


@pytest.mark.parametrize("where, mode, why", [
    ("weights", 0o666, "model.safetensors is writable by group or others"),
    ("weights", 0o646, "model.safetensors is writable by group or others"),
    ("folder", 0o777, "is writable by group or others"),
    ("tokenizer folder", 0o775, "tokenizer is writable by group or others"),
], ids=["weights 0666", "weights 0646", "folder 0777", "tokenizer folder 0775"])
def test_an_entry_others_could_write_is_rebuilt_not_used(tmp_path, load, where, mode, why):
    reference = load(tmp_path)
    entry = load.entry(tmp_path)
    _plant(entry)
    target = {"weights": entry / loadcache.WEIGHTS, "folder": entry,
              "tokenizer folder": entry / loadcache.TOKENIZER}[where]
    target.chmod(mode)
    assert why in loadcache.problem(entry, load.key)
    said = []
    rebuilt = load(tmp_path, said)
    assert "not using" in said[0] and why in said[0] and "kept" in said[-1]
    assert len(load.calls) == 2
    _assert_identical(*reference, *rebuilt)  # the planted weights were not loaded
    assert loadcache.problem(entry, load.key) is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("where", ["weights", "manifest", "folder"])
def test_an_entry_of_another_user_is_rebuilt_not_used(tmp_path, load, where):
    reference = load(tmp_path)
    entry = load.entry(tmp_path)
    _plant(entry)
    target = {"weights": entry / loadcache.WEIGHTS, "manifest": entry / loadcache.MANIFEST,
              "folder": entry}[where]
    os.chown(target, 4242, -1)
    assert "not owned by you" in loadcache.problem(entry, load.key)
    said = []
    _assert_identical(*reference, *load(tmp_path, said))
    assert "not using" in said[0] and "not owned by you" in said[0] and len(load.calls) == 2
