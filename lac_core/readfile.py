"""The one way lac reads a file it is handed (a grid, a chat template, thresholds, expectations,
a report folder's manifest, compare's results.json): a regular file only, a size cap for each
kind, UTF-8, and every number in what it holds finite and within a float's range. Each refusal is
one UsageError naming the file and the limit, never a hang, a raw traceback or an unbounded
read."""
# A FIFO would block open() until a writer came, a device (a link to /dev/zero: git commits such
# a link) never ends, a sparse file can claim gigabytes: so the path is stat()ed first (a device
# is never even opened), opened with O_NONBLOCK (a FIFO swapped in meanwhile does not hang), then
# fstat()ed to read only the regular file that was opened, at most its cap plus one byte.
from __future__ import annotations

import errno
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

MiB = 1 << 20
FLOAT_MAX = sys.float_info.max  # a number beyond it overflows the first float() or comparison


@dataclass(frozen=True)
class Kind:
    """A kind of file lac reads: its name in messages, its size cap (and why), the fix."""

    name: str
    limit: int  # bytes on disk, and characters once YAML aliases are expanded
    fix: str
    finite: bool = True  # False: NaN and infinities are kept for the caller to judge

    @property
    def limit_text(self) -> str:
        return f"{self.limit // MiB} MiB" if self.limit % MiB == 0 else f"{self.limit} bytes"


# The caps are far above any real file and far below what would exhaust memory or time: lac's
# own files are a few KiB (a grid) to tens of KiB (a model's expectations, 45 KiB for SmolLM2 on
# three grids; a results.json, 90 KiB for the example grid).
GRID = Kind("grid", MiB, "pass a smaller grid")  # the cap grids always had
TEMPLATE = Kind("chat template", MiB, "pass the Jinja text of a chat template (real ones are a "
                "few KiB to a few tens of KiB)")
THRESHOLDS = Kind("thresholds file", MiB, "a thresholds file holds a few sections of numbers "
                  "(lac's claims.yaml is 3 KiB)")
EXPECTATIONS = Kind("expectations file", 16 * MiB, "move it away and record it again with "
                    "--lac-update-baselines (a model's file is tens of KiB)")
MANIFEST = Kind("report manifest", MiB, "move it away (it lists the files of one report set: a "
                "line each)")
RESULTS = Kind("results.json", 256 * MiB, "pass the results.json a lac run wrote (a large grid on "
               "several models stays far below this cap)", finite=False)
KINDS = (GRID, TEMPLATE, THRESHOLDS, EXPECTATIONS, MANIFEST, RESULTS)


class Unreadable(UsageError):
    """A file lac will not read: the message names it, what is wrong, the limit and the fix;
    `what` is the problem alone, for a caller that names the file in words of its own."""

    def __init__(self, where: str, what: str, fix: str = "", sep: str = ": "):
        super().__init__(f"{where}{sep}{what}" + (f"; {fix}" if fix else ""))
        self.what = what


def shown(path) -> str:
    """A path for a message, cut short when it is absurdly long."""
    text = str(path)
    return text if len(text) <= 160 else text[:100] + f"...({len(text)} characters)"


def refuse(path, kind: Kind, what: str) -> Unreadable:
    return Unreadable(f"{kind.name} {shown(path)}", what, kind.fix)


def name_too_long(path, label: str) -> Unreadable:
    """A name the file system refuses (ENAMETOOLONG), said with the limits."""
    longest = max((len(p.encode(errors="surrogateescape")) for p in Path(path).parts), default=0)
    return Unreadable(f"{label} {shown(path)}", "the name is too long for the file system (its "
                      f"longest part has {longest} bytes; at most 255 bytes a part, 4096 a path)",
                      "pass a shorter name")


def exists(path, label: str) -> bool:
    """Path.exists (links followed), except that a name too long for the file system is refused
    as Unreadable naming `label` (the option or kind), not raised as OSError."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except ValueError:  # a NUL in the name
        raise Unreadable(f"{label} {shown(path)}", "the name holds a NUL character") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise name_too_long(path, label) from None
    return True


def _what(mode: int) -> str | None:
    """What a non-regular file is, None for a regular one."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _not_a_file(path, kind: Kind, mode: int) -> Unreadable:
    return Unreadable(f"{kind.name} {shown(path)}", f"is not a file but {_what(mode)} (lac "
                      "reads regular files only, not a FIFO, a device or a link to one)", kind.fix,
                      sep=" ")


def _too_big(path, kind: Kind, size: int) -> Unreadable:
    return refuse(path, kind, f"the file has {size} bytes, more than a {kind.name} may hold "
                  f"({kind.limit} bytes, {kind.limit_text})")


def read_bytes(path, kind: Kind) -> bytes:
    """The bytes of the regular file at `path` (links followed), at most kind.limit of them."""
    try:
        st = os.stat(path)
        if _what(st.st_mode):  # refused unopened: opening a device can have effects, a FIFO blocks
            raise _not_a_file(path, kind, st.st_mode)
        if st.st_size > kind.limit:
            raise _too_big(path, kind, st.st_size)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise refuse(path, kind, "no such file") from None
    except ValueError:
        raise refuse(path, kind, "the name holds a NUL character") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise name_too_long(path, kind.name) from None
        raise refuse(path, kind, f"cannot open it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if _what(st.st_mode):  # swapped for something else between stat and open
            raise _not_a_file(path, kind, st.st_mode)
        chunks, total = [], 0
        while total <= kind.limit:  # a file that grows, or lies about its size, stops here
            chunk = os.read(fd, kind.limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise refuse(path, kind, f"cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if total > kind.limit:
        raise _too_big(path, kind, total)
    return b"".join(chunks)


def read_text(path, kind: Kind) -> str:
    """The file's text: read_bytes, decoded as UTF-8 (as Path.read_text did: the texts, and the
    hashes taken of them, are the same)."""
    data = read_bytes(path, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise refuse(path, kind, f"cannot read it as UTF-8 text (byte {exc.start}, line {line}: "
                     f"{data[exc.start:exc.start + 4]!r}); save it as UTF-8") from None


def expanded_size(data, where: str) -> int:
    """Characters the loaded structure holds once its YAML aliases are expanded, without
    expanding them: a node shared by aliases is walked once (memoized by id) and counted per
    occurrence; a number, boolean or null counts 1. Raises Unreadable for an endless structure
    (an alias inside the node it names) and a number that is not finite or beyond a float."""
    return _measure(data, where, True)


def _measure(data, where: str, finite: bool) -> int:
    memo: dict[int, int | None] = {}

    def size(node) -> int:
        if isinstance(node, str):
            return len(node)
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            if isinstance(node, int) and abs(node) > FLOAT_MAX:
                raise Unreadable(where, f"a number of {node.bit_length()} bits, beyond what a "
                                 f"float holds (at most {FLOAT_MAX:.3g})", "write a smaller one")
            if finite and not math.isfinite(node):
                raise Unreadable(where, f"the number {node} is not finite", "write a finite one")
            return 1
        if not isinstance(node, dict | list | tuple | set):
            return 1  # booleans, null, dates
        if id(node) in memo:
            if memo[id(node)] is None:
                raise Unreadable(where, "a YAML alias refers to a node that contains it (an "
                                 "endless structure)", "remove the self-reference")
            return memo[id(node)]
        memo[id(node)] = None  # being walked
        items = node.items() if isinstance(node, dict) else ((x, "") for x in node)
        memo[id(node)] = total = sum(size(k) + size(v) for k, v in items)
        return total

    try:
        return size(data)
    except RecursionError:
        raise Unreadable(where, "nested too deeply to read") from None


def checked(data, path, kind: Kind):
    """`data` as loaded from `path`, once its numbers are in range (finite, within a float) and
    its aliases expand to at most kind.limit characters."""
    where = f"{kind.name} {shown(path)}"
    size = _measure(data, where, kind.finite)
    if size > kind.limit:
        raise Unreadable(where, f"its YAML aliases expand to {size} characters, more than a "
                         f"{kind.name} may hold ({kind.limit}, {kind.limit_text}); refused before "
                         "expanding them", "write the texts out, without nested aliases")
    return data


def unique_pairs(pairs):
    """A JSON object's pairs as a dict, a repeated key refused (json.loads' object_pairs_hook):
    a second value must not silently replace the first."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:80]!r}")
        out[k] = v
    return out


def read_json(path, kind: Kind):
    """The JSON document in `path`, read through read_text and checked; a repeated key, a
    number of more digits than Python parses, or nesting too deep is refused."""
    import json

    text = read_text(path, kind)
    try:
        data = json.loads(text, object_pairs_hook=unique_pairs)
    except RecursionError:
        raise refuse(path, kind, "nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, a duplicate key, an integer of 4300+ digits
        raise refuse(path, kind, f"not valid JSON ({str(exc)[:160]})") from None
    return checked(data, path, kind)
