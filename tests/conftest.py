"""Self-test fixtures: the three tiny architectures (fast) and SmolLM2 (real weights, marked slow),
loaded once through the plugin's shared `lac_models` fixture."""
import pytest

from lac_core.paths import TINY_ARCHITECTURES as ARCHITECTURES  # light: pytest --help stays fast


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request, lac_models):
    return lac_models(f"tiny-{request.param}")


@pytest.fixture(scope="session", params=[*(f"tiny-{a}" for a in ARCHITECTURES),
                                        pytest.param("smollm2-135m-instruct", marks=pytest.mark.slow)])
def any_lm(request, lac_models):
    """Each tiny architecture, and SmolLM2 with real weights."""
    return lac_models(request.param)


@pytest.fixture(scope="session")
def smollm2(lac_models):
    return lac_models("smollm2-135m-instruct")


def hook_count(model) -> int:
    """Hooks of any kind registered anywhere in the model (0 after every lac call)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
