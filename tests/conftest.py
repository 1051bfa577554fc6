"""Self-test fixtures: the three tiny architectures (fast) and SmolLM2 (real weights, marked slow),
loaded once through the plugin's shared `lac_models` fixture."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lac_core.paths import ROOT
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


def installed_wheel(tmp: Path) -> Path:
    """The wheel of this checkout, built into tmp/dist and installed (without dependencies: they
    are this venv's) into tmp/site, which comes first on sys.path with PYTHONPATH=tmp/site: a
    user's lac with no checkout in sight. Checked: that is the lac_core Python then imports."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp / "dist")], check=True)
    wheel = next((tmp / "dist").glob("pytest_lac-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True)
    where = subprocess.run([sys.executable, "-c", "import lac_core; print(lac_core.__file__)"],
                           cwd=tmp, env={**os.environ, "PYTHONPATH": str(tmp / "site")},
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp / "site")), where  # the wheel's lac, not the checkout's
    return tmp / "site"
