"""What tells two runs apart: the code (lac version, git commit, dirty or not), the rules
(sha256 of claims.yaml), the grids' hashes and the library versions."""
from __future__ import annotations

import hashlib
import secrets
import time
import subprocess
from importlib import metadata
from pathlib import Path

from ..errors import LacError
from ..paths import ROOT

# The distribution lac installs as (pyproject.toml's [project] name): `lac` on PyPI is another
# project, so the installed version is looked up under this name. The import package is lac_core.
DISTRIBUTION = "pytest-lac"


def _git(*args: str) -> str | None:
    if not (ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def fingerprint(claims_file: Path, grids: dict, thresholds_files=()) -> dict:
    """The code, rules, grids and libraries a run's numbers depend on; `thresholds_files`: every
    file a claim's thresholds came from (lac's claims.yaml, and users' own), by name."""
    import numpy
    import torch
    import transformers

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "not installed"
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"lac": version, "git_commit": commit, "git_dirty": bool(status) if commit else None,
            "claims_sha256": hashlib.sha256(Path(claims_file).read_bytes()).hexdigest(),
            "grids_sha256": {label: g.sha256 for label, g in grids.items()},
            "thresholds_sha256": {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest()
                                  for f in thresholds_files},
            "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__}


def same_or_refuse(mine: dict, theirs: dict, where: str) -> None:
    """Results of different provenance are never merged into one report."""
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    if differ:
        raise LacError(f"results from {where} differ in provenance ({', '.join(differ)}: "
                       f"{[mine[k] for k in differ]} here, {[theirs.get(k) for k in differ]} "
                       "there); they are not merged into one report")


def new_run_id(started: float) -> str:
    """The start time to the second and six random hex digits: two runs started in the same
    second never share an id (it names a report subfolder and where a cached result came from)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + secrets.token_hex(3)
