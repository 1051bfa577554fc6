"""The files lac owns in a report folder, and writing a report set as a whole."""
# lac lists what it wrote in the folder's manifest and deletes or replaces only those files; a
# file it would write that exists and is not in the manifest is an error at start (unless
# --lac-reports-overwrite). A set is written into a staging folder beside the target and moved
# into place only when every file of it was written: a failure leaves the previous set intact.
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import LacError, UsageError

MANIFEST = ".lac-manifest.json"


def owned(out: Path) -> set[str]:
    path = Path(out) / MANIFEST
    return set(json.loads(path.read_text())["files"]) if path.exists() else set()


def check(out: Path, names, overwrite: bool = False) -> None:
    """Refuse, before any work, to replace a file lac did not write."""
    mine = owned(out)
    for name in names:
        if (Path(out) / name).exists() and name not in mine and not overwrite:
            raise UsageError(f"{Path(out) / name} exists and lac did not write it (it is not in "
                             f"{MANIFEST}); move it, pick another --lac-reports DIR, or pass "
                             "--lac-reports-overwrite to replace it")


def publish(out: Path, writers: dict, replaces: tuple[str, ...] = ()) -> None:
    """Write every file (name -> writer(path)) into a staging folder, then move them into `out`;
    owned files matching a prefix in `replaces` that this set does not rewrite are removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".lac-staging-"))
    try:
        for name, write in writers.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            write(staging / name)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LacError(f"writing the report set into {out} failed ({type(exc).__name__}: {exc}); "
                       "the previous report set is left as it was") from exc
    mine = owned(out)
    stale = {n for n in mine if n.startswith(replaces) and n not in writers}
    for name in stale:
        (out / name).unlink(missing_ok=True)
    for name in writers:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = out / f".{MANIFEST}.tmp"
    manifest.write_text(json.dumps({"files": sorted((mine - stale) | set(writers))}, indent=1))
    os.replace(manifest, out / MANIFEST)
