"""The time-left estimate of a long experiment follows the work, not the count of steps: on a
grid whose prompts vary 50x in length it is within 2x of the truth at halfway."""
import re

import pytest

from lac_core.engine import forward as engine_module
from lac_core.protocol import experiments
from lac_core.run import progress
from lac_core.engine.forward import Engine
from lac_core.protocol.grids import load_grid
from lac_core.models import load
from lac_core.protocol.templates import ChatTemplate, attach

LINE = re.compile(r": (\d+)% after (\d+) s, about (\d+) s left")


def _grid(tmp_path):
    long_persona = " ".join(["a sailor who has crossed every ocean and charted every coast"] * 26)
    (tmp_path / "varied.yaml").write_text(
        "baseline: {persona: a person, task: Help.}\n"
        f"personas: {{short: a cook, long: '{long_persona}', mid: a pilot}}\n"
        "tasks: {bake: Bake., tax: Explain taxes.}\n")
    return load_grid(tmp_path / "varied.yaml")


@pytest.mark.parametrize("experiment", ["sweep", "markers", "host"])
def test_time_left_is_within_2x_at_halfway(tmp_path, monkeypatch, experiment):
    lm = attach(load("tiny-llama"), ChatTemplate("raw"))
    grid = _grid(tmp_path)
    lengths = sorted(len(lm.tokenizer(grid.user_text(c, "XY"))["input_ids"]) for c in grid.cells)
    assert lengths[-1] >= 50 * lengths[0] / 2  # prompts whose lengths vary by tens of times
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    real = engine_module.Engine.run_model

    def timed(self, ids, start_layer=0, *args, **kw):  # time = the work each call does
        clock[0] += ids.shape[0] * ids.shape[1] * (lm.n_layers - start_layer) * 1e-2
        return real(self, ids, start_layer, *args, **kw)

    monkeypatch.setattr(engine_module.Engine, "run_model", timed)
    lines = []
    bar = progress.Progress(lines.append, interval=0.0)
    eng = Engine(lm, progress=bar)
    bar.start(experiment)
    if experiment == "sweep":
        experiments.sweep(eng, grid, probes=("p_last", "g1"))
    elif experiment == "markers":
        experiments.markers(eng, _with_markers(grid), n_new=20)
    else:
        experiments.host_injection(eng, grid)
    total = clock[0]
    seen = [(float(m[2]), float(m[3])) for m in map(LINE.search, lines) if m]
    assert seen, lines
    spent, left = min(seen, key=lambda s: abs(s[0] - total / 2))
    truth = total - spent
    assert 0.5 <= left / truth <= 2, (spent, left, truth, total, lines[:5])


def _with_markers(grid):
    from dataclasses import replace

    return replace(grid, markers={k: ["sea"] for k in grid.personas},
                   experiments=("sweep", "markers", "host"))


def _etas(monkeypatch, rates, step=1.0):
    """The time-left lines of a part whose work goes at `rates[i]` (fraction per second) during
    second i, on a fake clock: the ETAs it shows, in order."""
    clock, said = [0.0], []
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    p = progress.Progress(say=said.append)
    p.start("part")
    done = 0.0
    for rate in rates:
        clock[0] += step
        done = min(done + rate * step, 0.999)
        p.tick(done)
    return [int(m.group(3)) for line in said if (m := LINE.search(line))]


def test_time_left_does_not_keep_rising_when_the_machine_gets_busy(monkeypatch):
    """Issue 35.2: another job takes the CPU a quarter of the way in and the work goes 4x slower
    from then on. The estimate jumps once to the new pace, then falls as the work goes on (the
    average since the start kept rising for minutes: 'about 50 s left' ... 'about 297 s left')."""
    etas = _etas(monkeypatch, [0.01] * 25 + [0.0025] * 200)
    after = etas[2:]  # the lines once the slowdown began and a window has passed
    assert after and all(b <= a + 1 for a, b in zip(after[3:], after[4:])), etas
    truth = (1 - 0.25) / 0.0025  # at the moment of the slowdown: 300 s left
    assert max(after) <= 1.2 * truth, etas


def test_time_left_on_a_steady_machine_is_the_plain_estimate(monkeypatch):
    etas = _etas(monkeypatch, [0.004] * 200)
    for i, eta in enumerate(etas, 1):  # at 10 s, 20 s, ...: done 0.04 i, left (1 - f) / 0.004
        assert abs(eta - (1 - 0.04 * i) / 0.004) <= 1, etas
