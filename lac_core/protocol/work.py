"""The work each experiment plans, in token-layers (positions x decoder layers run), for its
time-left estimate (engine.Work): estimates from the prompts' lengths that follow what the plans
run. They need not be exact, only proportional to the time within a small factor: measured
against the work done on prompts varying 50x in length, the time left is within 2x at halfway
(tests/test_progress.py)."""
from __future__ import annotations

from ..engine.prefixes import layout
from .prompts import CONDITIONS, FORCED, N_REF, WINDOW, window_start


def pass_work(seqs, n_layers: int) -> int:
    """One prompt pass over the distinct `seqs`, shared prefixes once, as the engine lays them
    out (prefixes.layout)."""
    keys = [list(k) for k in dict.fromkeys(tuple(s) for s in seqs)]
    if not keys:
        return 0
    return layout(keys, 1).positions([len(k) for k in keys]) * n_layers


def _windows_work(prompts, probes, layers, n_layers: int, runs: int) -> int:
    return runs * sum((window_start(cp["XY"], p) + WINDOW - cp["XY"].position(p)) * (n_layers - k)
                      for cp in prompts for p in probes for k in layers)


def sweep_work(prompts, probes, layers, n_layers: int, plan: str) -> int:
    """The reference pass and its 11 decode steps, the other conditions' prompts and their
    forced tokens, two substituted runs per site from its layer up; and all of that again for
    the first cell alone (with the identity runs). The naive plan runs every site in full."""
    def one(cells, runs):
        if plan == "naive":
            return sum((len(cp["XY"].ids) + N_REF) * n_layers * (1 + 4) + sum(
                (window_start(cp["XY"], p) + WINDOW) * n_layers * (1 + runs * len(layers))
                for p in probes) for cp in cells)
        others = [cp[c].ids for cp in cells for c in CONDITIONS if c != "XY"]
        return (pass_work([cp["XY"].ids for cp in cells], n_layers)
                + len(cells) * (N_REF - 1 + 3 * FORCED) * n_layers + pass_work(others, n_layers)
                + _windows_work(cells, probes, layers, n_layers, runs))
    return one(prompts, 2) + one(prompts[:1], 4)


def generation_work(rows: int, n_new: int, n_layers: int) -> int:
    return rows * n_new * n_layers
