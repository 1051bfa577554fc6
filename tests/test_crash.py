"""Runs that end badly keep what they made: a baseline update that cannot rewrite its expectations
(empty `setups:`, a read-only folder, a full disk) is refused at start when it can be, and
otherwise publishes the report set first and says in one line which file it could not write; an
xdist worker killed with SIGKILL loses none of the verdicts it had finished, and the run names
it in run.failed (issue 36, cases 4 and 7)."""
import contextlib
import json
import os
import subprocess

import pytest
import yaml

from .test_reportset import _claims


def _run(tmp_path, *args, **kw):
    out = _claims(tmp_path, *args, **kw)
    return out, out.stdout + out.stderr


def _clean(text):
    assert "Traceback" not in text and "INTERNALERROR" not in text, text[-4000:]


def test_update_into_a_file_whose_setups_is_empty_records_it(tmp_path):
    """`setups:` with nothing under it is a file with no sections (load reads it so): the update
    records into it, instead of a raw traceback after every test ran."""
    (tmp_path / "expected").mkdir()
    mine = tmp_path / "expected" / "tiny-llama.yaml"
    mine.write_text("# my notes\nmodel: tiny-llama\nsetups:\n")
    out, text = _run(tmp_path, "--lac-update-baselines")
    _clean(text)
    assert f"lac: wrote {mine}" in text, text[-3000:]
    body = yaml.safe_load(mine.read_text())
    assert body["model"] == "tiny-llama" and body["setups"], body
    assert "# my notes" in mine.read_text()
    run = json.loads((tmp_path / "reports" / "results.json").read_text())["run"]
    assert {n["why"] for n in run["not_run"]} == {"deselected"}, run["not_run"]  # -k: the rest


@contextlib.contextmanager
def _read_only(folder):
    """The folder cannot be written, even by root (who ignores mode bits): chattr +i then."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_expectations_folder_is_refused_at_start(tmp_path):
    """Checked before any test runs (exit 4 naming the folder), not found after every test ran."""
    where = tmp_path / "expected"
    where.mkdir()
    with _read_only(where):
        out, text = _run(tmp_path, "--lac-update-baselines", timeout=300)
        _clean(text)
        assert out.returncode == 4, text[-3000:]
        assert str(where) in text and "cannot write" in text, text[-3000:]
        assert not (tmp_path / "reports" / "results.json").exists()  # no test ran
        assert os.listdir(where) == []  # the probe left nothing


FULL = """
import errno
from lac_core.verdicts import expected

_real = expected._yaml


class _FullDisk:
    '''ruamel's reader as it is; its writer fails as a full disk makes it fail.'''
    def __init__(self):
        self.rt = _real()

    def load(self, *args, **kw):
        return self.rt.load(*args, **kw)

    def dump(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")


expected._yaml = _FullDisk
"""


def test_a_rewrite_that_fails_is_one_error_naming_the_file_after_the_report_is_safe(tmp_path):
    """A full disk while the expectations are rewritten: the report set of the run is already
    published; one lac line names the file and why; the file is as it was; no temporary file is
    left; the run fails."""
    (tmp_path / "expected").mkdir()
    mine = tmp_path / "expected" / "tiny-llama.yaml"
    before = "model: tiny-llama\nsetups: {}\n"
    mine.write_text(before)
    out, text = _run(tmp_path, "--lac-update-baselines", inject=FULL)
    _clean(text)
    assert out.returncode == 1, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("lac:") and str(mine) in line]
    assert len(lines) == 1 and "No space left on device" in lines[0], text[-3000:]
    run = json.loads((tmp_path / "reports" / "results.json").read_text())["run"]
    assert {n["why"] for n in run["not_run"]} == {"deselected"}, run["not_run"]  # this run's set
    assert f"lac: report set written to {tmp_path / 'reports'}" in text, text[-3000:]
    assert mine.read_text() == before
    left = sorted(os.listdir(tmp_path / "expected"))
    assert [n for n in left if n != ".lac-lock"] == ["tiny-llama.yaml"], left  # no temporary file


KILL = """
import os
import signal
from pathlib import Path

MARK = Path(__file__).with_name("killed")


def pytest_runtest_setup(item):
    '''Kill this xdist worker (SIGKILL, once) as the given test starts.'''
    if item.nodeid.endswith(os.environ["LAC_KILL_AT"]) and hasattr(item.config, "workerinput") \\
            and not MARK.exists():
        MARK.write_text(item.config.workerinput["workerid"])
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_keeps_the_verdicts_it_finished_and_is_named(tmp_path, monkeypatch):
    """-n 2 on tiny-llama and tiny-qwen2: the worker running tiny-qwen2 is SIGKILLed as its C4
    test starts, after its C1 verdict and cells. xdist gives the unfinished tests to a new worker;
    the C1 verdict the dead one made is in results.json (it was listed as "did not run"), and
    run.failed names the lost worker and what it held."""
    monkeypatch.setenv("LAC_KILL_AT", "test_c4_no_prompt_compression[tiny-qwen2-example]")
    out, text = _run(tmp_path, "-n", "2", inject=KILL, models=("tiny-llama", "tiny-qwen2"),
                     k="c1_additive or c4_no")
    assert "INTERNALERROR" not in text, text[-4000:]
    dead = (tmp_path / "killed").read_text()  # the kill happened, on this worker
    doc = json.loads((tmp_path / "reports" / "results.json").read_text())
    got = {(v["claim"], v["model"]) for v in doc["verdicts"]}
    assert {("C1", "tiny-qwen2"), ("C4", "tiny-qwen2"), ("C1", "tiny-llama"),
            ("C4", "tiny-llama")} <= got, (got, doc["run"]["not_run"])
    assert {n["why"] for n in doc["run"]["not_run"]} == {"deselected"}, doc["run"]["not_run"]
    lost = [(k, v) for k, v in doc["run"]["failed"].items() if dead in k]
    assert len(lost) == 1, doc["run"]["failed"]
    assert "tiny-qwen2" in lost[0][1] and "test_c4_no_prompt_compression" in lost[0][1], lost
