"""The rules between lac_core's wings are checked by import-linter (pyproject.toml's contracts),
and they can fail: an import planted against one, in a copy of lac_core, breaks it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lac_core.paths import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports on the lac_core found in `tree`, with this checkout's contracts."""
    return subprocess.run([str(LINT), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(tree)})


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(ROOT / "lac_core", tmp_path / "lac_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert out.stdout.count("KEPT") == 5


@pytest.mark.parametrize("where, line, broken", [
    ("verdicts/rules.py", "import torch", "verdicts and the report import no torch"),
    ("engine/hooks.py", "from ..protocol import grids", "the engine knows no paper"),
    ("protocol/grids.py", "from ..run import settings", "wings are layered"),
    ("suite/plugin.py", "import numpy", "the pytest11 plugin and what it loads"),
    ("report/tables.py", "from ..run import session", "the report is rendered from results.json"),
])
def test_a_planted_import_breaks_its_contract(copy, where, line, broken):
    path = copy / "lac_core" / where
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    out = _lint(copy)
    assert out.returncode == 1 and f"{broken}" in out.stdout
    assert any(broken in x and "BROKEN" in x for x in out.stdout.splitlines()), out.stdout[-2000:]


def test_importing_lac_core_loads_nothing_heavy():
    """The public face loads its names on first use: importing it pulls in no torch."""
    code = ("import sys, lac_core; heavy = [m for m in ('torch', 'transformers', 'numpy', "
            "'matplotlib') if m in sys.modules]; print(heavy); assert not heavy; "
            "assert lac_core.Claim.__name__ == 'Claim' and 'numpy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
