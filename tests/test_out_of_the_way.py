"""Installed, lac's plugin loads into every pytest run of the environment. In a project with no
lac test it only registers its options: no heavy import, no session or preflight (so a bad lac
setting cannot fail someone else's run), no change to xdist's scheduling, no autouse fixture, no
line printed and no file written."""
import os
import sys

import pytest

HEAVY = ("torch", "transformers", "numpy", "matplotlib")

PROJECT = {
    "test_unrelated.py": f"""
import sys


def test_nothing_heavy_and_no_fixture_of_lacs(request):
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    assert not heavy, heavy
    assert set(request.fixturenames) == {{"request"}}, request.fixturenames
""",
    "conftest.py": """
def pytest_sessionfinish(session):
    dsession = session.config.pluginmanager.getplugin("dsession")
    if dsession is not None:  # the xdist controller: which scheduler ran the tests
        with open("scheduler.txt", "w") as f:
            f.write(type(dsession.sched).__name__)
""",
}


@pytest.fixture
def unrelated(pytester, tmp_path, monkeypatch):
    """A one-test project, run with settings that would stop any lac run at once."""
    pytester.makepyfile(**{k.removesuffix(".py"): v for k, v in PROJECT.items()})
    cache = tmp_path / "lac-cache"
    cache.mkdir()
    monkeypatch.setenv("LAC_OFFLINE", "1")  # and no weights cached: a lac run would refuse
    monkeypatch.setenv("LAC_CACHE_DIR", str(cache))
    monkeypatch.setenv("LAC_DEVICE", "no-such-device")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # this checkout's lac_core
    return pytester, cache


NOT_LACS = {"stdout", "stderr", ".benchmarks", "__pycache__"}  # pytester's, pytest-benchmark's


def _files(root):
    """Files under root, but for pytester's captures and base temp and pytest-benchmark's."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not NOT_LACS & set(p.relative_to(root).parts)
                  and not p.relative_to(root).parts[0].startswith("runpytest-"))


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_an_unrelated_project_sees_only_the_options(unrelated, workers):
    pytester, cache = unrelated
    before = _files(pytester.path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "lac_core.suite.plugin",
                                           *workers)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    out = result.stdout.lines + result.stderr.lines
    assert not [x for x in out if x.lstrip().lower().startswith("lac")], out
    written = sorted(set(_files(pytester.path)) - set(before))
    assert written == (["scheduler.txt"] if workers else []), written
    if workers:  # xdist's own scheduler for its default --dist load, not lac's by-model one
        assert (pytester.path / "scheduler.txt").read_text() == "LoadScheduling"
    assert not any(cache.iterdir())


def test_the_options_are_still_there(unrelated):
    pytester, _ = unrelated
    result = pytester.runpytest_subprocess("-p", "lac_core.suite.plugin", "--help")
    assert result.ret == 0
    assert "--lac-model" in result.stdout.str() and "--lac-reports" in result.stdout.str()


def test_a_project_holding_the_venv_lac_is_installed_in_is_not_a_lac_run(tmp_path, monkeypatch):
    """lac installed in project/.venv: running pytest on the project must keep xdist's own
    scheduling (pytest does not collect a venv), while lac's claims named by path or by
    --pyargs are a lac run."""
    from types import SimpleNamespace

    from lac_core import paths
    from lac_core.suite.start import lac_tests_named

    site = tmp_path / "project" / ".venv" / "lib" / "site-packages"
    (site / "lac_core" / "claims").mkdir(parents=True)
    monkeypatch.setattr(paths, "ROOT", site)
    monkeypatch.setattr(paths, "CORE", site / "lac_core")

    def named(*args):
        config = SimpleNamespace(args=list(args), invocation_params=SimpleNamespace(
            args=tuple(args), dir=tmp_path / "project"))
        return lac_tests_named(config)

    assert not named(str(tmp_path / "project")) and not named(".")
    assert named("lac_core.claims") and named(str(site / "lac_core" / "claims"))
