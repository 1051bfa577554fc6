"""A report folder is a user's folder: lac writes and deletes there only regular files it wrote,
never through a link; it checks at start, locks the folder, and checks again before publishing."""
import fcntl
import json
import os
import subprocess
import sys

import pytest

from lac_core.report import document as report, reportset
from lac_core.errors import LacError, UsageError
from lac_core.report.reportset import Folder
from lac_core.run.session import Session
from lac_core.run.settings import ROOT, Settings


def _claims(tmp_path, *args, reports=None, inject=None):
    extra = []
    if inject is not None:
        (tmp_path / "lac_inject.py").write_text(inject)
        extra = ["-p", "lac_inject"]
    (tmp_path / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-p", "no:cacheprovider",
           "--lac-model", "tiny-llama", "--lac-grid", "example", "-k", "c1_additive_sufficiency and not cell",
           "--lac-expected-dir", str(tmp_path / "expected"),
           "--lac-reports", str(tmp_path / "reports") if reports is None else reports, *extra, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
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
    """Probe G3: a run killed while publishing leaves .lac-staging-*; the next run's lock sweeps
    it (no run is writing then); a link of that name is not lac's and stays."""
    (tmp_path / ".lac-staging-abc" / "figures").mkdir(parents=True)
    (tmp_path / ".lac-staging-abc" / "figures" / "a.png").write_bytes(b"half")
    (tmp_path / ".lac-staging-0123.json").write_text("{")
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / ".lac-staging-link").symlink_to(other)
    folder = Folder(tmp_path)
    folder.lock("r")
    folder.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lac-lock", ".lac-staging-link", "other"]


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
