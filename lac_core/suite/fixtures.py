"""The fixtures a claim test uses: the session, the loaded model of each parametrized model, and
each experiment's result on it (computed once, through run/compute.py); a model or experiment
that failed fails its first test with the cause and skips the others that need it."""
# Import-light (the plugin names this module): run/, models/ and torch load inside the fixtures.
from __future__ import annotations

import gc
from dataclasses import dataclass

import pytest

from ..verdicts.kinds import Kind
from .start import session


@pytest.fixture(scope="session")
def lac_session(request):
    """The run's session (run.session.Session): settings, thresholds, results, verdicts."""
    return session(request.config)


@pytest.fixture(scope="session")
def thresholds(lac_session):
    return lac_session.thresholds


@pytest.fixture(scope="session")
def lac_models(lac_session):
    """Loaded models by name, kept for the whole session (tests and benchmarks share them)."""
    from ..models import load

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load(name, lac_session.settings.load_options())
        return loaded[name]

    return get


@dataclass
class LoadFailure:
    """A model that did not load: its first test fails with the cause, the others are skipped."""

    model: str
    cause: str
    reported: bool = False


@pytest.fixture(scope="session")
def lac_loaded(model_name, lac_session):
    """The loaded model (or its LoadFailure), once per model: tests are grouped by model, one
    loaded at a time."""
    from ..run import compute

    try:
        loaded = compute.load_model(lac_session, model_name)
    except Exception as exc:  # noqa: BLE001  any cause: reported once, other models go on
        yield LoadFailure(model_name, f"{type(exc).__name__}: {exc}")
        return
    yield loaded
    del loaded
    gc.collect()


@pytest.fixture
def lm(lac_loaded):
    """The loaded model of this test. A model that did not load fails its first test with the
    cause and skips its other tests (this fixture runs first for every test of a model: every
    result fixture asks for it)."""
    if isinstance(lac_loaded, LoadFailure):
        if not lac_loaded.reported:
            lac_loaded.reported = True
            pytest.fail(f"{lac_loaded.model} failed to load: {lac_loaded.cause}", pytrace=False)
        pytest.skip(f"{lac_loaded.model} failed to load (the cause is reported once, above)")
    return lac_loaded


def experiment(lac_session, lm, grid: str, kind: str):
    """One experiment's result for a test: ExperimentFailed becomes the test's failure (its
    first asker: lac's own errors as one message, any other with its traceback) or a skip."""
    from ..errors import LacError
    from ..run import compute

    try:
        return compute.result(lac_session, lm, grid, kind)
    except compute.ExperimentFailed as exc:
        failed = exc
    if not failed.first:
        pytest.skip(f"needs {' / '.join(failed.key)}, which failed (the cause is reported once, "
                    f"above): {failed.cause[:200]}")
    if failed.original is not None and not isinstance(failed.original, LacError):
        raise failed.original
    pytest.fail(str(failed), pytrace=False)


# Result fixtures are function-scoped: `lm` (which gates a model that did not load) runs first.
@pytest.fixture
def sweep_result(lac_session, lm, sweep_grid):
    """Experiment 1 on this model and grid (verdicts.results.SweepResult)."""
    return experiment(lac_session, lm, sweep_grid, Kind.SWEEP)


@pytest.fixture
def sweep_summary(sweep_result):
    return sweep_result.summary


@pytest.fixture
def marker_result(lac_session, lm, marker_grid):
    """Experiment 2 (verdicts.results.MarkerResult)."""
    return experiment(lac_session, lm, marker_grid, Kind.MARKERS)


@pytest.fixture
def steering_result(lac_session, lm, marker_grid, marker_result):
    """Dose and swap at the marker site (verdicts.results.SteeringResult)."""
    return experiment(lac_session, lm, marker_grid, Kind.STEERING)


@pytest.fixture
def host_result(lac_session, lm, host_grid):
    """Experiments 3 and 4 (verdicts.results.HostResult)."""
    return experiment(lac_session, lm, host_grid, Kind.HOST)
