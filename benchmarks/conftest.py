"""Benchmark wiring: which models to time, and the ratios printed (and saved) at the end.

Ratios are taken between benchmarks of the same session and group (minimum of the rounds),
never against wall-clock constants: this machine's speed varies up to 6x between runs.
"""
import json
import threading
import time

import pytest

from lac_core.suite.start import session
from lac_core.report.reportset import check, publish


RESULTS: dict[str, dict] = {}  # group -> name -> {"min": s, **extra}
TABLES: dict[str, list[str]] = {}  # title -> lines printed as they are at the end (and saved)


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true",
                     help="CI mode: tiny model only, fewer rounds (numbers are indicative)")
    parser.addoption("--bench-rss", action="store_true",
                     help="also measure the peak RSS of lac's long-grid sweep on "
                          "Qwen2.5-Coder-0.5B (slow: tens of minutes on 2 cores)")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Start lac's session now (benchmarks name no lac option, so the plugin would wait for the
    first lac fixture) and refuse, at start, to replace a benchmarks.json lac did not write."""
    settings = session(config).settings
    check(settings.report_dir, ["benchmarks.json"], settings.reports_overwrite)


def pytest_generate_tests(metafunc):
    if "bench_model" in metafunc.fixturenames:
        quick = metafunc.config.getoption("--bench-quick")
        models = ["tiny-llama"] + ([] if quick else ["smollm2-135m-instruct"])
        metafunc.parametrize("bench_model", models, scope="session")


@pytest.fixture(scope="session")
def bench_lm(bench_model, lac_models):
    return lac_models(bench_model)


@pytest.fixture(scope="session")
def rounds(request):
    return 3 if request.config.getoption("--bench-quick") else 10


@pytest.fixture
def record():
    """record(group, name, benchmark, **extra): keep the minimum time for the ratio table."""

    def rec(group, name, benchmark, **extra):
        stats = benchmark.stats.stats if hasattr(benchmark.stats, "stats") else benchmark.stats
        RESULTS.setdefault(group, {})[name] = {"min": stats.min, **extra}
        benchmark.extra_info.update(extra)

    return rec


class PeakRSS:
    """Peak resident memory (MB) of this process while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    @property
    def delta(self) -> float:
        return round(self.peak - self.start, 1)


@pytest.fixture
def peak_rss():
    return PeakRSS


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    for title, lines in TABLES.items():
        tr.section(title)
        for line in lines:
            tr.write_line(line)
    if not RESULTS:
        return
    tr.section("lac benchmark ratios (same run; min of rounds)")
    for group, rows in sorted(RESULTS.items()):
        base_name = next(iter(rows))
        base = rows[base_name]["min"]
        for name, row in rows.items():
            extra = {k: v for k, v in row.items() if k != "min"}
            tr.write_line(f"{group:40} {name:28} {row['min'] * 1e3:10.2f} ms  x{row['min'] / base:6.3f} "
                          f"vs {base_name}  {extra if extra else ''}")
    text = json.dumps({**RESULTS, "tables": TABLES} if TABLES else RESULTS, indent=1)
    publish(session(terminalreporter.config).settings.report_dir,
            {"benchmarks.json": lambda path: path.write_text(text)})
