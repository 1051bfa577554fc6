"""The formalization's first test: the paper's own published per-cell outputs satisfy its claims
as the rules state them (C5 and C6 are INCONCLUSIVE there: the paper ran no null control)."""
import pytest

from lac_core.verdicts import claims as registry
from lac_core.verdicts import paper, rules

EXPECTED_ON_PAPER = {"C1": rules.HOLDS, "C1L": rules.HOLDS, "C2": rules.HOLDS, "C5": rules.INCONCLUSIVE,
                     "C6": rules.INCONCLUSIVE,
                     "C3": rules.HOLDS, "C3R": rules.HOLDS, "C4": rules.HOLDS}


@pytest.fixture(scope="module")
def paper_verdicts(thresholds):
    return paper.verdicts(thresholds)


def test_every_claim_is_replayed(paper_verdicts):
    assert {c for c, _m, _g in paper_verdicts} == set(EXPECTED_ON_PAPER)
    assert len(paper_verdicts) == sum(len(paper.published(c.experiment)) for c in registry.builtin())


@pytest.mark.parametrize("key", sorted(paper.verdicts_keys()), ids=lambda k: "-".join(k))
def test_paper_replay(paper_verdicts, key):
    verdict = paper_verdicts[key]
    assert verdict.status == EXPECTED_ON_PAPER[key[0]], verdict.explain()
    if key[0] in ("C5", "C6"):
        assert all(p.status == rules.INCONCLUSIVE and "no null control" in p.detail for p in verdict.parts)
    if key[0] == "C4":
        assert len(verdict.parts) == 7  # oracle, cached and the five layer sets


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


def test_paper_host_injection_table4():
    h = paper.host_summary()
    t4 = paper.tables()["table4_host_injection_gemma_median_kl_to_target"]
    assert h.median_host == pytest.approx(t4["host_no_substitution"], abs=5e-3)
    assert h.median_kl["oracle"] == pytest.approx(t4["oracle_single_site_L14"], abs=5e-3)
    assert h.median_kl["cached"] == pytest.approx(t4["cached_additive_L14"], abs=5e-3)
    assert h.median_kl["layers 6,8,10,12,14,16,18,20,22"] == pytest.approx(t4["cached_layers_6_to_22"], abs=5e-3)


def test_our_marker_matcher_reproduces_the_papers_hits(thresholds):
    """Re-scoring the paper's 96 published generations gives its own marker hits, text by text."""
    from lac_core.protocol.markers import hits

    data = paper.marker_data()
    for cell, conds in data["results"].items():
        words = data["persona_markers"][cell.split("__")[0]]
        for cond, v in conds.items():
            assert hits(v["text"], words, thresholds.markers.stems) == v["hits"], (cell, cond)
    assert hits("They must indemnify us.", ["indemnif"], ["indemnif"]) == ["indemnif"]
    assert hits("They must indemnify us.", ["indemnif"]) == []  # word-boundary reading: the paper's
