"""C1: near answer formation, h_BB + dX + dY substituted in an early/mid layer leaves the output
essentially clean (median 10-token KL <= 0.1 nats at p_last, g1 and g2), on both grids."""
from lac_core import rules


def test_c1_additive_sufficiency(lm, grid_name, sweep_summary, thresholds, claim_gate):
    claim_gate("C1", rules.c1(sweep_summary, thresholds["C1"]), lm.spec.name, grid_name)


def test_cell_additive_no_worse_than_null(lm, grid_name, cell_id, sweep_result, thresholds, cell_gate):
    """Per cell, at the layer where C1 is decided for each probe: a finite, non-negative KL, and the
    additive prediction costs no more than substituting h_BB alone (beyond a small tolerance)."""
    summary = sweep_result.summary()
    tol = thresholds["per_cell"]["additive_vs_null_tolerance"]
    floor = thresholds["per_cell"]["kl_floor"]
    problems = []
    for probe in thresholds["C1"]["probes"]:
        part = next(p for p in rules.c1(summary, thresholds["C1"]).parts if p.name == probe)
        layer = part.numbers.get("layer")
        if layer is None:
            continue
        add = sweep_result.cell_kl("additive", cell_id, probe, layer)
        null = sweep_result.cell_kl("null", cell_id, probe, layer)
        if not (add >= floor and null >= floor):
            problems.append(f"{probe} L{layer}: KL below {floor} (additive {add}, null {null})")
        elif add > null + tol:
            problems.append(f"{probe} L{layer}: additive KL {add:.4f} > null KL {null:.4f} + {tol}")
    cell_gate("additive_vs_null", lm.spec.name, grid_name, cell_id, problems)
