"""Proof that interventions ran: every substitution is read back from the input its layer ran on
(hooks.Audit), and the identity check compares like with like, so it is exact in every dtype."""
import pytest
import torch

from lac_core.protocol import experiments, steering
from lac_core.engine import hooks
from lac_core.engine.forward import Engine
from lac_core.errors import InterventionError
from lac_core.protocol.grids import resolve_grid
from lac_core.engine.hooks import Sub, start_at, substitute
from lac_core.models import load
from lac_core.run.settings import Settings

GRID = resolve_grid("example")


def _noop(rows, positions, vectors):
    """A write hook that runs and leaves the residual as it was: as if it never fired."""
    return lambda module, args, kwargs: None


def _wrong_position(rows, positions, vectors):
    """Writes the vector one position off (wrapping at the end)."""
    def hook(module, args, kwargs):
        h = hooks.hidden_of(args, kwargs).clone()
        h[rows, (positions + 1) % h.shape[1]] = hooks.on_layer(vectors, h)
        return hooks.with_hidden(args, kwargs, h)
    return hook


def _to_a_copy(rows, positions, vectors):
    """Writes the vector into a copy of the residual and hands the layer the original."""
    def hook(module, args, kwargs):
        h = hooks.hidden_of(args, kwargs).clone()
        h[rows, positions] = hooks.on_layer(vectors, h)
        return None
    return hook


BROKEN = {"never fires": _noop, "wrong position": _wrong_position, "writes to a copy": _to_a_copy}


@pytest.mark.parametrize("broken, experiment", [  # markers continue one position: none is wrong
    (b, e) for b in BROKEN for e in ("sweep", "markers", "host")
    if (b, e) != ("wrong position", "markers")])
def test_a_substitution_that_does_not_land_stops_the_experiment(tiny, monkeypatch, broken,
                                                                experiment):
    monkeypatch.setattr(hooks, "write_hook", BROKEN[broken])
    run = {"sweep": lambda e: experiments.sweep(e, GRID),
           "markers": lambda e: experiments.markers(e, GRID),
           "host": lambda e: experiments.host_injection(e, GRID)}[experiment]
    with pytest.raises(InterventionError, match="did not land"):
        run(Engine(tiny))


def test_a_substitution_below_the_start_layer_never_lands(tiny):
    """A layer swapped out (start_at) never runs its hooks: its substitution is an error."""
    seq = torch.tensor([[5, 6, 7, 8]])
    hidden = torch.zeros(1, 4, tiny.d_model)
    with pytest.raises(InterventionError, match=r"layers \[1\] never reached their layer"):
        with substitute(tiny.layers, [[Sub(1, 0, hidden[0, 0])]]), start_at(tiny.layers, 3, hidden), \
                torch.inference_mode():  # the engine's order: substitutions, then the start
            tiny.model(seq)


def test_every_planned_substitution_is_read_back_and_recorded(tiny):
    eng = Engine(tiny)
    sweep = experiments.sweep(eng, GRID)
    assert sweep.audit["substitutions_read_back"] == 2 * sweep.kl_add.size  # additive and null
    marker = experiments.markers(eng, GRID)  # the same engine: counts are per experiment
    assert marker.audit["substitutions_read_back"] == 2 * len(GRID.cells)
    host = experiments.host_injection(eng, GRID)
    per_cell = 2 + sum(len(s) for s in host.layer_sets)
    assert host.audit["substitutions_read_back"] == per_cell * len(GRID.cells)
    steer = steering.steering(eng, GRID, marker)
    assert steer.audit["substitutions_read_back"] > 0
    assert sweep.checks["audit"]["substitutions_read_back"] > 0  # the invariance runs, too


def test_a_planned_substitution_that_is_missing_is_an_error():
    audit = hooks.Audit(checked=3)
    with pytest.raises(InterventionError, match="4 substitutions were planned and 3 read back"):
        audit.expect(4, "sweep")
    assert audit.expect(1, "sweep", since={"substitutions_read_back": 2, "forward_calls": 0}) == \
        {"substitutions_read_back": 1, "forward_calls": 0}


@pytest.mark.slow
@pytest.mark.real_model
def test_identity_check_is_exact_in_bfloat16():
    """h_XY written back over itself, scored against the same path without it: KL exactly 0.
    (Scored against the greedy reference pass, as before, bfloat16 gave 0.004-0.01 nats here.)"""
    lm = load("smollm2-135m-instruct", Settings(dtype="bfloat16").load_options())
    assert lm.dtype == torch.bfloat16
    checks = experiments.sweep(Engine(lm), GRID).checks
    assert checks["identity_max_kl"] == 0.0 and checks["tolerance"]["identity"] == 0.0
    assert checks["tokens_equal"] and checks["audit"]["substitutions_read_back"] > 0
