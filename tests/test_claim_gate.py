"""A claim test names its claim once: `claim_gate(result)` reads the claim from the test's
`claim` mark and the model and grid from its parameters, `cell_gate(check, result[, cell])` the
model, grid and cell. The old call forms, which user files written from docs/own-claim.md use,
give the same verdicts and results.json with a DeprecationWarning; a test written wrongly (a
mark and an argument that disagree, no mark) fails with one line saying what to fix."""
import json
import os
import subprocess
import sys

import pytest

NEW = '''
import pytest


@pytest.mark.claim("C1")
def test_c1(sweep_result, claim_gate):
    claim_gate(sweep_result)


def test_cell_named(sweep_cell, sweep_result, cell_gate):
    cell_gate("additive_vs_null", sweep_result, sweep_cell)


@pytest.mark.claim("C2")
def test_c2(sweep_result, claim_gate):
    claim_gate(sweep_result)


def test_cell_from_the_test(sweep_cell, sweep_result, cell_gate):
    cell_gate("sum_beats_alignment", sweep_result)
'''
OLD = '''
import pytest


@pytest.mark.claim("C1")
def test_c1(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("C1", sweep_result, lm.spec.name, sweep_grid)


def test_cell_named(lm, sweep_grid, sweep_cell, sweep_result, cell_gate):
    cell_gate("additive_vs_null", sweep_result, lm.spec.name, sweep_grid, sweep_cell)


@pytest.mark.claim("C2")
def test_c2(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("C2", sweep_result, lm.spec.name, sweep_grid)


def test_cell_from_the_test(model_name, sweep_grid, sweep_cell, sweep_result, cell_gate):
    cell_gate("sum_beats_alignment", sweep_result, model_name, sweep_grid, sweep_cell)
'''
WRONG = '''
import pytest


@pytest.mark.claim("C1")
def test_mark_and_argument_disagree(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("C2", sweep_result, lm.spec.name, sweep_grid)


def test_no_mark(sweep_result, claim_gate):
    claim_gate(sweep_result)
'''


def _run(folder, tests: str):
    """pytest on this checkout's lac in a project of one test file; tiny-llama, example grid,
    one torch thread (so the second run reads the first's sweep from the shared resume cache)."""
    folder.mkdir()
    (folder / "test_claims.py").write_text(tests)
    env = {**os.environ, "LAC_CACHE_DIR": str(folder.parent / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-threads", "1"]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def _outcomes(run) -> list[str]:
    """The short test summary's lines (-rA): each test's outcome, by node id."""
    return sorted(x for x in run.stdout.splitlines() if x.startswith(("PASSED ", "XFAIL ",
                                                                      "FAILED ", "ERROR ")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each project's run and its results.json, without `run` (its id, times and cache use)."""
    root, out = tmp_path_factory.mktemp("gate"), {}
    for name, tests in (("new", NEW), ("old", OLD), ("wrong", WRONG)):
        done = _run(root / name, tests)
        found = root / name / "reports" / "results.json"
        data = json.loads(found.read_text()) if found.exists() else {}
        out[name] = done, {k: v for k, v in data.items() if k != "run"}
    return out


def test_the_new_form_and_the_old_give_the_same_verdicts_and_results(runs):
    (new, got), (old, was) = runs["new"], runs["old"]
    assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-2000:]
    assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-2000:]
    assert [v["claim"] for v in got["verdicts"]] == ["C1", "C2"]
    assert got == was
    assert _outcomes(new) == _outcomes(old) and len(_outcomes(new)) > 4  # the cells' tests too
    assert "DeprecationWarning" not in new.stdout, new.stdout[-3000:]
    for said in ("claim_gate(claim, result, model, grid) is deprecated: write claim_gate(result)",
                 "cell_gate(check, result, model, grid, cell) is deprecated"):
        assert said in old.stdout, old.stdout[-3000:]
    assert "test_claims.py:7: DeprecationWarning" in old.stdout, old.stdout[-3000:]


def test_a_mark_and_an_argument_that_disagree_fail_naming_both(runs):
    wrong, data = runs["wrong"]
    assert wrong.returncode == 1, wrong.stdout[-3000:] + wrong.stderr[-2000:]
    assert ("test_claims.py::test_mark_and_argument_disagree[tiny-llama-example]: it is marked "
            "@pytest.mark.claim('C1') but calls claim_gate('C2', ...)") in wrong.stdout, \
        wrong.stdout[-3000:]
    assert data["verdicts"] == []  # neither claim judged


def test_a_test_without_a_mark_is_told_to_add_one(runs):
    wrong, _data = runs["wrong"]
    assert ("test_claims.py::test_no_mark[tiny-llama-example]: claim_gate(result) reads the "
            "claim from the test's mark, and it has none: add @pytest.mark.claim(ID)") \
        in wrong.stdout, wrong.stdout[-3000:]
