"""Self-test fixtures: the three tiny architectures (fast) and SmolLM2 (real weights, marked slow)."""
import pytest

from lac_core.models import load
from lac_core.tiny import ARCHITECTURES

_LOADED = {}


def _get(name):
    if name not in _LOADED:
        _LOADED[name] = load(name)
    return _LOADED[name]


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request):
    return _get(f"tiny-{request.param}")


@pytest.fixture(scope="session", params=[*(f"tiny-{a}" for a in ARCHITECTURES),
                                        pytest.param("smollm2-135m-instruct", marks=pytest.mark.slow)])
def any_lm(request):
    """Each tiny architecture, and SmolLM2 with real weights."""
    return _get(request.param)


@pytest.fixture(scope="session")
def smollm2():
    return _get("smollm2-135m-instruct")
