"""Where the project's data lives, resolved once."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
REPORTS = ROOT / "reports"


def cache_dir() -> Path:
    """The weights cache: $LAC_CACHE_DIR, else ~/.cache/lac."""
    return Path(os.environ.get("LAC_CACHE_DIR") or Path.home() / ".cache" / "lac")
