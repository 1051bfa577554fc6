"""The formalization's first test: the paper's own published per-cell outputs satisfy its claims
as the rules state them (C5 is INCONCLUSIVE there: the paper ran no null control)."""
import pytest

from lac_core import paper, rules

SWEEPS = sorted(paper.SWEEP_FILES)
EXPECTED_ON_PAPER = {"C1": rules.HOLDS, "C1L": rules.HOLDS, "C2": rules.HOLDS, "C5": rules.INCONCLUSIVE}


@pytest.mark.parametrize("claim", sorted(EXPECTED_ON_PAPER))
@pytest.mark.parametrize(("model", "grid"), SWEEPS, ids=[f"{m}-{g}" for m, g in SWEEPS])
def test_paper_sweep_replay(model, grid, claim, thresholds):
    verdict = rules.SWEEP_RULES[claim](paper.sweep_summary(model, grid), thresholds[claim])
    assert verdict.status == EXPECTED_ON_PAPER[claim], verdict.explain()
    if claim == "C5":
        assert "no null control" in verdict.deciding.detail


def test_paper_c5_reason_is_missing_null(thresholds):
    v = rules.c5(paper.sweep_summary("gemma-2-2b-it", "short"), thresholds["C5"])
    assert v.status == rules.INCONCLUSIVE and all(p.status == rules.INCONCLUSIVE for p in v.parts)


def test_paper_table1_medians_match_per_cell_data():
    """Our summaries of the paper's per-cell data reproduce the numbers printed in its Table 1."""
    tables = paper.tables()["table1_short_grid_median_kl"]
    for model, per_probe in tables.items():
        s = paper.sweep_summary(model, "short")
        for probe, per_layer in per_probe.items():
            if probe == "n_layers":
                continue
            for layer, (median, p25, p75) in per_layer.items():
                got = s.kl_add[probe][int(layer)]
                assert got.median == pytest.approx(median, abs=6e-4), (model, probe, layer)
                if p25 is not None:
                    assert (got.p25, got.p75) == pytest.approx((p25, p75), abs=6e-4), (model, probe, layer)


def test_paper_markers_replay(thresholds):
    assert rules.c3(paper.marker_summary(), thresholds["C3"]).status == rules.HOLDS
    assert rules.c3r(paper.marker_summary(), thresholds["C3R"]).status == rules.HOLDS


def test_paper_host_injection_replay(thresholds):
    h = paper.host_summary()
    v = rules.c4(h, thresholds["C4"])
    assert v.status == rules.HOLDS, v.explain()
    assert len(v.parts) == 7  # oracle, cached and the five layer sets
    t4 = paper.tables()["table4_host_injection_gemma_median_kl_to_target"]
    assert h.median_host == pytest.approx(t4["host_no_substitution"], abs=5e-3)
    assert h.median_kl["oracle"] == pytest.approx(t4["oracle_single_site_L14"], abs=5e-3)
    assert h.median_kl["cached"] == pytest.approx(t4["cached_additive_L14"], abs=5e-3)
    assert h.median_kl["layers 6,8,10,12,14,16,18,20,22"] == pytest.approx(t4["cached_layers_6_to_22"], abs=5e-3)


def test_our_marker_matcher_reproduces_the_papers_hits(thresholds):
    """Re-scoring the paper's 96 published generations gives its own marker hits, text by text."""
    from lac_core.markers import hits

    data = paper.marker_data()
    for cell, conds in data["results"].items():
        words = data["persona_markers"][cell.split("__")[0]]
        for cond, v in conds.items():
            assert hits(v["text"], words, thresholds["markers"]["stems"]) == v["hits"], (cell, cond)
    assert hits("They must indemnify us.", ["indemnif"], ["indemnif"]) == ["indemnif"]
    assert hits("They must indemnify us.", ["indemnif"]) == []  # word-boundary reading: the paper's
