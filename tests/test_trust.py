"""A verdict you can trust: each row of the trust issue done as a user would, its outcome asserted.
Rows: 1 identities, 2 report folder ownership, 3 run status, 4 partial baseline updates, 5 the
report set as a whole, 6 damaged models, 7 usage errors, 8 non-finite values, 11 failure
messages, plus provenance, intervals and determinism."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lac_core.protocol import experiments, plans
from lac_core.report import reportset
from lac_core.engine.forward import Engine
from lac_core.errors import ChecksumError, LacError, NonFiniteResidualError, UnknownModelError
from lac_core.verdicts.expected import file_for
from lac_core.protocol.grids import resolve_grid
from lac_core.models import REGISTRY, fetch, gguf_path, resolve
from lac_core.run.settings import ROOT, Settings

EXAMPLE = resolve_grid("example").key


def _claims(tmp_path, *args, reports="reports", env=None):
    (tmp_path / "expected").mkdir(exist_ok=True)  # an empty folder of the user's: lac's shipped
    # expectations still apply beneath it (docs/report.md), the paper's rules where none is shipped
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-rfs", "-p", "no:cacheprovider", "--lac-grid",
           "example", "--lac-expected-dir", str(tmp_path / "expected"), "--lac-reports",
           str(tmp_path / reports), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def _unrecorded_grid(tmp_path) -> str:
    """The example grid with one task reworded: a grid ('mine') no shipped expectation covers, so
    tiny-llama's failing claims fail there (on the example grid they are expected: xfail)."""
    from lac_core.paths import GRID_DIR

    mine = tmp_path / "mine.yaml"
    mine.write_text((GRID_DIR / "example.yaml").read_text().replace("bake a loaf", "bake a cake"))
    return str(mine)


def _checkpoint(lac_models, path, bump=0.0):
    lm = lac_models("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    if bump:
        from safetensors.torch import load_file, save_file

        sd = load_file(path / "model.safetensors")
        sd["lm_head.weight"] += bump
        save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_row1_different_models_never_share_a_key_or_a_file(tmp_path, lac_models):
    a = _checkpoint(lac_models, tmp_path / "a" / "model")
    b = _checkpoint(lac_models, tmp_path / "b" / "model", bump=0.5)
    named = _checkpoint(lac_models, tmp_path / "c" / "smollm2-135m-instruct")
    ids = [resolve(str(p)).name for p in (a, b, named)]
    assert len(set(ids)) == 3 and all(i.split("@")[0] in ("model", "smollm2-135m-instruct") for i in ids)
    assert "smollm2-135m-instruct" not in ids  # a directory named like a registry model is not it
    assert len({file_for(i, tmp_path) for i in (*ids, "smollm2-135m-instruct")}) == 4
    out = _claims(tmp_path, "--lac-model", str(a), "--lac-model", str(b), "--lac-update-baselines")
    assert out.stdout.count("lac: wrote") == 2
    written = sorted(p.name for p in (tmp_path / "expected").glob("*.yaml"))
    assert written == sorted(file_for(i, tmp_path).name for i in ids[:2])


def test_row2_lac_replaces_only_what_it_wrote(tmp_path):
    mine = tmp_path / "reports"
    (mine / "figures").mkdir(parents=True)
    (mine / "results_mine.json").write_text("{}")
    (mine / "figures" / "mine.png").write_bytes(b"png")
    (mine / "results.json").write_text('{"my": "own results"}')
    out = _claims(tmp_path, "--lac-model", "tiny-llama")
    assert out.returncode == 4 and "results.json exists and lac did not write it" in out.stdout + out.stderr
    assert "--lac-reports-overwrite" in out.stdout + out.stderr
    assert (mine / "results.json").read_text() == '{"my": "own results"}'
    (mine / "results.json").unlink()
    _claims(tmp_path, "--lac-model", "tiny-llama")
    assert (mine / "results_mine.json").read_text() == "{}" and (mine / "figures" / "mine.png").exists()
    assert "results.json" in reportset.owned(mine) and "figures/mine.png" not in reportset.owned(mine)
    _claims(tmp_path, "--lac-model", "tiny-llama", "--lac-grid", "markers")  # a second run replaces its own
    assert (mine / "figures" / "mine.png").exists() and json.loads((mine / "results.json").read_text())


@pytest.mark.parametrize("args, why", [(["-k", "c1_additive"], "deselected"),
                                       (["--maxfail", "1"], "interrupted")])
def test_row3_a_cut_run_says_partial_and_why(tmp_path, args, why):
    if why == "interrupted":  # on a grid nothing is recorded for, a failing claim cuts the run
        args = [*args, "--lac-grid", _unrecorded_grid(tmp_path)]
    _claims(tmp_path, "--lac-model", "tiny-llama", *args)
    data = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert data["run"]["status"] == "PARTIAL"
    assert {n["why"] for n in data["run"]["not_run"]} == {why}
    ran = {v["claim"] for v in data["verdicts"]}
    assert ran and not ran & {n["claim"] for n in data["run"]["not_run"]}
    report = (tmp_path / "reports" / "REPORT.md").read_text()
    assert "Run status: PARTIAL" in report and f"not run: {why}" in report


def test_row3_a_whole_run_is_complete(tmp_path):
    _claims(tmp_path, "--lac-model", "tiny-llama")
    assert json.loads((tmp_path / "reports" / "results.json").read_text())["run"]["status"] == "COMPLETE"


def test_row4_a_partial_update_keeps_what_did_not_run(tmp_path):
    _claims(tmp_path, "--lac-model", "tiny-llama", "--lac-update-baselines")
    path = tmp_path / "expected" / "tiny-llama.yaml"
    body = yaml.safe_load(path.read_text())
    sec = body["setups"]["float32 model"][EXAMPLE]
    sec["cell_findings"]["additive_vs_null"].append("nurse__tax")  # a finding of a cell that won't run
    sec["verdicts"]["C2"] = "HOLDS"  # and a verdict of a claim that won't run
    path.write_text(yaml.safe_dump(body, sort_keys=False, width=120))
    before = yaml.safe_load(path.read_text())["setups"]["float32 model"][EXAMPLE]
    _claims(tmp_path, "--lac-model", "tiny-llama", "--lac-update-baselines", "-k", "pirate__bread or (c1_additive and not cell)")
    after = yaml.safe_load(path.read_text())["setups"]["float32 model"][EXAMPLE]
    assert "nurse__tax" in after["cell_findings"]["additive_vs_null"] and after["verdicts"]["C2"] == "HOLDS"
    for check, cells in before["cell_findings"].items():
        assert sorted(set(cells) - {"pirate__bread"}) == \
            sorted(set(after["cell_findings"][check]) - {"pirate__bread"})
    assert {k: v for k, v in before["baselines"].items() if not k.startswith("C1/")} == \
        {k: v for k, v in after["baselines"].items() if not k.startswith("C1/")}


def test_row5_a_failed_write_leaves_the_previous_set(tmp_path):
    reportset.publish(tmp_path, {"results.json": lambda p: p.write_text("old"),
                                 "REPORT.md": lambda p: p.write_text("old report")})

    def broken(path):
        raise RuntimeError("figure failed")

    with pytest.raises(LacError, match="figure failed.*previous report set is left as it was"):
        reportset.publish(tmp_path, {"results.json": lambda p: p.write_text("new"), "figures/a.png": broken})
    assert (tmp_path / "results.json").read_text() == "old" and (tmp_path / "REPORT.md").read_text() == "old report"
    assert not list(tmp_path.glob(".lac-staging-*"))


def test_row6_damaged_models_are_named(tmp_path, lac_models):
    smol = REGISTRY["smollm2-135m-instruct"]
    source = gguf_path(smol, Settings().cache_dir)
    if source.exists():
        truncated = tmp_path / "cut.gguf"
        truncated.write_bytes(source.read_bytes()[: 1 << 20])
        with pytest.raises(UnknownModelError, match="cut.gguf is not a readable GGUF file"):
            resolve(str(truncated))
    corrupt = gguf_path(smol, tmp_path)
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\0" * smol.size)
    with pytest.raises(ChecksumError, match=r"is corrupt: sha256 .*, expected b179.*rm .*lac_core.fetch"):
        fetch(smol, tmp_path, offline=True)


def test_row7_usage_errors_at_start(tmp_path):
    for args, env, message in ((["--lac-token-budget", "-5"], {}, "--lac-token-budget -5"),
                               (["--lac-model", "tiny-llama"], {"LAC_DEVICE": "gpu"}, "choose cpu, cuda")):
        out = _claims(tmp_path, *args, env=env)
        assert out.returncode == 4 and message in out.stderr
    twice = _claims(tmp_path, "--lac-model", "tiny-llama", "--lac-model", "tiny-llama", "--collect-only")
    assert "repeats tiny-llama; it runs once" in twice.stdout + twice.stderr
    assert twice.stdout.count("test_c1_additive_sufficiency[tiny-llama-example]") == 1


def test_row8_a_non_finite_kl_stops_the_run(monkeypatch, lac_models):
    real = plans.PLANS["fast"].window_kls

    def poisoned(self, *args):
        out = real(self, *args)
        out["null"][2, 1, 3] = np.nan
        return out

    monkeypatch.setattr(plans.PLANS["fast"], "window_kls", poisoned)
    grid = resolve_grid("example")
    with pytest.raises(NonFiniteResidualError, match=rf"non-finite null KL \(nan\) at cell {grid.cells[2].id}, "
                                                     r"probe p_last, layer \d+"):
        experiments.sweep(Engine(lac_models("tiny-llama")), grid)


def test_row11_a_failing_claim_names_numbers_threshold_and_cells(tmp_path):
    out = _claims(tmp_path, "--lac-model", "tiny-llama", "-k", "c2_partial", "--lac-grid",
                  _unrecorded_grid(tmp_path))
    line = next(x for x in out.stdout.splitlines() if "C2 FAILS on tiny-llama / mine" in x)
    assert "(<= 0.5)" in line and "95% interval" in line and "cells against the line" in line


def test_results_are_strict_json_with_provenance_and_identical_across_runs(tmp_path):
    runs = []
    for name in ("one", "two"):
        _claims(tmp_path, "--lac-model", "tiny-llama", reports=name)
        text = (tmp_path / name / "results.json").read_text()
        runs.append(json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json")))
    run = runs[0]["run"]
    for key in ("lac", "git_commit", "git_dirty", "claims_sha256", "grids_sha256", "torch",
                "transformers", "numpy", "args", "started", "wall_seconds", "status"):
        assert key in run, key
    assert runs[0]["models"]["tiny-llama"]["attn_implementation"] == "lac_grouped_eager"
    strip = [json.dumps({k: v for k, v in r.items() if k != "run"}, indent=1) for r in runs]
    assert strip[0] == strip[1]


def test_knife_edges_are_fragile():
    """A precondition met exactly (6 of 24 = 25%) and a part 0.5 over its line: both FRAGILE."""
    from lac_core.verdicts import uncertainty
    from lac_core.verdicts.results import MarkerResult
    from lac_core.verdicts.thresholds import load_thresholds
    from lac_core.run.settings import FIXTURES

    cells = [f"p{i}__t" for i in range(24)]
    hits = {c: {"clean": ["m"] if i < 6 else [], "additive": ["m"] if i < 5 else [],
                "remove_x": ["m"] if i < 4 else [], "bare": []} for i, c in enumerate(cells)}
    design = {"persona_index": tuple(range(24)), "task_index": (0,) * 24}  # 24 personas x 1 task
    r = MarkerResult("m", "markers", 14, 80, tuple(cells), {}, {}, hits, **design)
    t = load_thresholds(FIXTURES / "claims.yaml")
    v = uncertainty.judge("C3", r, t)
    assert v.status == "HOLDS" and set(v.fragile) == {"precondition", "additive"}
    assert v.preconditions[0].intervals["clean"][0] < 6 < v.preconditions[0].intervals["clean"][1]
    solid = MarkerResult("m", "markers", 14, 80, tuple(cells), {}, {},
                         {c: {k: ["m"] if k != "bare" else [] for k in hits[c]} for c in cells},
                         **design)
    assert uncertainty.judge("C3", solid, t).fragile == ()


def test_intervals_bracket_the_full_grid_numbers(lac_models):
    from lac_core.verdicts import uncertainty
    from lac_core.verdicts.thresholds import load_thresholds
    from lac_core.run.settings import FIXTURES

    r = experiments.sweep(Engine(lac_models("tiny-llama")), resolve_grid("example"))
    t = load_thresholds(FIXTURES / "claims.yaml")
    inside = []
    for claim in ("C1", "C1L", "C2", "C5", "C6"):
        v = uncertainty.judge(claim, r, t)
        for p in v.parts:
            for key, (lo, hi) in p.intervals.items():
                value = p.margin if key == "margin" else p.numbers[key]
                assert lo <= hi
                inside.append(lo - 1e-9 <= value <= hi + 1e-9)
    assert inside and np.mean(inside) > 0.9  # a percentile interval usually holds the full-grid value
    assert np.array_equal(uncertainty.resample(*r.design()), uncertainty.resample(*r.design()))
    f = uncertainty.faithfulness_table(r, t.C6.min_null_kl)  # F beside every median, intervals too
    for probe, per in f.items():
        for layer, v in per.items():
            s = r.summary
            assert v["F"] == 1 - s.kl_add[probe][layer].median / s.kl_null[probe][layer].median
            assert v["interval"][0] <= v["interval"][1]
