"""The files lac owns in a report folder, and writing a report set as a whole."""
# A report folder is a user's folder: lac writes and deletes there only regular files it wrote,
# never through a symbolic link. Its manifest (.lac-manifest.json) lists each file lac wrote with
# the sha256 it wrote, so a file a user edited or put there afterwards is not lac's any more. At
# start a run checks the folder (it exists or can be made, is a real directory, writable), takes
# its lock (.lac-lock, locks.py: a second run into the same folder is refused, never mixed in;
# the same run's expectations update into the same folder re-enters it) and refuses
# any file it would write that is not lac's (unless --lac-reports-overwrite). Just before
# publishing it checks again: if a file it would replace appeared meanwhile, that file is kept
# and the whole set goes to a new subfolder lac-<run id>/ instead. A set is written into a
# staging folder and moved into place only when every file of it was written (the manifest too,
# so a run killed anywhere leaves one staging folder, marked with its run id when made: the next
# run under the lock removes exactly such folders, never a file or a look-alike); every move and
# delete goes through directory descriptors opened without following links (O_NOFOLLOW), so a
# link planted anywhere below the folder is refused, not followed.
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import readfile
from .. import locks
from ..errors import LacError, UsageError

MANIFEST = ".lac-manifest.json"
LOCK = locks.LOCK
STAGING = ".lac-staging-"
MARK = ".lac-staging-of"  # inside a staging folder lac made: "lac staging of run <run id>\n"
_MARKED = re.compile(rb"lac staging of run [\w.:-]{1,64}\n")
FORMAT = 2  # {"format": 2, "files": {name: sha256}}; format 1 was {"files": [name, ...]}
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def plain_name(name) -> bool:
    """A name lac may own: a relative path inside the folder, no '..', '.', empty part, backslash
    or NUL, and none of lac's own bookkeeping files."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts) and \
        not parts[0].startswith((MANIFEST, LOCK, STAGING)) and \
        PurePosixPath(name).as_posix() == name


def _usage(out: Path, what: str) -> UsageError:
    return UsageError(f"report folder {out}: {what}")


def manifest(out: Path) -> dict[str, str | None]:
    """name -> the sha256 lac wrote (None for an older manifest without hashes); {} without one.
    A manifest that is not lac's, or lists a name outside the folder, is one clear error."""
    path = Path(out) / MANIFEST
    if not os.path.lexists(path):
        return {}
    fix = (f"it is not lac's list of the files it wrote; move {path} away (lac then treats every "
           "file there as not its own)")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise ValueError("not a regular file")
        data = json.loads(readfile.read_text(path, readfile.MANIFEST))  # capped, regular, UTF-8
        files = data["files"]
        listed = dict.fromkeys(files) if isinstance(files, list) else dict(files)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}): {fix}") \
            from None
    for name, digest in listed.items():
        if not plain_name(name) or not (digest is None or isinstance(digest, str)):
            raise UsageError(f"{path} lists {str(name)[:80]!r}, which is not a plain name inside "
                             f"the folder: {fix}")
    return listed


def _sha256(fd: int) -> str:
    h = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _walk(root: int, parts, create: bool = False) -> int | None:
    """A descriptor of the directory `parts` below `root`, every step opened without following a
    link (None where one is missing and not created); raises UsageError on a link or a file."""
    fd = os.dup(root)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                os.mkdir(part, dir_fd=fd)
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(f"{'/'.join(parts[: i + 1])} is a link or a file, not a "
                                     "directory: lac writes only into real directories of the "
                                     "report folder; move it away or pick another --lac-reports")
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _state(root: int, name: str) -> tuple[str, str | None]:
    """("missing" | "file" | "other", sha256 of a regular file) of `name`, without following
    links; "other" is a link, a directory or a file below a link."""
    *parents, base = name.split("/")
    try:
        parent = _walk(root, parents)
    except UsageError:
        return "other", None
    if parent is None:
        return "missing", None
    try:
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return "missing", None
        if not stat.S_ISREG(st.st_mode):
            return "other", None
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            return "file", _sha256(fd)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


@dataclass
class Folder:
    """A report folder opened for one run: checked, locked, and written as a whole."""

    path: Path
    overwrite: bool = False  # replace regular files lac did not write (--lac-reports-overwrite)
    run_id: str = ""  # the run writing it (set by lock), recorded in each staging folder it makes
    _lock: locks.Hold | None = field(default=None, repr=False)

    def _root(self) -> int:
        out = self.path
        if os.path.islink(out):
            raise _usage(out, f"it is a symbolic link (to {os.path.realpath(out)}); lac never "
                              "writes through a link: pass the real folder as --lac-reports")
        if os.path.lexists(out) and not os.path.isdir(out):
            raise _usage(out, "it exists and is not a folder; pick another --lac-reports")
        try:
            out.mkdir(parents=True, exist_ok=True)
            return os.open(out, _DIR)
        except OSError as exc:
            raise _usage(out, f"cannot be made or opened ({exc.strerror or exc}); pick a folder "
                              "you can write as --lac-reports") from None

    def conflicts(self, names) -> dict[str, str]:
        """The names lac would write whose path holds something that is not lac's, and why."""
        mine, root = manifest(self.path), self._root()
        try:
            out = {}
            for name in names:
                kind, digest = _state(root, name)
                if kind == "other":
                    out[name] = "is a link or a folder, or lies below a link or a file"
                elif kind == "file" and not self.overwrite and name not in mine:
                    out[name] = f"exists and lac did not write it (it is not in {MANIFEST})"
                elif kind == "file" and not self.overwrite and mine[name] not in (None, digest):
                    out[name] = "exists and was changed since lac wrote it"
            return out
        finally:
            os.close(root)

    def check(self, names) -> None:
        """Before any work: the folder can be written and every file lac would write is its own."""
        for name, why in self.conflicts(names).items():
            fix = "--lac-reports-overwrite to replace it" if "link" not in why else \
                "never writes through links or over folders"
            raise UsageError(f"{self.path / name} {why}; move it, pick another --lac-reports DIR"
                             + (f", or pass {fix}" if fix.startswith("--") else f" (lac {fix})"))

    def lock(self, run_id: str) -> None:
        """Hold the folder for this run; a second run into it is refused (released at exit)."""
        root = self._root()
        try:
            hold = locks.acquire(root, wait=False, exclusive=True)
        except locks.Busy as busy:
            raise _usage(self.path, f"another lac run ({busy or 'another run'}) is writing its "
                                    "report set there; wait for it to end, or pick another "
                                    "--lac-reports") from None
        except OSError as exc:
            raise _usage(self.path, f"cannot write in it ({exc.strerror or exc}); pick a folder "
                                    "you can write as --lac-reports") from None
        try:
            os.ftruncate(hold.fd, 0)
            os.pwrite(hold.fd, f"run {run_id}, pid {os.getpid()}".encode(), 0)
            self._lock, self.run_id = hold, run_id
            sweep_staging(self.path, root)
        finally:
            os.close(root)

    def release(self) -> None:
        if self._lock is not None:
            locks.release(self._lock)
            self._lock = None

    def make_staging(self) -> str:
        """A new staging folder in the folder, marked as lac's (with this run's id) before
        anything is written into it: what a later sweep may prove lac made."""
        staging = tempfile.mkdtemp(dir=self.path, prefix=STAGING)
        fd = os.open(os.path.join(staging, MARK),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"lac staging of run {self.run_id or 'unknown'}\n")
        return staging

    def publish(self, writers: dict, replaces: tuple[str, ...] = (),
                fallback: str | None = None) -> tuple[Path, list[str]]:
        """Write every file (name -> writer(path)) into a staging folder, then move them in; owned
        files under a prefix of `replaces` that this set does not rewrite are removed. Returns the
        folder the set went to and the files that kept it out of `self.path`: when one appeared
        that is not lac's, the set goes to subfolder `fallback` (or, without one, nothing is
        written and LacError names it)."""
        bad = [n for n in writers if not plain_name(n)]
        if bad:
            raise LacError(f"report set file name {bad[0]!r} is not a plain name inside the folder")
        kept = list(self.conflicts(writers))
        target = self
        if kept:
            if not fallback:
                raise LacError(f"{self.path / kept[0]} appeared and is not lac's; the report set "
                               "was not written")
            if not plain_name(fallback) or "/" in fallback:  # e.g. a run id read from a file
                raise LacError(f"{self.path / kept[0]} appeared and is not lac's, and the set's "
                               f"other folder name {fallback!r} is not a plain name inside it; "
                               "the report set was not written")
            target = Folder(self.path / fallback, run_id=self.run_id)
            if os.path.lexists(target.path):
                raise LacError(f"{target.path} exists already; the report set was not written")
        target._write(writers, replaces)
        return target.path, kept

    def _write(self, writers: dict, replaces: tuple[str, ...]) -> None:
        root = self._root()
        staging = None
        try:
            staging = self.make_staging()
            for name, write in writers.items():
                (Path(staging) / name).parent.mkdir(parents=True, exist_ok=True)
                write(Path(staging) / name)
            mine = manifest(self.path)
            src = os.open(staging, _DIR)
            try:
                digests = {n: _state(src, n)[1] for n in writers}
                for name in [n for n in mine if n.startswith(replaces) and n not in writers]:
                    if _delete_if(root, name, mine[name]):
                        del mine[name]
                for name in writers:
                    *parents, base = name.split("/")
                    s, d = _walk(src, parents), _walk(root, parents, create=True)
                    try:
                        os.replace(base, base, src_dir_fd=s, dst_dir_fd=d)
                    finally:
                        os.close(s), os.close(d)
                _write_manifest(src, root, {**{n: v for n, v in mine.items() if n not in writers},
                                            **digests})
            finally:
                os.close(src)
        except LacError:
            raise
        except Exception as exc:
            raise LacError(f"writing the report set into {self.path} failed ({type(exc).__name__}: "
                           f"{exc}); the previous report set is left as it was") from exc
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            os.close(root)


def _delete_if(root: int, name: str, digest: str | None) -> bool:
    """Delete `name` only if it is still the regular file lac wrote there."""
    kind, now = _state(root, name)
    if kind != "file" or digest not in (None, now):
        return kind == "missing"
    *parents, base = name.split("/")
    parent = _walk(root, parents)
    try:
        os.unlink(base, dir_fd=parent)
    finally:
        os.close(parent)
    return True


def _write_manifest(staging: int, root: int, files: dict) -> None:
    """Written inside the staging folder (lac's own, fresh), then renamed into the folder: no
    name in the folder itself is ever opened for writing, and a kill leaves no loose file."""
    fd = os.open(MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                 dir_fd=staging)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, "files": dict(sorted(files.items()))}, f, indent=1)
    os.replace(MANIFEST, MANIFEST, src_dir_fd=staging, dst_dir_fd=root)


def lacs_staging(root: int, name: str) -> bool:
    """Whether `name` in the folder open at `root` is a staging folder lac made: a real directory
    under lac's prefix holding lac's mark (a regular file, as lac writes it); never a file, a
    link, or a folder a user named like one."""
    if not name.startswith(STAGING):
        return False
    try:
        fd = os.open(name, _DIR, dir_fd=root)
    except OSError:  # a link, a file, gone
        return False
    try:
        mark = os.open(MARK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        return stat.S_ISREG(os.fstat(mark).st_mode) and \
            _MARKED.fullmatch(os.pread(mark, 100, 0)) is not None
    finally:
        os.close(mark)


def sweep_staging(folder: Path, root: int) -> None:
    """Staging left by a run killed while publishing: removed only where lac's mark proves it
    made it (and, the lock being held, no run writes it now); anything else stays."""
    for name in os.listdir(root):
        if lacs_staging(root, name):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def owned(out: Path) -> set[str]:
    """The files of the folder that are lac's: listed, and still as lac wrote them."""
    folder = Folder(Path(out))
    if not os.path.isdir(folder.path):
        return set()
    mine = manifest(folder.path)
    root = folder._root()
    try:
        return {n for n in mine if _state(root, n)[0] == "file"} - set(folder.conflicts(mine))
    finally:
        os.close(root)


def check(out: Path, names, overwrite: bool = False) -> None:
    Folder(Path(out), overwrite).check(names)


def publish(out: Path, writers: dict, replaces: tuple[str, ...] = ()) -> None:
    Folder(Path(out)).publish(writers, replaces)
