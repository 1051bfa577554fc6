"""A report folder is a user's folder: lac writes and deletes there only regular files it wrote,
never through a link; it checks at start, locks the folder, and checks again before publishing."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lac_core.report import document as report, reportset
from lac_core.errors import LacError, UsageError
from lac_core.report.reportset import Folder
from lac_core.run.session import Session
from lac_core.run.settings import ROOT, Settings


def _claims(tmp_path, *args, reports=None, inject=None, timeout=900, models=("tiny-llama",),
            k="c1_additive_sufficiency and not cell"):
    """pytest claims/ on the example grid in a subprocess (tests/test_crash.py uses it too), with
    an empty expectations folder of its own and `inject`, a plugin module's text, loaded."""
    extra = []
    if inject is not None:
        (tmp_path / "lac_inject.py").write_text(inject)
        extra = ["-p", "lac_inject"]
    (tmp_path / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-p", "no:cacheprovider",
           *(a for m in models for a in ("--lac-model", m)), "--lac-grid", "example", "-k", k,
           "--lac-expected-dir", str(tmp_path / "expected"),
           "--lac-reports", str(tmp_path / "reports") if reports is None else reports, *extra, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})


def _session(**kw) -> Session:
    return Session.start(Settings(models=("tiny-llama",), grids=("example",), **kw))


def _set(folder, names=("results.json", "REPORT.md"), text="lac"):
    return folder.publish({n: (lambda p, t=text: p.write_text(t)) for n in names},
                          report.REPLACES, fallback="lac-run2")


@pytest.mark.parametrize("name", ["figures/dose_and_swap.png", "figures/heatmaps_tiny-llama.png",
                                  "figures/kl_by_layer_tiny-llama_example.png", "REPORT.md"])
def test_every_file_of_the_set_is_checked_at_start(tmp_path, name):
    """Case 1: the start check covers every file the set may write, figures included."""
    assert name in _session().report_files()
    mine = tmp_path / "reports" / name
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own figure")
    out = _claims(tmp_path)
    assert out.returncode == 4 and f"{name} exists and lac did not write it" in out.stdout + out.stderr
    assert mine.read_bytes() == b"my own figure"
    assert not (tmp_path / "reports" / ".lac-manifest.json").exists()


def test_a_file_added_to_the_set_is_checked_without_other_edits(tmp_path, monkeypatch):
    extra = report.Output(lambda plan: ["figures/summary.svg"],
                          lambda session: {"figures/summary.svg": lambda p: p.write_text("svg")})
    monkeypatch.setattr(report, "OUTPUTS", [*report.OUTPUTS, extra])
    names = _session().report_files()
    assert "figures/summary.svg" in names
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "summary.svg").write_text("mine")
    with pytest.raises(UsageError, match="summary.svg exists and lac did not write it"):
        Folder(tmp_path).check(names)


def test_the_writers_of_a_whole_run_are_the_planned_names(tmp_path):
    """Every file the publish step writes was in the start check's list (report.OUTPUTS)."""
    out = _claims(tmp_path, "-k", "not cell")
    assert out.returncode in (0, 1), out.stdout[-2000:]
    written = set(reportset.manifest(tmp_path / "reports"))
    assert written and written <= set(_session().report_files())


def test_a_planted_manifest_cannot_make_lac_delete_outside(tmp_path):
    """Case 2: manifest entries must be plain names inside the folder."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    (out_dir / ".lac-manifest.json").write_text(json.dumps({"files": ["figures/../../victim.txt"]}))
    out = _claims(tmp_path)
    assert out.returncode == 4 and ".lac-manifest.json lists 'figures/../../victim.txt'" in out.stdout + out.stderr
    assert victim.read_text() == "keep me"
    for bad in ("/etc/passwd", "a/./b", "", "..", ".lac-lock", "a\\b"):
        assert not reportset.plain_name(bad), bad


@pytest.mark.parametrize("body", ["{not json", "[]", '{"files": 3}', '{"files": {"a": 1}}'])
def test_a_corrupt_manifest_is_one_clear_error(tmp_path, body):
    """Case 18."""
    (tmp_path / ".lac-manifest.json").write_text(body)
    with pytest.raises(UsageError, match=r"\.lac-manifest\.json (is damaged|lists).*move .* away"):
        Folder(tmp_path).check(["results.json"])


def test_a_corrupt_manifest_stops_the_run_at_start(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / ".lac-manifest.json").write_text("{not json")
    out = _claims(tmp_path)
    assert out.returncode == 4 and "INTERNALERROR" not in out.stdout + out.stderr
    assert "reports/.lac-manifest.json is damaged" in out.stdout + out.stderr


def test_lac_never_writes_through_a_linked_figures_folder(tmp_path):
    """Case 3: refused at start; a link made during the run sends the set to a subfolder."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "kl_by_layer_tiny-llama_example.png").write_bytes(b"theirs")
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    (out_dir / "figures").symlink_to(other)
    with pytest.raises(UsageError, match="is a link or a folder"):
        Folder(out_dir).check(_session().report_files())
    folder = Folder(out_dir)
    where, kept = _set(folder, ["results.json", "figures/kl_by_layer_tiny-llama_example.png"])
    assert where == out_dir / "lac-run2" and kept == ["figures/kl_by_layer_tiny-llama_example.png"]
    assert (other / "kl_by_layer_tiny-llama_example.png").read_bytes() == b"theirs"
    assert (where / "figures" / "kl_by_layer_tiny-llama_example.png").read_text() == "lac"
    out = _claims(tmp_path)
    assert out.returncode == 4 and "figures/" in out.stdout + out.stderr


def test_stale_files_are_deleted_only_when_still_lacs_and_never_through_links(tmp_path):
    folder = Folder(tmp_path)
    _set(folder, ["results.json", "figures/a.png", "figures/b.png"])
    (tmp_path / "figures" / "b.png").write_text("edited by a user")  # not lac's any more
    _set(folder, ["results.json"])  # a new set without figures: a.png goes, b.png stays
    assert not (tmp_path / "figures" / "a.png").exists()
    assert (tmp_path / "figures" / "b.png").read_text() == "edited by a user"
    assert "figures/b.png" not in reportset.owned(tmp_path)


def test_a_file_that_appears_during_the_run_is_kept(tmp_path):
    """Case 4: ownership is checked again just before publishing."""
    folder = Folder(tmp_path)
    folder.check(["results.json", "REPORT.md"])
    (tmp_path / "results.json").write_text("a colleague's")
    where, kept = _set(folder)
    assert kept == ["results.json"] and where == tmp_path / "lac-run2"
    assert (tmp_path / "results.json").read_text() == "a colleague's"
    assert (where / "results.json").read_text() == "lac" and (where / "REPORT.md").exists()
    assert not (tmp_path / "REPORT.md").exists()  # never a mixed set



@pytest.mark.parametrize("fallback", ["../escaped", "lac-../../x", "/tmp/abs", "a/b", ".", ""])
def test_the_other_folder_of_a_set_stays_a_plain_name_inside(tmp_path, fallback):
    """The set's other folder is named from the run id, which `lac report` reads from a
    results.json: a name that is not one plain part inside the folder is refused, nothing
    written (before, '../escaped' put the set beside the folder)."""
    out = tmp_path / "out"
    out.mkdir()
    folder = Folder(out)
    folder.check(["results.json", "REPORT.md"])
    (out / "results.json").write_text("a colleague's")
    with pytest.raises(LacError, match="not lac's"):
        folder.publish({n: (lambda p: p.write_text("lac")) for n in ("results.json", "REPORT.md")},
                       report.REPLACES, fallback=fallback)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["results.json"]


APPEAR = """
import pathlib
import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    path = pathlib.Path(item.config.getoption("--lac-reports")) / "results.json"
    if not path.exists():
        path.write_text("written meanwhile by someone else")
"""


def test_a_file_that_appears_during_the_run_fails_the_run_naming_both_paths(tmp_path):
    out = _claims(tmp_path, inject=APPEAR)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-2000:]
    assert f"{tmp_path / 'reports' / 'results.json'} appeared during the run" in text
    sub = next((tmp_path / "reports").glob("lac-*"))
    assert f"this run's report set is in {sub}" in text
    assert (tmp_path / "reports" / "results.json").read_text() == "written meanwhile by someone else"
    assert json.loads((sub / "results.json").read_text())["run"]["run_id"] == sub.name[4:]


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    first = Folder(tmp_path)
    first.lock("run-1")
    with pytest.raises(UsageError, match=r"another lac run \(run run-1, pid \d+\) is writing"):
        Folder(tmp_path).lock("run-2")
    try:  # a whole run into the folder this process holds
        out = _claims(tmp_path, reports=str(tmp_path))
        assert out.returncode == 4 and "another lac run" in out.stdout + out.stderr
    finally:
        first.release()
    Folder(tmp_path).lock("run-3")  # free again once released


@pytest.mark.parametrize("where", ["empty", "a file", "proc", "figures is a file"])
def test_an_unusable_report_folder_is_an_error_at_start(tmp_path, where):
    """Cases 6 and 15: exit 4 before any test runs; nothing left behind."""
    target = {"empty": "", "a file": str(tmp_path / "file"), "proc": "/proc/lac-x",
              "figures is a file": str(tmp_path / "reports")}[where]
    (tmp_path / "file").write_text("x")
    if where == "figures is a file":
        (tmp_path / "reports").mkdir()
        (tmp_path / "reports" / "figures").write_text("not a folder")
    out = _claims(tmp_path, reports=target)
    text = out.stdout + out.stderr
    assert out.returncode == 4 and "INTERNALERROR" not in text and "Traceback" not in text, text[-2000:]
    assert "passed" not in text and "failed" not in text
    assert not list(tmp_path.rglob(".lac-staging-*"))
    assert (tmp_path / "file").read_text() == "x"


def test_a_failed_write_leaves_no_staging_folder(tmp_path):
    def broken(path):
        raise RuntimeError("figure failed")

    with pytest.raises(LacError, match="figure failed"):
        Folder(tmp_path).publish({"results.json": lambda p: p.write_text("x"), "figures/a.png": broken})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_is_an_flock_on_lacs_own_file(tmp_path):
    folder = Folder(tmp_path)
    folder.lock("r")
    with open(tmp_path / ".lac-lock", "rb") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder.release()


def test_staging_left_by_a_killed_run_is_removed_under_the_lock(tmp_path):
    """Probe G3: a run killed while publishing leaves its staging folder (marked as lac's when
    made); the next run's lock sweeps it (no run is writing then); a link of that name is not
    lac's and stays, and so does the folder it points to, marked or not."""
    staging = Path(Folder(tmp_path, run_id="r0").make_staging())
    (staging / "figures").mkdir()
    (staging / "figures" / "a.png").write_bytes(b"half")
    (tmp_path / "other").mkdir()
    other = Path(Folder(tmp_path / "other", run_id="r0").make_staging())
    (tmp_path / ".lac-staging-link").symlink_to(other)
    folder = Folder(tmp_path)
    folder.lock("r")
    folder.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lac-lock", ".lac-staging-link", "other"]
    assert other.is_dir() and (other / reportset.MARK).is_file()


def test_a_planted_link_at_a_temporary_name_is_never_written_through(tmp_path):
    """Probe E6: the manifest is written under a fresh O_EXCL name; links of lac's old names
    (`..lac-manifest.json.tmp`) or of its staging prefix are never opened for writing."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "reports"
    out.mkdir()
    (out / "..lac-manifest.json.tmp").symlink_to(victim)
    _set(Folder(out))
    assert victim.read_text() == "keep" and not (out / ".lac-manifest.json").is_symlink()
    assert reportset.owned(out) == {"results.json", "REPORT.md"}


def test_a_link_at_a_name_lac_writes_is_refused(tmp_path):
    """Probe E9: lac's REPORT.md replaced by a link to a colleague's file: refused, untouched."""
    theirs = tmp_path / "theirs.md"
    theirs.write_text("theirs")
    out = tmp_path / "reports"
    _set(Folder(out))
    (out / "REPORT.md").unlink()
    (out / "REPORT.md").symlink_to(theirs)
    with pytest.raises(UsageError, match="REPORT.md is a link"):
        Folder(out, overwrite=True).check(["REPORT.md"])
    assert theirs.read_text() == "theirs"


KILLED = """
import os, signal, sys
from pathlib import Path
from lac_core.report.reportset import Folder

def killed(path):
    path.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)  # killed while publishing: its staging stays

folder = Folder(Path(sys.argv[1]))
folder.lock("run-killed")
folder.publish({"results.json": lambda p: p.write_text("{}"), "figures/a.png": killed})
"""


def test_only_staging_lac_made_is_swept_never_a_users_look_alike(tmp_path):
    """Issue 36 case 1: a user's `.lac-staging-my-notes/notes.txt` and `.lac-staging-draft.md`
    (named like lac's staging) stay; the staging a killed run left (marked with its run id when
    made) goes under the next run's lock."""
    (tmp_path / ".lac-staging-my-notes").mkdir()
    (tmp_path / ".lac-staging-my-notes" / "notes.txt").write_text("my notes")
    (tmp_path / ".lac-staging-draft.md").write_text("my draft")
    (tmp_path / ".lac-staging-forged").mkdir()  # a marker that is not lac's (a link to one)
    (tmp_path / ".lac-staging-forged" / reportset.MARK).symlink_to(tmp_path / "elsewhere")
    out = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, timeout=300)
    assert out.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".lac-staging-")]
    assert len(left) == 4, left  # the killed run's staging is there
    folder = Folder(tmp_path)
    folder.lock("run-next")
    folder.release()
    assert (tmp_path / ".lac-staging-my-notes" / "notes.txt").read_text() == "my notes"
    assert (tmp_path / ".lac-staging-draft.md").read_text() == "my draft"
    assert (tmp_path / ".lac-staging-forged" / reportset.MARK).is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lac-lock", ".lac-staging-draft.md", ".lac-staging-forged", ".lac-staging-my-notes"]


KILLED_IN_MANIFEST = """
import json, os, signal, sys
from pathlib import Path
from lac_core.report import reportset

def killed(*args, **kw):
    os.kill(os.getpid(), signal.SIGKILL)  # killed while writing the manifest

reportset.json.dump = killed
folder = reportset.Folder(Path(sys.argv[1]))
folder.lock("run-killed")
folder.publish({"results.json": lambda p: p.write_text("{}")})
"""


def test_a_run_killed_while_writing_its_manifest_leaves_no_loose_file(tmp_path):
    """The manifest is written inside the marked staging folder, then moved: a run killed there
    leaves staging the next run sweeps, never a loose file under lac's prefix (lac deletes no
    file by its name)."""
    out = subprocess.run([sys.executable, "-c", KILLED_IN_MANIFEST, str(tmp_path)], cwd=ROOT,
                         timeout=300)
    assert out.returncode == -9
    loose = [p.name for p in tmp_path.iterdir()
             if p.name.startswith(".lac-staging-") and not p.is_dir()]
    assert loose == []
    folder = Folder(tmp_path)
    folder.lock("run-next")
    folder.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lac-lock", "results.json"]


SAME_FOLDER = """
import sys
from pathlib import Path
from lac_core.report.reportset import Folder
from lac_core.verdicts import expected

folder = Folder(Path(sys.argv[1]))
folder.lock("run-1")
with expected.locked(Path(sys.argv[1])):  # the same .lac-lock, taken again by the same run
    with expected.locked(Path(sys.argv[1])):
        pass
folder.release()
print("done")
"""


def test_one_process_never_waits_on_its_own_lock(tmp_path):
    """Issue 36 case 3 (unit): the report folder's lock, then the expectations' lock on the same
    .lac-lock, in one process: re-entered, not a second flock waiting on the first."""
    out = subprocess.run([sys.executable, "-c", SAME_FOLDER, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
    free = Folder(tmp_path)  # released for good: another run can take it
    free.lock("run-2")
    free.release()


def test_reports_and_expectations_in_one_folder_with_update_baselines_ends(tmp_path):
    """Issue 36 case 3: `--lac-reports D --lac-expected-dir D --lac-update-baselines` hung for ever
    (two locks on D/.lac-lock in one process); bounded by a timeout, it ends and writes both."""
    both = tmp_path / "both"
    both.mkdir()
    try:
        out = _claims(tmp_path, "--lac-expected-dir", str(both), "--lac-update-baselines",
                      reports=str(both), timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not end: it waits on its own lock")
    text = out.stdout + out.stderr
    assert "INTERNALERROR" not in text and "Traceback" not in text, text[-3000:]
    assert (both / "tiny-llama.yaml").is_file() and (both / "results.json").is_file(), text[-3000:]
    assert f"lac: wrote {both / 'tiny-llama.yaml'}" in text


def _previous_set(reports):
    """A COMPLETE set a previous run published (lac's own files, in its manifest)."""
    previous = json.dumps({"run": {"run_id": "previous", "status": "COMPLETE", "not_run": []}})
    Folder(reports).publish({"results.json": lambda p: p.write_text(previous),
                             "REPORT.md": lambda p: p.write_text("**Run status: COMPLETE.**")},
                            report.REPLACES)
    return {p.name: p.read_bytes() for p in reports.iterdir() if p.is_file()}


def test_sigterm_publishes_a_partial_set_naming_what_was_interrupted(tmp_path):
    """Issue 36 case 6: SIGTERM (what a CI timeout sends) after the first verdict: the previous
    run's COMPLETE set is replaced by this run's PARTIAL one, which lists the verdicts that did not
    come as interrupted (as Ctrl-C does), not left for the job's artifact to show as this run's."""
    import re
    import signal

    reports = tmp_path / "reports"
    _previous_set(reports)
    (tmp_path / "expected").mkdir()
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-v", "-p",
           "no:cacheprovider", "--lac-model", "tiny-llama", "--lac-grid", "example",
           "--lac-expected-dir", str(tmp_path / "expected"), "--lac-reports", str(reports)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"::\w+\[tiny-llama[^\]]*\] (PASSED|FAILED|XFAIL|XPASS)", line):
                proc.send_signal(signal.SIGTERM)  # after the first verdict
                break
        rest, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text[-3000:]
    run = json.loads((reports / "results.json").read_text())["run"]
    assert run["run_id"] != "previous" and run["status"] == "PARTIAL", text[-3000:]
    assert run["not_run"] and {n["why"] for n in run["not_run"]} == {"interrupted"}, run["not_run"]
    assert "PARTIAL" in (reports / "REPORT.md").read_text()
    assert f"lac: report set written to {reports}" in text


def test_a_session_that_selects_no_lac_test_leaves_the_folder_and_says_so(tmp_path):
    """Issue 36 case 6: no lac test selected (-k matching none): the previous set stays byte for
    byte, and lac's last line says the folder was left alone."""
    reports = tmp_path / "reports"
    before = _previous_set(reports)
    out = _claims(tmp_path, "-k", "no_such_test_anywhere")
    text = out.stdout + out.stderr
    assert "INTERNALERROR" not in text, text[-3000:]
    assert {p.name: p.read_bytes() for p in reports.iterdir() if p.is_file()} == before
    last = [line for line in text.splitlines() if line.startswith("lac: ")][-1]
    assert last == f"lac: no lac test was selected; {reports} is left as it was", text[-3000:]


def _lineless_interrupt():
    """A KeyboardInterrupt raised on an instruction with no line number, as a signal can land in
    Python 3.11+ (tb_lineno None), chained to another raised the same way."""
    def boom():
        try:
            raise ValueError("under")
        except ValueError:
            raise KeyboardInterrupt("SIGTERM")
    code = boom.__code__
    no_location = bytes([0x80 | (15 << 3) | 7]) * (len(code.co_code) // 16 + 1)  # code 15, x8
    boom.__code__ = code.replace(co_linetable=no_location)
    try:
        boom()
    except KeyboardInterrupt:
        return pytest.ExceptionInfo.from_current()


def test_an_interrupt_without_line_numbers_is_reported_as_an_interrupt(monkeypatch):
    """CI saw SIGTERM land where tb_lineno was None: pytest's interrupt report raised TypeError and
    the run exited 1, not 2. While lac holds the folder its hook drops the entries without a line
    (in the chained exception too), and pytest's own report of the interrupt then works."""
    from lac_core.suite import folder
    from lac_core.suite.plugin import pytest_keyboard_interrupt

    raw = _lineless_interrupt()
    with pytest.raises(TypeError):  # what pytest's terminal reporter does, unmended
        raw.getrepr(funcargs=True)
    monkeypatch.setattr(folder, "_SIGTERM_BEFORE", [])  # lac does not hold a folder: untouched
    pytest_keyboard_interrupt(raw)
    with pytest.raises(TypeError):
        raw.getrepr(funcargs=True)
    monkeypatch.setattr(folder, "_SIGTERM_BEFORE", [object()])
    mended = _lineless_interrupt()
    pytest_keyboard_interrupt(mended)
    text = str(mended.getrepr(funcargs=True))
    assert "KeyboardInterrupt: SIGTERM" in text and "ValueError: under" in text, text
    assert "_lineless_interrupt" in text  # the frames with lines stay
