"""The rules between lac_core's wings are checked by import-linter (pyproject.toml's contracts),
and they can fail: an import planted against one, in a copy of lac_core, breaks it."""
import os
import shutil
import subprocess
import sys
import typing
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


def _public_face_row() -> str:
    """docs/architecture.md's row of lac_core/__init__.py: the list of public names."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if line.startswith("| - | `__init__.py` |"))


def _classes(hint) -> set:
    """The classes a type hint names (inside unions, lists, tuples, dicts)."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return {hint}
    return {c for arg in typing.get_args(hint) for c in _classes(arg)}


def test_the_public_face_is_documented():
    """Every name `lac_core` exports is named in docs/architecture.md's list of public names."""
    import lac_core

    row = _public_face_row()
    assert not [n for n in lac_core.__all__ if f"`{n}`" not in row]


def test_what_the_public_face_hands_out_is_public():
    """A lac_core class a public function takes or returns is public too: exported by lac_core
    and named in docs/architecture.md (issue 37.6: load_model, and so a claim test's `lm`, handed
    out a LoadedModel that was neither, and the protocol and run reached through it to
    `lm.spec.name`)."""
    import inspect

    import lac_core

    handed = {}
    for name in lac_core.__all__:
        obj = getattr(lac_core, name)
        if inspect.isfunction(obj):
            for arg, hint in typing.get_type_hints(obj).items():
                handed.update({(name, arg, c.__name__): c for c in _classes(hint)
                               if c.__module__.startswith("lac_core.")})
    row = _public_face_row()
    hidden = [k for k, c in handed.items()
              if getattr(lac_core, c.__name__, None) is not c or f"`{c.__name__}`" not in row]
    assert not hidden, f"public functions hand out classes that are not public: {hidden}"
    from lac_core.run import compute

    assert typing.get_type_hints(compute.load_model)["return"] is lac_core.LoadedModel
