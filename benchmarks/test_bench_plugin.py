"""What installing lac costs a pytest run that has nothing to do with it: a one-test project
timed with lac's plugin (loaded by its pytest11 entry point) and without it
(`-p no:lac_core.suite.plugin`), alternating, in one session. Target: at most 1.10x."""
import os
import statistics
import subprocess
import sys
import time

from .conftest import TABLES

PLUGIN_OFF = ["-p", "no:lac_core.suite.plugin"]


def _project(root):
    (root / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    return root


def _once(root, extra) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's lac_core
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
                         cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr
    return seconds


def test_unrelated_project_with_and_without_lac(benchmark, tmp_path, rounds):
    root = _project(tmp_path)
    times = {"with lac": [], "without lac": []}

    def alternate():
        _once(root, []), _once(root, PLUGIN_OFF)  # warm the file cache for both
        for _ in range(4 * rounds):
            times["with lac"].append(_once(root, []))
            times["without lac"].append(_once(root, PLUGIN_OFF))

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    paired = statistics.median(w / o for w, o in zip(times["with lac"], times["without lac"]))
    of_minima = min(times["with lac"]) / min(times["without lac"])
    benchmark.extra_info.update(median_paired_ratio=round(paired, 3),
                                ratio_of_minima=round(of_minima, 3))
    TABLES["an unrelated project with lac installed (alternating, same run)"] = [
        f"with lac {min(times['with lac']):.2f} s, without {min(times['without lac']):.2f} s "
        f"(minima of {4 * rounds}); ratio of minima {of_minima:.3f}, median paired ratio "
        f"{paired:.3f} (target <= 1.10)"]
    assert of_minima <= 1.10, times
