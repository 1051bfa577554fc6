"""lac merge (issue 38.1): tiny-llama, tiny-qwen2 and tiny-gemma2, each run alone, merged into one
results.json and report set equal to one run of all three (`run` aside), with one regression gate
computed from the file (gating.gate_of) equal to the session's own; a drift in a shard's numbers
fails the merged gate; shards that are not one run split apart, and hostile shards, are refused
naming the shard (exit 2), nothing written outside the report folder."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lac_core.merge import main as merge_main
from lac_core.report.rebuild import write_set
from lac_core.report.source import RunSource
from lac_core.paths import EXPECTED, ROOT
from lac_core.run import gating, shards

from .test_rebuild import assert_same_set

MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma2")


def _run(out: Path, models, cache: Path, *extra, cwd: Path = ROOT):
    cmd = [sys.executable, "-m", "pytest", "claims/", *[a for m in models
                                                       for a in ("--lac-model", m)],
           "--lac-grid", "example", "--lac-reports", str(out), "-p", "no:cacheprovider", "-q",
           *extra]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "LAC_CACHE_DIR": str(cache)})
    assert (out / "results.json").exists(), (done.stdout + done.stderr)[-3000:]
    return done


def planted(where: Path) -> Path:
    """An expectations folder holding tiny-llama's shipped file with one baseline moved, one
    verdict flipped and one cell finding added: a gate with drift, a changed verdict and an
    unexpected cell."""
    where.mkdir()
    doc = yaml.safe_load((EXPECTED / "tiny-llama.yaml").read_text())
    section = next(iter(next(iter(doc["setups"].values())).values()))
    key = sorted(section["baselines"])[0]
    section["baselines"][key]["value"] += 10 * section["baselines"][key]["tolerance"] + 1
    claim = sorted(section["verdicts"])[0]
    section["verdicts"][claim] = "HOLDS" if section["verdicts"][claim] != "HOLDS" else "FAILS"
    check = sorted(section["cell_findings"])[0]
    section["cell_findings"][check] = sorted(section["cell_findings"][check]
                                             + ["nurse__tax", "astronomer__bread"])
    (where / "tiny-llama.yaml").write_text(yaml.safe_dump(doc))
    return where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of all three models (gated against the planted expectations), then each model
    alone (from the resume cache the first filled: the same numbers, computed once)."""
    tmp = tmp_path_factory.mktemp("shards")
    cache = tmp / "cache"
    expected = planted(tmp / "expected")
    _run(tmp / "all", MODELS, cache, "--lac-expected-dir", str(expected))
    for m in MODELS:
        _run(tmp / m, (m,), cache)
    return tmp


def merge(*args, capsys=None):
    code = merge_main([str(a) for a in args])
    out = capsys.readouterr() if capsys else None
    return code, out


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


def _without_run(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "run"}


def test_three_shards_merge_into_the_one_run_of_all_three(runs, capsys):
    code, out = merge(*(runs / m for m in MODELS), "--lac-reports", runs / "merged",
                      "--lac-expected-dir", runs / "expected", capsys=capsys)
    assert code == 1, out  # the planted expectations fail the gate, as they fail the one run
    merged, one = _doc(runs / "merged" / "results.json"), _doc(runs / "all" / "results.json")
    assert _without_run(merged) == _without_run(one)
    assert merged["regression_gate"]["status"] == "failed"
    assert merged["run"]["models_planned"] == list(MODELS)
    assert [s["results"] for s in merged["run"]["shards"]] == \
        [str(runs / m / "results.json") for m in MODELS]
    # The report set is a function of results.json: the merged one with the one run's `run` put
    # back renders the one run's set, every file byte for byte (PNGs pixel for pixel). What
    # differs between the two sets as written is what `run` says: the run id, start, wall and
    # load times, the command, and (the shards having read the one run's results from the
    # resume cache) "from the resume cache" in place of each experiment's seconds.
    write_set(RunSource.of({**merged, "run": one["run"]}), runs / "rerendered", False, "test")
    assert_same_set(runs / "all", runs / "rerendered")
    differ = [a for a, b in zip((runs / "merged" / "REPORT.md").read_text().splitlines(),
                                (runs / "all" / "REPORT.md").read_text().splitlines()) if a != b]
    assert differ and all(merged["run"]["run_id"] in line or "resume cache" in line
                          or "load " in line or line.startswith(("- command", "- lac "))
                          for line in differ), differ
    assert "\n- command: lac merge " in (runs / "merged" / "REPORT.md").read_text()  # not pytest
    # lac's own expectations: tiny-llama and tiny-qwen2 as recorded, tiny-gemma2 has none (the
    # merge's gate is gate_of on the merged file; its exit 0 is seen in the tests below)
    own = gating.gate_of(merged, gating.expectation_folders(EXPECTED))
    gate = json.loads(json.dumps(own.to_json()))
    assert gate["status"] == "passed" and gate["without_expectations"] == [
        "tiny-gemma2 / float32 model / example@5dcefe664d04"]


def test_the_gate_from_results_json_is_the_sessions_gate(runs):
    """gating.gate_of on the run's results.json gives what gating.gate gave the live session:
    drift, a changed verdict, unexpected cells (planted), and a model without expectations."""
    doc = _doc(runs / "all" / "results.json")
    want = doc["regression_gate"]
    assert want["status"] == "failed" and want["drift"] and want["changed_verdicts"] \
        and want["unexpected_cells"] and want["without_expectations"]
    got = gating.gate_of(doc, gating.expectation_folders(runs / "expected"))
    assert json.loads(json.dumps(got.to_json())) == want
    for m in MODELS:  # and each shard's own gate, against lac's expectations
        alone = _doc(runs / m / "results.json")
        got = gating.gate_of(alone, gating.expectation_folders(EXPECTED))
        assert json.loads(json.dumps(got.to_json())) == alone["regression_gate"]


GATE_CASES = {  # name -> (models, expectations folder: None for lac's own, gate status)
    "lac's": (("tiny-llama", "tiny-qwen2"), None, "failed"),
    "none recorded": (("tiny-gemma2",), None, "not applied"),
    "planted": (("tiny-llama", "tiny-qwen2"), "planted", "failed")}


@pytest.mark.parametrize("case", GATE_CASES)
def test_the_gate_from_results_json_on_synthetic_records(case, tmp_path):
    """In process and fast: a session of synthetic records on the example grid, its cell checks
    run, against lac's shipped expectations (drift, changed verdicts and unexpected cells: the
    numbers are random), a model with none (not applied) or the planted ones: the gate from its
    results.json (the one gate: the session applies gate_of to its own results.json) finds
    each. It was checked equal to the session's former gate, whole, before that was removed."""
    from lac_core.report.document import results_text
    from lac_core.run.resultsfile import results_document
    from lac_core.verdicts import claims as registry

    from .test_report import synthetic_session

    models, folder, status = GATE_CASES[case]
    s = synthetic_session(models=models, grids=("example",),
                          expected_dir=planted(tmp_path / "planted") if folder else None)
    for (model, label, kind), r in sorted(s.ledger.results.items()):
        for name, check in registry.CELL_CHECKS.items():
            if check.experiment == kind:
                for cell in r.cells:
                    s.record_cell(name, model, label, cell, check.check(r, cell, s.thresholds))
    doc = json.loads(results_text(results_document(s)))
    got = gating.gate_of(doc, gating.expectation_folders(s.settings.expected_dir))
    want = json.loads(json.dumps(got.to_json()))
    assert want["status"] == status
    if status == "failed":
        assert want["drift"] and want["changed_verdicts"] and want["unexpected_cells"]
    else:
        assert want["without_expectations"] == ["tiny-gemma2 / float32 model / example@"
                                                "5dcefe664d04"]


def _write(doc: dict, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "results.json").write_text(json.dumps(doc))
    return where


def test_a_drift_in_one_shards_numbers_fails_the_merged_gate(runs, tmp_path, capsys):
    """tiny-llama's sweep KL, all of it 40% higher, its verdicts derived again from the changed
    numbers (as a library upgrade would move them): the merged gate fails naming tiny-llama."""
    doc = _doc(runs / "tiny-llama" / "results.json")
    sweep = doc["sweeps"][0]
    sweep["kl_add"] = [[[None if x is None else x * 1.4 for x in row] for row in cell]
                       for cell in sweep["kl_add"]]
    drifted = _write(shards.rederive(doc), tmp_path / "drifted")
    code, out = merge(drifted, runs / "tiny-qwen2", "--lac-reports", tmp_path / "out",
                      capsys=capsys)
    gate = _doc(tmp_path / "out" / "results.json")["regression_gate"]
    assert code == 1 and gate["status"] == "failed", out
    assert gate["drift"] and {d["model"] for d in gate["drift"]} == {"tiny-llama"}
    assert "numeric drift" in out.err


def _refused(capsys, *args) -> str:
    code = merge_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("field, value, says", [
    (("fingerprint", "torch"), "9.9.9", "fingerprint.torch"),
    (("settings", "token_budget"), 512, "settings.token_budget"),
    (("settings", "probes"), ["g1"], "settings.probes"),
    (("run", "chat_template"), "chatml", "run.chat_template"),
])
def test_shards_of_two_lac_sources_or_settings_are_refused_naming_the_field(
        runs, tmp_path, capsys, field, value, says):
    doc = _doc(runs / "tiny-qwen2" / "results.json")
    doc[field[0]][field[1]] = value
    other = _write(doc, tmp_path / "other")
    err = _refused(capsys, runs / "tiny-llama", other, "--lac-reports", tmp_path / "out")
    assert says in err and str(other / "results.json") in err and "tiny-llama" in err
    assert not (tmp_path / "out").exists()


def test_a_shard_of_another_lac_is_refused(runs, tmp_path, capsys):
    doc = _doc(runs / "tiny-qwen2" / "results.json")
    doc["fingerprint"]["lac"] = "0.0.1"
    other = _write(doc, tmp_path / "other")
    err = _refused(capsys, runs / "tiny-llama", other, "--lac-reports", tmp_path / "out")
    assert "0.0.1" in err and "another lac" in err and str(other) in err


def test_a_model_and_grid_in_two_shards_merges_only_when_identical(runs, tmp_path, capsys):
    again = _write(_doc(runs / "tiny-llama" / "results.json"), tmp_path / "again")
    code, out = merge(runs / "tiny-llama", again, "--lac-reports", tmp_path / "twice",
                      capsys=capsys)
    assert code == 0, out
    twice = _doc(tmp_path / "twice" / "results.json")
    assert twice["run"]["models_planned"] == ["tiny-llama"]  # one run given twice: one shard
    doc = _doc(runs / "tiny-llama" / "results.json")
    doc["sweeps"][0]["kl_null"][0][0][0] *= 1.01
    other = _write(shards.rederive(doc), tmp_path / "other")
    err = _refused(capsys, runs / "tiny-llama", other, "--lac-reports", tmp_path / "out")
    assert "tiny-llama / example" in err and str(other) in err


def test_a_partial_shard_makes_the_merge_partial_naming_it(runs, tmp_path, capsys):
    """tiny-qwen2's shard as a run interrupted before C4's verdict writes it."""
    doc = _doc(runs / "tiny-qwen2" / "results.json")
    doc["verdicts"] = [v for v in doc["verdicts"] if v["claim"] != "C4"]
    doc["run"]["status"] = "PARTIAL"
    doc["run"]["not_run"] = [{"claim": "C4", "model": "tiny-qwen2", "grid": "example",
                              "why": "interrupted"}]
    part = _write(doc, tmp_path / "part")
    code, out = merge(runs / "tiny-llama", part, "--lac-reports", tmp_path / "out",
                      capsys=capsys)
    run = _doc(tmp_path / "out" / "results.json")["run"]
    assert code == 1 and str(part / "results.json") in out.err, out
    assert run["status"] == "PARTIAL" and run["not_run"] == [
        {**doc["run"]["not_run"][0], "shard": str(part / "results.json")}]
    assert [s["status"] for s in run["shards"]] == ["COMPLETE", "PARTIAL"]
    assert "**Run status: PARTIAL" in (tmp_path / "out" / "REPORT.md").read_text()


# --- hostile shards ---------------------------------------------------------------------------

def _edit_verdict(doc):
    v = next(v for v in doc["verdicts"] if v["claim"] == "C1")
    v["status"] = "HOLDS" if v["status"] != "HOLDS" else "FAILS"


def _edit_summary(doc):
    summary = doc["sweeps"][0]["summary"]["kl_add"]
    probe = next(iter(summary))
    layer = next(iter(summary[probe]))
    summary[probe][layer]["median"] = 0.0


def _hide_a_failing_cell(doc):
    doc["cell_failures"][0]["cells"] = doc["cell_failures"][0]["cells"][1:]


def _margin(doc):
    v = next(v for v in doc["verdicts"] if v["claim"] == "C2")
    v["deciding"]["margin"] = 0.5


@pytest.mark.parametrize("edit", [_edit_verdict, _edit_summary, _hide_a_failing_cell, _margin])
def test_a_shard_whose_numbers_do_not_give_its_verdicts_is_refused(runs, tmp_path, capsys, edit):
    """Refused, not recomputed: a file saying one thing while its numbers say another was changed
    by something other than lac, so nothing in it is trusted (docs/scale.md)."""
    doc = _doc(runs / "tiny-llama" / "results.json")
    edit(doc)
    bad = _write(doc, tmp_path / "bad")
    err = _refused(capsys, bad, runs / "tiny-qwen2", "--lac-reports", tmp_path / "out")
    assert str(bad / "results.json") in err and "not follow from its numbers" in err
    assert not (tmp_path / "out").exists()


def test_a_pickle_or_not_json_is_refused_never_loaded(runs, tmp_path, capsys):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "results.json").write_bytes(pickle.dumps(
        {**_doc(runs / "tiny-llama" / "results.json"), "x": Boom()}))
    err = _refused(capsys, tmp_path / "p", "--lac-reports", tmp_path / "out")
    assert str(tmp_path / "p" / "results.json") in err and not (tmp_path / "ran").exists()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "results.json").write_text("{not json")
    err = _refused(capsys, tmp_path / "t", "--lac-reports", tmp_path / "out")
    assert str(tmp_path / "t" / "results.json") in err


def test_a_shard_naming_a_path_outside_writes_nothing_outside(runs, tmp_path, capsys):
    """A model whose name climbs out of the report folder: refused before anything is written;
    a grid source naming another file is information, never opened."""
    doc = _doc(runs / "tiny-llama" / "results.json")
    doc["run"]["models_planned"].append("../../../../escaped")
    bad = _write(doc, tmp_path / "a" / "bad")
    out = tmp_path / "a" / "b" / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    err = _refused(capsys, bad, "--lac-reports", out)
    assert "escaped" in err and "inside" in err
    assert sorted(p for p in tmp_path.rglob("*")) == before
    doc = _doc(runs / "tiny-llama" / "results.json")
    doc["run"]["grids"]["example"]["source"] = "/etc/shadow"
    fine = _write(doc, tmp_path / "fine")
    code, got = merge(fine, "--lac-reports", tmp_path / "fine-out", capsys=capsys)
    assert code == 0, got


def test_a_shard_from_a_copy_without_git_merges(runs, tmp_path, capsys):
    """A copy of the tree (as rsync or a job's checkout makes it) has no .git: its git commit is
    unknown, which is information, not a difference. (Issue 38.2 adds a source hash, equal for
    the copy and the checkout: H3's field joins the fingerprint and is compared like the rest.)"""
    copy_ = tmp_path / "copy"
    for name in ("lac_core", "claims", "fixtures", "conftest.py", "pyproject.toml"):
        src = ROOT / name
        (shutil.copytree(src, copy_ / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, copy_ / name))
    _run(tmp_path / "gemma", ("tiny-gemma2",), runs / "cache", cwd=copy_)
    gemma = _doc(tmp_path / "gemma" / "results.json")
    assert gemma["fingerprint"]["git_commit"] is None
    code, out = merge(runs / "tiny-llama", tmp_path / "gemma", "--lac-reports", tmp_path / "out",
                      capsys=capsys)
    assert code == 0, out
    run = _doc(tmp_path / "out" / "results.json")["run"]
    assert [s["git_commit"] is None for s in run["shards"]] == [False, True]
    assert run["git_commit"] is None  # the shards' commits differ: each is in run.shards


@pytest.mark.parametrize("make", ["link", "file", "not_lacs"])
def test_a_merge_into_a_hostile_folder_is_refused_before_writing(runs, tmp_path, capsys, make):
    """The merged set's folder is checked as `lac report`'s and pytest's --lac-reports are
    (report.rebuild.write_set): a link, a file, or a REPORT.md lac did not write: exit 2."""
    from .test_rebuild import hostile_folder

    other, out = hostile_folder(tmp_path, make)
    err = _refused(capsys, runs / "tiny-llama", "--lac-reports", out)
    assert str(out) in err and list(other.iterdir()) == []
    if make == "file":
        assert out.read_text() == "mine"
    if make == "not_lacs":
        assert (out / "REPORT.md").read_text() == "a report of my own"
