"""C2: cos(dX, dY) stays well below cos(dXY, dX + dY): persona and task directions are partially
separable, and their sum points where the composite goes (every swept layer, p_last/g1/g2)."""
import numpy as np

from lac_core import rules


def test_c2_partial_orthogonality(lm, grid_name, sweep_summary, thresholds, claim_gate):
    claim_gate("C2", rules.c2(sweep_summary, thresholds["C2"]), lm.spec.name, grid_name)


def test_cell_sum_beats_alignment(lm, grid_name, cell_id, sweep_result, thresholds, cell_gate):
    """Per cell, at every swept layer and probe: cos(dXY, dX + dY) > cos(dX, dY)."""
    ci = sweep_result.cells.index(cell_id)
    problems = []
    for probe in thresholds["C2"]["probes"]:
        pi = sweep_result.probes.index(probe)
        for layer in sweep_result.layers:
            s = sweep_result.geometry["cos_xy_sum"][ci, pi, layer]
            xy = sweep_result.geometry["cos_x_y"][ci, pi, layer]
            if not (np.isfinite(s) and np.isfinite(xy)):
                problems.append(f"{probe} L{layer}: undefined angle (a delta is zero)")
            elif s <= xy:
                problems.append(f"{probe} L{layer}: cos(dXY,dX+dY) {s:.3f} <= cos(dX,dY) {xy:.3f}")
    cell_gate("sum_beats_alignment", lm.spec.name, grid_name, cell_id, problems)
