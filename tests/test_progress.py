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
