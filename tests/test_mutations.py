"""Engine mutations: each plants one bug in the hooks (a capture scaled, from the layer above, at
the next position; a substitution written to a copy, at the next position, skipped at one layer,
shifted together with its read-back) and must stop the sweep, naming the check that stops it.
The capture checks and the substitution check compare against paths that share no code with the
hooks (engine/crosscheck.py), so a bug repeated in the read-back cannot hide from them."""
from contextlib import contextmanager

import pytest

from lac_core.engine import forward, hooks
from lac_core.engine.forward import Engine
from lac_core.errors import InterventionError, InvarianceError, LacError
from lac_core.protocol import experiments
from lac_core.protocol.grids import resolve_grid

from .test_interventions import _to_a_copy, _wrong_position as _at_the_next  # broken writes

GRID = resolve_grid("example")
LAYERS, PROBES = (2, 5), ("p_last", "g2")  # two swept layers and probes: fast, every path taken
NAMES = {InterventionError: "substitution audit", InvarianceError: "invariance checks"}


@pytest.fixture(scope="module")
def lm(lac_models):
    return lac_models("tiny-llama")


def stopped_by(lm) -> tuple[str, LacError | None]:
    """The check that stopped a sweep on `lm` (its `check`, else its kind), and its error;
    ("nothing", None) when the sweep completed."""
    try:
        experiments.sweep(Engine(lm), GRID, layers=LAYERS, probes=PROBES)
    except LacError as exc:
        return getattr(exc, "check", None) or NAMES.get(type(exc), type(exc).__name__), exc
    return "nothing", None


# --- capture mutations: the engine's capture replaced by a broken one ------------------------

ORIGINAL_CAPTURE = hooks.capture


def _broken_capture(monkeypatch, broken):
    monkeypatch.setattr(hooks, "capture", broken)
    monkeypatch.setattr(forward, "capture_hook", broken)  # the engine's own reference to it


@contextmanager
def _scaled(layers, layer_ids, index=None, check_finite=True):
    """Every captured residual x 1.01."""
    with ORIGINAL_CAPTURE(layers, layer_ids, index, check_finite) as store:
        yield store
        for layer in store:
            store[layer][:] = [t * 1.01 for t in store[layer]]


@contextmanager
def _from_the_layer_above(layers, layer_ids, index=None, check_finite=True):
    """Layer l's capture reads the residual entering l + 1 (the top layer its own)."""
    above = {layer: min(layer + 1, len(layers) - 1) for layer in layer_ids}
    with ORIGINAL_CAPTURE(layers, sorted(set(above.values())), index, check_finite) as store:
        yield {layer: store[a] for layer, a in above.items()}


@contextmanager
def _at_the_next_position(layers, layer_ids, index=None, check_finite=True):
    """Each indexed position's capture reads the position after it (the last one its own)."""
    store = {layer: [] for layer in layer_ids}
    with ORIGINAL_CAPTURE(layers, layer_ids, None, check_finite) as full:
        yield store
    for layer in layer_ids:
        for h in full[layer]:
            if index is not None:
                at = (index + 1).clamp(max=h.shape[1] - 1).to(h.device)
                h = h.gather(1, at.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            store[layer].append(h)


def test_a_capture_scaled_by_1_01_stops_the_sweep(lm, monkeypatch):
    _broken_capture(monkeypatch, _scaled)
    check, exc = stopped_by(lm)
    assert check == "capture check", check
    assert "relative difference 0.01" in str(exc) and exc.layer is not None


def test_a_capture_from_the_layer_above_stops_the_sweep(lm, monkeypatch):
    _broken_capture(monkeypatch, _from_the_layer_above)
    check, exc = stopped_by(lm)
    assert check == "capture check", check
    assert exc.layer < lm.n_layers - 1  # the top layer reads its own: never the one named


def test_a_capture_at_the_next_position_stops_the_sweep(lm, monkeypatch):
    _broken_capture(monkeypatch, _at_the_next_position)
    check, exc = stopped_by(lm)
    assert check == "capture check", check
    assert f"position {exc.position} (" in str(exc)


# --- substitution mutations: the write (and maybe its read-back) broken ----------------------

ORIGINAL_READ_BACK, ORIGINAL_SUBSTITUTE = hooks._read_back, hooks.substitute


def _next_position(positions, n):
    return (positions + 1) % n  # as test_interventions._wrong_position writes


def _read_back_at_the_next(layer, rows, positions, vectors, audit, seen):
    """The read-back moved with the write: it checks the position the write went to."""
    def hook(module, args, kwargs, output):
        n = hooks.hidden_of(args, kwargs).shape[1]
        return ORIGINAL_READ_BACK(layer, rows, _next_position(positions, n), vectors, audit,
                                  seen)(module, args, kwargs, output)
    return hook


def _blind_read_back(layer, rows, positions, vectors, audit, seen):
    """A read-back that reads where a broken write went (its copy): it always agrees."""
    def hook(module, args, kwargs, output):
        audit.checked += len(rows)
        seen.add(layer)
    return hook


SKIPPED = LAYERS[1]


def _skipping_one_layer(layers, subs_per_row, audit=None):
    """Every substitution at SKIPPED dropped, counted as read back (a loop one layer short)."""
    kept = [[s for s in row if s.layer != SKIPPED] for row in subs_per_row]
    dropped = sum(len(row) for row in subs_per_row) - sum(len(row) for row in kept)
    audit = hooks.Audit() if audit is None else audit
    audit.checked += dropped
    return ORIGINAL_SUBSTITUTE(layers, kept, audit)


def _substitution_check_stops(lm) -> None:
    """The substitution check (sharing no code with the hooks) stops the sweep, naming a swept
    layer and the position lac meant to write."""
    check, exc = stopped_by(lm)
    assert check == "substitution check", check
    assert exc.layer in LAYERS and f"position {exc.position} (p_last)" in str(exc)


def test_a_substitution_written_to_a_copy_stops_the_sweep(lm, monkeypatch):
    monkeypatch.setattr(hooks, "write_hook", _to_a_copy)
    check, exc = stopped_by(lm)
    assert check == "substitution audit" and "did not land" in str(exc), check
    monkeypatch.setattr(hooks, "_read_back", _blind_read_back)  # the audit fooled as well
    _substitution_check_stops(lm)


def test_a_substitution_written_at_the_next_position_stops_the_sweep(lm, monkeypatch):
    monkeypatch.setattr(hooks, "write_hook", _at_the_next)
    check, exc = stopped_by(lm)
    assert check == "substitution audit" and "did not land" in str(exc), check
    monkeypatch.setattr(hooks, "_read_back", _blind_read_back)
    _substitution_check_stops(lm)


def test_a_substitution_skipped_at_one_layer_stops_the_sweep(lm, monkeypatch):
    monkeypatch.setattr(forward, "substitute", _skipping_one_layer)
    check, exc = stopped_by(lm)
    assert check == "substitution check" and exc.layer == SKIPPED, check


def test_a_substitution_shifted_together_with_its_read_back_stops_the_sweep(lm, monkeypatch):
    monkeypatch.setattr(hooks, "write_hook", _at_the_next)
    monkeypatch.setattr(hooks, "_read_back", _read_back_at_the_next)
    _substitution_check_stops(lm)


def test_the_unbroken_engine_passes_every_check_and_records_them(lm):
    """The checks stop nothing on the engine as it is, and say what they compared."""
    cross = experiments.sweep(Engine(lm), GRID, layers=LAYERS, probes=PROBES).checks["cross"]
    assert cross["max_relative_difference"]["capture"] == 0.0
    assert cross["max_relative_difference"]["substitution"] == 0.0
    assert cross["max_relative_difference"]["sweep_capture"] <= cross["tolerance"]["sweep_capture"]
    assert tuple(cross["substitution_layers"]) == LAYERS and cross["cell"] == GRID.cells[0].id
