"""The resume cache: a run killed after its first experiment, rerun, gives the results of an
uninterrupted run; a damaged or foreign entry is recomputed and replaced; --lac-no-cache ignores
it."""
import json
import os
import pickle
import signal
import subprocess
import sys

from lac_core.resume import ResultCache
from lac_core.settings import ROOT

ARGS = ["-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--model", "tiny-llama",
        "--grid", "example", "-k", "c1_additive or c4_no"]  # two experiments: sweep, then host


def _cmd(tmp_path, name, *extra):
    return [sys.executable, *ARGS, "--lac-reports", str(tmp_path / name), *extra]


def _env(tmp_path):
    return {**os.environ, "LAC_CACHE_DIR": str(tmp_path / "cache"),  # tiny models need no weights
            "PYTHONUNBUFFERED": "1"}


def _results(tmp_path, name) -> dict:
    doc = json.loads((tmp_path / name / "results.json").read_text())
    doc.pop("run")
    return doc


def test_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    full = subprocess.run(_cmd(tmp_path, "full", "--lac-no-cache"), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stdout[-3000:]
    assert not (tmp_path / "cache" / "results").exists()  # --lac-no-cache writes nothing either
    proc = subprocess.Popen(_cmd(tmp_path, "killed"), cwd=ROOT, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # kill it as soon as its first experiment is done
        seen.append(line)
        if "example sweep: done" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert list((tmp_path / "cache" / "results").glob("*.pkl"))  # kept before "done" was said
    again = subprocess.run(_cmd(tmp_path, "again"), cwd=ROOT, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "example / sweep: from the resume cache" in again.stdout
    assert _results(tmp_path, "again") == _results(tmp_path, "full")
    run = json.loads((tmp_path / "again" / "results.json").read_text())["run"]
    assert "tiny-llama / example / sweep" in run["from_resume_cache"]
    assert "came from the resume cache" in (tmp_path / "again" / "REPORT.md").read_text()


def test_damaged_or_foreign_entries_are_recomputed(tmp_path):
    cache, name = ResultCache(tmp_path), ("m", "g", "sweep")
    key = {"model": "m", "grid": "abc"}
    cache.put(name, key, {"numbers": [1, 2]}, "run1")
    assert cache.get(name, key) == {"numbers": [1, 2]} and cache.used[name] == "run1"
    assert cache.get(name, {**key, "grid": "other"}) is None  # another key: another file
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:10])  # truncated
    assert cache.get(name, key) is None and "not used" in cache.notes[-1]
    path.write_bytes(pickle.dumps({"key": {"model": "x"}, "run_id": "r", "result": 1}))
    assert cache.get(name, key) is None and "another key" in cache.notes[-1]
    cache.put(name, key, {"numbers": [3]}, "run2")  # replaced
    assert cache.get(name, key) == {"numbers": [3]}
    assert ResultCache(None).get(name, key) is None  # --lac-no-cache
    assert ResultCache(tmp_path).get(("m", "g", "residuals"), key) is None  # never cached
