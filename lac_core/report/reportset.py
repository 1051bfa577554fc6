"""The files lac owns in a report folder, and writing a report set as a whole."""
# A report folder is a user's folder: lac writes and deletes there only regular files it wrote,
# never through a symbolic link. Its manifest (.lac-manifest.json) lists each file lac wrote with
# the sha256 it wrote, so a file a user edited or put there afterwards is not lac's any more. At
# start a run checks the folder (it exists or can be made, is a real directory, writable), takes
# its lock (.lac-lock: a second run into the same folder is refused, never mixed in) and refuses
# any file it would write that is not lac's (unless --lac-reports-overwrite). Just before
# publishing it checks again: if a file it would replace appeared meanwhile, that file is kept
# and the whole set goes to a new subfolder lac-<run id>/ instead. A set is written into a
# staging folder and moved into place only when every file of it was written; every move and
# delete goes through directory descriptors opened without following links (O_NOFOLLOW), so a
# link planted anywhere below the folder is refused, not followed.
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import LacError, UsageError

MANIFEST = ".lac-manifest.json"
LOCK = ".lac-lock"
STAGING = ".lac-staging-"
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
        data = json.loads(path.read_text())
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
    _lock: int | None = field(default=None, repr=False)

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
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=root)
        except OSError as exc:
            raise _usage(self.path, f"cannot write in it ({exc.strerror or exc}); pick a folder "
                                    "you can write as --lac-reports") from None
        finally:
            os.close(root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
            os.close(fd)
            raise _usage(self.path, f"another lac run ({holder}) is writing its report set there; "
                                    "wait for it to end, or pick another --lac-reports") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {run_id}, pid {os.getpid()}".encode(), 0)
        self._lock = fd
        self._sweep_staging()

    def _sweep_staging(self) -> None:
        """Staging left by a run that was killed while publishing: lac's own, and no run writes
        it now (the lock is held), so it goes; links of that name are left alone."""
        for entry in os.scandir(self.path):
            if entry.name.startswith(STAGING) and not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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
            target = Folder(self.path / fallback)
            if os.path.lexists(target.path):
                raise LacError(f"{target.path} exists already; the report set was not written")
        target._write(writers, replaces)
        return target.path, kept

    def _write(self, writers: dict, replaces: tuple[str, ...]) -> None:
        root = self._root()
        staging = tempfile.mkdtemp(dir=self.path, prefix=STAGING)
        try:
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
            finally:
                os.close(src)
            _write_manifest(root, {**{n: v for n, v in mine.items() if n not in writers},
                                   **digests})
        except LacError:
            raise
        except Exception as exc:
            raise LacError(f"writing the report set into {self.path} failed ({type(exc).__name__}: "
                           f"{exc}); the previous report set is left as it was") from exc
        finally:
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


def _write_manifest(root: int, files: dict) -> None:
    """A new file of a fresh random name (O_EXCL: never one planted there), then renamed."""
    while True:
        tmp = f"{STAGING}{secrets.token_hex(8)}.json"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                         dir_fd=root)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "files": dict(sorted(files.items()))}, f, indent=1)
        os.replace(tmp, MANIFEST, src_dir_fd=root, dst_dir_fd=root)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=root)


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
