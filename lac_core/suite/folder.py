"""The report folder a run holds from before its first test to its end: locked and checked when
the tests are known (plugin.py, or distributed.py's controller once its workers collected), and
SIGTERM turned into an interrupt meanwhile. Its own module, below both that open it, so neither
imports the other back (no call circle in suite/)."""
# Import-light: the report set's Folder loads inside open_folder, once lac's part has started.
from __future__ import annotations

import signal
import threading

import pytest

from ..errors import LacError


def open_folder(lac) -> None:
    """Lock the report folder and check it (exit 4 on a problem; the folder is then untouched)."""
    from ..report.reportset import Folder

    s = lac.settings
    folder = Folder(s.report_dir, s.reports_overwrite)
    try:  # held until the session ends: a second run into the folder is refused here
        folder.lock(lac.ident.run_id)
        folder.check(lac.report_files())
    except LacError as exc:  # nothing is written: the folder is not this run's
        folder.release()
        pytest.exit(f"lac: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    lac.out.folder = folder
    interrupt_on_sigterm()


_SIGTERM_BEFORE: list = []  # the SIGTERM handler lac replaced, put back at the session's end


def interrupt_on_sigterm() -> None:
    """While lac holds the report folder, SIGTERM (what a CI timeout sends) stops the run as
    Ctrl-C does: the session ends and publishes a PARTIAL set naming what was interrupted, so the
    previous run's set never stands as this one's. A second SIGTERM ends the process at once."""
    if threading.current_thread() is threading.main_thread() and not _SIGTERM_BEFORE:
        _SIGTERM_BEFORE.append(signal.signal(signal.SIGTERM, _sigterm))


def _sigterm(signum, frame):
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt("SIGTERM")


def readable_interrupt(excinfo) -> None:
    """Drop the traceback entries that have no line number from an interrupt's traceback (and the
    exceptions it chains), while lac holds the folder. Python 3.11+ leaves tb_lineno None where a
    signal lands on an instruction without a line, and pytest's interrupt report then fails with a
    TypeError: the run exits 1 after an INTERNALERROR instead of 2 (interrupted), as CI saw."""
    if not _SIGTERM_BEFORE:
        return
    exc, seen = excinfo.value, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = _lined(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    excinfo.traceback = excinfo.traceback.filter(_has_line)


def _lined(tb):
    """The traceback chain from tb without its entries that have no line number (relinked)."""
    head = last = None
    while tb is not None:
        if tb.tb_lineno is not None:
            if last is None:
                head = tb
            else:
                last.tb_next = tb
            last = tb
        tb = tb.tb_next
    if last is not None:
        last.tb_next = None
    return head


def _has_line(entry) -> bool:
    try:
        entry.lineno
    except TypeError:  # tb_lineno is None
        return False
    return True


def restore_sigterm() -> None:
    if _SIGTERM_BEFORE:
        signal.signal(signal.SIGTERM, _SIGTERM_BEFORE.pop())
