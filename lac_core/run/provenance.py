"""What tells two runs apart: the code (lac version and the sha256 of its source), the rules
(sha256 of claims.yaml), the grids' hashes and the library versions. The git commit and whether
the checkout was dirty are kept as information only: an rsync'ed copy (no .git) or an installed
wheel of the same source is the same code."""
from __future__ import annotations

import functools
import hashlib
import secrets
import time
import subprocess
from importlib import metadata
from pathlib import Path

from ..errors import LacError
from ..paths import CORE, ROOT

# The distribution lac installs as (pyproject.toml's [project] name): `lac` on PyPI is another
# project, so the installed version is looked up under this name. The import package is lac_core.
DISTRIBUTION = "pytest-lac"


# Kept in the fingerprint as information: two copies of one source differ here and are comparable.
INFORMATION = ("git_commit", "git_dirty")


def source_files(core: Path = CORE) -> dict[str, Path]:
    """lac's Python sources by a name that is the same in a checkout and in an installed wheel:
    every *.py under lac_core/ ("lac_core/run/session.py") and every *.py of the claim modules
    ("claims/test_c1_additive_sufficiency.py"). A wheel installs the claims inside the package
    (lac_core/claims/), a checkout keeps them beside it (claims/); fixtures hold no code (their
    YAML is hashed into claims_sha256 and grids_sha256); __pycache__ is never read."""
    installed = (core / "claims").is_dir()
    claims = core / "claims" if installed else core.parent / "claims"
    out = {}
    for path in core.rglob("*.py"):
        rel = path.relative_to(core)
        if "__pycache__" in rel.parts or rel.parts[0] in ("claims", "fixtures"):
            continue
        out["lac_core/" + rel.as_posix()] = path
    if claims.is_dir():
        for path in claims.rglob("*.py"):
            rel = path.relative_to(claims)
            if "__pycache__" not in rel.parts:
                out["claims/" + rel.as_posix()] = path
    return out


def source_sha256(core: Path | None = None) -> str:
    """The sha256 of a manifest of lac's sources (source_files), one line per file in name order,
    "<sha256 of the file>  <name>" as sha256sum writes it: equal for a clone, an rsync'ed copy
    and an installed wheel of the same source; any byte changed in any of them changes it.
    Without `core`: this process's own lac, hashed once (the code it imported)."""
    if core is None:
        return _own_source_sha256()
    files = source_files(core)
    lines = (f"{hashlib.sha256(files[name].read_bytes()).hexdigest()}  {name}\n"
             for name in sorted(files))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _own_source_sha256() -> str:
    return source_sha256(CORE)


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
    return {"lac": version, "source_sha256": source_sha256(),
            "git_commit": commit, "git_dirty": bool(status) if commit else None,
            "claims_sha256": hashlib.sha256(Path(claims_file).read_bytes()).hexdigest(),
            "grids_sha256": {label: g.sha256 for label, g in grids.items()},
            "thresholds_sha256": {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest()
                                  for f in thresholds_files},
            "torch": str(torch.__version__), "transformers": transformers.__version__,
            "numpy": numpy.__version__}


def same_or_refuse(mine: dict, theirs: dict, where: str) -> None:
    """Results of different provenance are never merged into one report: the same lac version
    and source hash, rules, grids and libraries; the git fields (INFORMATION) may differ."""
    differ = sorted(k for k in {**mine, **theirs}
                    if k not in INFORMATION and mine.get(k) != theirs.get(k))
    if differ:
        raise LacError(f"results from {where} differ in provenance ({', '.join(differ)}: "
                       f"{[mine.get(k) for k in differ]} here, {[theirs.get(k) for k in differ]} "
                       "there); they are not merged into one report")


def new_run_id(started: float) -> str:
    """The start time to the second and six random hex digits: two runs started in the same
    second never share an id (it names a report subfolder and where a cached result came from)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + secrets.token_hex(3)
