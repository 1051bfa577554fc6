"""Experiment results kept between runs: an interrupted run, or a second one with another -k,
computes only what is missing."""
# An entry is <directory>/<sha256 of its key>.npz, written to a temporary file in the same folder
# and moved into place. The key is everything that can change the numbers: the model identity
# (weights hash included), the grid's hash, the experiment and its parameters, dtype, device,
# attention, chat template, token budget, the settings only that experiment reads (plan, layers,
# probes: the sweep; marker stems: markers, steering; swap pairs: steering), the sha256 of
# lac's sources (provenance.source_sha256: lac_core and the claim modules, one hash for a
# checkout and a wheel) and the torch/transformers/numpy versions (Session.result_key).
#
# Entries are data, never code: a file planted under an entry's name must not run anything when
# the next run reads it, so there is no pickle on this path. An entry is an npz archive read with
# np.load(allow_pickle=False): member "meta" is a 0-d unicode array holding JSON text
# {"format", "key", "run_id", "result"}, and each numpy array or scalar of the result is a member
# of its own ("a0", "a1", ...). The JSON is datacodec's (tagged values: "$tuple", "$dict",
# "$float", "$array", "$scalar" and "$record", where only results.RECORDS' records may be named;
# no sets, no enums: CODEC). The round trip is exact (types, dtypes, shapes, NaN, dict order), so
# a resumed run writes the same results.json. Member "digest" is the sha256 of every other member
# (name, dtype, shape and bytes, by name), written with the entry and checked on read: it finds
# damage. It cannot stop tampering (whoever may write an entry may write its digest too), so an
# entry is read only when it is a regular file (never through a link) owned by the user running
# lac and writable by no one else: the load cache's rule, loadcache.others_may_write, checked on
# the file descriptor the entry is then read from. Entries are written so (mkstemp makes them
# 0600). An entry that fails any of this, fails to load in any way, or holds another key is
# noted, recomputed and replaced, never used. Old .pkl entries, and entries of an older FORMAT,
# are never used.
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models.loadcache import others_may_write
from ..verdicts.results import RECORDS
from .datacodec import META, RECORD_CLASSES, Codec
from .provenance import source_sha256

RESUMABLE = tuple(RECORDS)  # every kept experiment; the shared parts (residuals) are not kept
FORMAT = "lac-resume/2"  # 2: the digest member
SUFFIX = ".npz"
DIGEST = "digest"  # with META, the members that are not the result's arrays
CODEC = Codec(RECORD_CLASSES, "cannot keep {} in a resume entry", reserved=(META, DIGEST))


def code_sha256() -> str:
    """lac's source hash (provenance.source_sha256: lac_core and the claim modules, equal for a
    checkout and a wheel): any code change starts a new key."""
    return source_sha256()


def versions() -> dict:
    import numpy
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "lac_code": code_sha256()}


def _canonical(key: dict):
    """The key as it is compared and stored: plain JSON values."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


class UntrustedEntry(ValueError):
    """An entry someone other than lac, run by this user, may have written, or one changed since
    lac wrote it."""


def digest_of(members: dict) -> str:
    """The sha256 of an entry's members (all but the digest): name, dtype, shape and the bytes
    in C order of each, by name. The header fixes each member's length, so no two contents
    share a digest text."""
    h = hashlib.sha256()
    for name in sorted(members):
        arr = members[name]
        header = json.dumps([name, arr.dtype.str, list(arr.shape)])
        h.update(header.encode() + b"\0" + arr.tobytes(order="C"))
    return h.hexdigest()


def _open_own(path: Path):
    """The entry opened for reading, once it is known to be a regular file that only the user
    running lac may have written (checked on the open file: what is read is what was checked)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO planted here does not hang the run
    except OSError as exc:
        if os.path.islink(path):  # ELOOP, with O_NOFOLLOW
            raise UntrustedEntry("the entry is a symbolic link") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        why = others_may_write(st)
        if why:
            raise UntrustedEntry(why)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_entry(path: Path, key: dict) -> tuple:
    """(run id, result) of the entry of `key` at `path`; raises on anything else. np.load with
    allow_pickle=False reads numbers and text only: nothing in the file can run."""
    with _open_own(path) as f:
        npz = np.load(f, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an npz archive")
        with npz:
            meta = npz[META]
            if meta.dtype.kind != "U" or meta.shape != ():
                raise ValueError("member meta is not JSON text")
            entry = json.loads(str(meta[()]))
            if not isinstance(entry, dict) or entry.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} entry")
            members = {m: npz[m] for m in npz.files}  # every array loaded: allow_pickle=False
    if not all(isinstance(a, np.ndarray) for a in members.values()):
        raise ValueError("a member is not an array")
    digest = members.pop(DIGEST, np.array(""))
    if digest.dtype.kind != "U" or digest.shape != () or str(digest[()]) != digest_of(members):
        raise UntrustedEntry("the entry's digest does not match its content (damaged or "
                             "edited since lac wrote it)")
    if entry.get("key") != _canonical(key):
        raise ValueError("the entry holds another key")
    if not isinstance(entry.get("run_id"), str) or "result" not in entry:
        raise ValueError("the entry has no run id or result")
    return entry["run_id"], CODEC.decode(entry["result"], members)


def write_entry(path: Path, key: dict, result, run_id: str) -> None:
    """Write the entry to a temporary file beside `path`, then move it into place atomically;
    the temporary file never stays behind, whatever fails."""
    arrays = {}
    meta = json.dumps({"format": FORMAT, "key": _canonical(key), "run_id": run_id,
                       "result": CODEC.encode(result, arrays)}, allow_nan=False)  # ASCII: no NULs
    members = {META: np.array(meta), **arrays}
    if path.is_dir() and not path.is_symlink():  # not lac's to delete: leave it, keep no entry
        raise IsADirectoryError(f"{path} is a directory lac did not write")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members, **{DIGEST: np.array(digest_of(members))})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class ResultCache:
    """get/put experiment results by key; `directory` None turns it off (--lac-no-cache)."""

    directory: Path | None
    used: dict = field(default_factory=dict)  # (model, grid, kind) -> run id it came from
    notes: list = field(default_factory=list)  # entries not used, and why

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return Path(self.directory) / f"{digest}{SUFFIX}"

    def get(self, name: tuple, key: dict):
        """The cached result of `key`, or None (no entry, or one that is damaged or foreign)."""
        if self.directory is None or name[2] not in RESUMABLE:
            return None
        path = self.path(key)
        if not os.path.lexists(path):
            return None
        try:
            run_id, result = read_entry(path, key)
        except Exception as exc:  # noqa: BLE001  any damage: recompute and replace
            self.notes.append(f"{' / '.join(name)}: resume entry {path.name} not used "
                              f"({type(exc).__name__}: {exc}); recomputed")
            return None
        self.used[name] = run_id
        return result

    def put(self, name: tuple, key: dict, result, run_id: str) -> None:
        """Keep `result` under `key`, replacing whatever is there (a bad entry included)."""
        if self.directory is None or name[2] not in RESUMABLE:
            return
        path = self.path(key)
        try:  # a result that cannot be kept is only not kept: it never costs a verdict
            path.parent.mkdir(parents=True, exist_ok=True)
            write_entry(path, key, result, run_id)
        except OSError as exc:
            self.notes.append(f"{' / '.join(name)}: result not kept in the resume cache "
                              f"({type(exc).__name__}: {exc})")
