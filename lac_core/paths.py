"""Where lac's own files live: the checkout, or site-packages when installed from a wheel."""
from __future__ import annotations

from pathlib import Path

CORE = Path(__file__).resolve().parent  # lac_core/
ROOT = CORE.parent  # the checkout (or site-packages when installed)
_SHIPPED = CORE / "fixtures"  # where an installed wheel keeps them
FIXTURES = _SHIPPED if _SHIPPED.is_dir() else ROOT / "fixtures"
EXPECTED = FIXTURES / "expected"
GRID_DIR = FIXTURES / "grids"
CLAIMS_FILE = FIXTURES / "claims.yaml"
# The tiny random models' families (models/tiny.py builds one of each): named here, where nothing
# heavy is imported, so the self-tests' conftest can parametrize over them without torch.
TINY_ARCHITECTURES = ("llama", "qwen2", "gemma2", "gemma3")
