"""Experiment results kept between runs: an interrupted run, or a second one with another -k,
computes only what is missing."""
# An entry is <directory>/<sha256 of its key>.pkl holding {"key", "run_id", "result"}, written to
# a temporary file and moved into place. The key is everything that can change the numbers: the
# model identity (weights hash included), the grid's hash, the experiment and its parameters,
# dtype, device, plan, chat template, layers, probes, token budget, marker stems, swap pairs, the
# sha256 of lac_core's own source files and the torch/transformers/numpy versions. An entry that
# fails to load or holds another key is recomputed and replaced, never used. Entries are
# lac's own files (pickles of lac_core.results records): only lac reads them.
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

RESUMABLE = ("sweep", "markers", "host", "steering")
CORE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_sha256() -> str:
    """The sha256 of lac_core's Python sources: any code change starts a new key."""
    h = hashlib.sha256()
    for path in sorted(CORE.rglob("*.py")):
        h.update(path.relative_to(CORE).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def versions() -> dict:
    import numpy
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "lac_code": code_sha256()}


@dataclass
class ResultCache:
    """get/put experiment results by key; `directory` None turns it off (--lac-no-cache)."""

    directory: Path | None
    used: dict = field(default_factory=dict)  # (model, grid, kind) -> run id it came from
    notes: list = field(default_factory=list)  # entries not used, and why

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return Path(self.directory) / f"{digest}.pkl"

    def get(self, name: tuple, key: dict):
        """The cached result of `key`, or None (no entry, or one that is damaged or foreign)."""
        if self.directory is None or name[2] not in RESUMABLE:
            return None
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with path.open("rb") as f:
                entry = pickle.load(f)
            if entry["key"] != json.loads(json.dumps(key, sort_keys=True, default=str)):
                raise ValueError("the entry holds another key")
        except Exception as exc:  # noqa: BLE001  any damage: recompute and replace
            self.notes.append(f"{' / '.join(name)}: resume entry {path.name} not used "
                              f"({type(exc).__name__}: {exc}); recomputed")
            return None
        self.used[name] = entry["run_id"]
        return entry["result"]

    def put(self, name: tuple, key: dict, result, run_id: str) -> None:
        if self.directory is None or name[2] not in RESUMABLE:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": json.loads(json.dumps(key, sort_keys=True, default=str)),
                 "run_id": run_id, "result": result}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
