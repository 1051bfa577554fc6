"""A folder's lock (.lac-lock), held at most once per process: a run whose report folder is also
its expectations folder takes that lock once, and its expectations update re-enters it instead
of waiting on its own first hold (two flocks on one file in one process wait for each other)."""
from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass

LOCK = ".lac-lock"
_HELD: dict[tuple[int, int], list[int]] = {}  # (device, inode) of a lock file -> [fd, holds]
_GUARD = threading.Lock()


class Busy(Exception):
    """The lock is held: by another process, or (for an exclusive hold) by this one. The text is
    what its holder wrote in the lock file ("" if nothing)."""


@dataclass(frozen=True)
class Hold:
    """One hold of a folder's lock; `fd` is the lock file's descriptor, shared by every hold."""

    key: tuple[int, int]
    fd: int


def holder(fd: int) -> str:
    """What the lock's holder wrote in it (its run id and pid), for the message refusing another."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip()


def acquire(dir_fd: int, *, wait: bool, exclusive: bool) -> Hold:
    """Hold the lock of the folder open at `dir_fd`. Held already by this process: `exclusive`
    (a report folder, one run's set at a time) raises Busy, else the hold is re-entered. Held by
    another process: wait for it, or raise Busy. The lock file is never opened through a link."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=dir_fd)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            os.close(fd)
            if exclusive:
                raise Busy(holder(held[0]))
            held[1] += 1
            return Hold(key, held[0])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        text = holder(fd)
        os.close(fd)
        raise Busy(text) from None
    with _GUARD:
        _HELD[key] = [fd, 1]
    return Hold(key, fd)


def release(hold: Hold) -> None:
    """End one hold; the last one unlocks (closes the lock file)."""
    with _GUARD:
        held = _HELD.get(hold.key)
        if held is None or held[0] != hold.fd:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[hold.key]
            os.close(hold.fd)
