"""`lac compare A B` (lac_core/compare_runs.py, two runs): exit 0 (same), 1 (something flipped,
moved or went missing), 2 (not comparable, or an input that is not a lac results.json: one line
naming it). Synthetic results.json documents in the shape lac writes (report/document.py), no
model run."""
import contextlib
import io
import json
import subprocess
import sys

import pytest

from lac_core.compare_runs import main as compare

SHA = "5dcefe664d04488b2cd8b9e774e766ccebeab9b8652d17ce7c3b79fc01cd1f64"


def _part(name, numbers):
    return {"name": name, "status": "FAILS", "margin": -0.1, "detail": "", "numbers": numbers}


def results_doc() -> dict:
    parts = [_part("g1", {"median": 1.45, "layer": 3}), _part("g2", {"cos": 0.9, "count": 4})]
    return {"schema": "lac-results/2 (see docs/SCHEMA.md)",
            "run": {"grids": {"example": {"name": "example", "sha256": SHA}}},
            "models": {"tiny-llama": {}},
            "verdicts": [{"claim": "C1", "subject": "tiny-llama", "status": "FAILS",
                          "deciding": parts[0], "parts": parts, "fragile": [],
                          "model": "tiny-llama", "grid": "example", "expected": "FAILS"}]}


def _run(*paths):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = compare([str(p) for p in paths])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(results_doc()))
    return path


NOT_RESULTS = {  # what B is -> how it is made
    "truncated": lambda p: p.write_text(json.dumps(results_doc())[:200]),
    "a directory": lambda p: p.mkdir(),
    "missing": lambda p: None,
    "{}": lambda p: p.write_text("{}"),
    "a verdict without parts": lambda p: p.write_text(json.dumps(
        {**results_doc(), "verdicts": [{k: v for k, v in results_doc()["verdicts"][0].items() if k != "parts"}]})),
    'verdicts: ["x"]': lambda p: p.write_text(json.dumps({**results_doc(), "verdicts": ["x"]})),
    "a part that is text": lambda p: p.write_text(json.dumps(
        {**results_doc(), "verdicts": [{**results_doc()["verdicts"][0], "parts": ["g1"]}]})),
    "not UTF-8": lambda p: p.write_bytes(b'{"run": "\xff"}'),
    "a 5000-digit number": lambda p: p.write_text(json.dumps(results_doc()).replace("1.45", "9" * 5000)),
}


@pytest.mark.parametrize("what", NOT_RESULTS)
@pytest.mark.parametrize("side", ["A", "B"])
def test_input_that_is_not_a_lac_results_json_exits_2_naming_it(good, tmp_path, what, side):
    bad = tmp_path / "b.json"
    NOT_RESULTS[what](bad)
    code, out, err = _run(*((good, bad) if side == "B" else (bad, good)))
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0], (code, out, err)
    assert "no number moved" not in out


@pytest.mark.parametrize("what, edit", [
    ("null", lambda n: n.update(median=None)),
    ("removed", lambda n: n.pop("median")),
    ("NaN", lambda n: n.update(median=float("nan"))),
    ("Infinity", lambda n: n.update(median=float("inf"))),
    ("text", lambda n: n.update(median="1.45")),
])
def test_a_number_of_a_missing_or_not_finite_in_b_is_a_difference(good, tmp_path, what, edit):
    doc = results_doc()
    edit(doc["verdicts"][0]["parts"][0]["numbers"])
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
    code, out, _ = _run(good, bad)
    assert code == 1, out
    assert "missing: tiny-llama / example: C1/g1/median: 1.45 in A" in out
    assert "no number moved" not in out


def test_every_deciding_number_removed_in_b_is_a_difference(good, tmp_path):
    doc = results_doc()
    for part in doc["verdicts"][0]["parts"]:
        part["numbers"] = None
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(doc))
    code, out, _ = _run(good, bad)
    assert code == 1 and out.count("missing: ") == 3 and "3 differences" in out, out


def test_a_number_only_b_has_is_no_difference_one_only_a_has_is(good, tmp_path):
    doc = results_doc()
    doc["verdicts"][0]["parts"][1]["numbers"]["extra"] = 2.0
    b = tmp_path / "b.json"
    b.write_text(json.dumps(doc))
    assert _run(good, good)[0] == 0
    code, out, _ = _run(good, b)
    assert code == 0 and "no number moved" in out
    code, out, _ = _run(b, good)
    assert code == 1 and "missing: tiny-llama / example: C1/g2/extra: 2 in A" in out, out


def test_the_command_line_exits_2_with_one_line_naming_the_file(good, tmp_path):
    missing = tmp_path / "nope.json"
    out = subprocess.run([sys.executable, "-m", "lac_core", "compare", str(good), str(missing)],
                         capture_output=True, text=True, timeout=120)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1 and str(missing) in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_old_module_name_still_runs_and_says_it_is_deprecated(good, tmp_path):
    """`python -m lac_core.compare A B`, as docs/ci.md showed it before the `lac` command, gives
    the same exit code and lines as `lac compare A B`, and a deprecation warning naming the
    command; `lac compare` itself runs lac_core.compare_runs, without the warning."""
    missing = tmp_path / "nope.json"
    for paths, code in (((good, good), 0), ((good, missing), 2)):
        old, new = (subprocess.run([sys.executable, "-m", *cmd, *map(str, paths)],
                                   capture_output=True, text=True, timeout=120)
                    for cmd in (["lac_core.compare"], ["lac_core", "compare"]))
        assert old.returncode == new.returncode == code and old.stdout == new.stdout
        assert "DeprecationWarning" not in new.stderr
        assert new.stderr.strip() in old.stderr
        assert "DeprecationWarning" in old.stderr and "lac compare A B" in old.stderr
    from lac_core import cli

    assert cli.COMMANDS["compare"][0] == "lac_core.compare_runs"


# Checkpoint against checkpoint: two runs of other models or setups on one grid (issue 35.4).
# Synthetic sweep records on a crossed 4 x 4 grid, judged by lac's rules, written as lac writes
# them (results.jsonable of the records and verdicts).
import re
from dataclasses import asdict

import numpy as np

from lac_core.paths import CLAIMS_FILE
from lac_core.verdicts import claims as registry
from lac_core.verdicts.results import GEOMETRY_STATS, SweepResult, jsonable
from lac_core.verdicts.thresholds import load_thresholds

HEX64 = re.compile(r"[0-9a-f]{64}")
PROBES, LAYERS, N_LAYERS = ("p_user_last", "p_last", "g1", "g2"), (2, 3, 4, 6, 7), 8


def sweep_arrays(seed: int = 7) -> dict:
    """Per-cell KLs and geometry with persona and task effects (crossed), growing with depth."""
    rng = np.random.default_rng(seed)
    persona, task = rng.normal(0, 0.3, 4), rng.normal(0, 0.3, 4)
    pi, ti = np.repeat(np.arange(4), 4), np.tile(np.arange(4), 4)
    depth = (1 + np.arange(len(LAYERS))) / len(LAYERS)
    effect = (persona[pi] + task[ti])[:, None, None]
    kl_add = 0.2 * np.exp(effect + rng.normal(0, 0.2, (16, 4, len(LAYERS)))) * depth
    geometry = {s: rng.uniform(0.2, 0.9, (16, 4, N_LAYERS)) for s in GEOMETRY_STATS}
    return {"kl_add": kl_add, "kl_null": 3 * kl_add + 0.1, "geometry": geometry,
            "persona_index": tuple(pi), "task_index": tuple(ti)}


def sweep_doc(model: str, arrays: dict, dtype: str = "float32", kernels=None,
              grid: str = "example", sha: str = SHA) -> dict:
    rec = SweepResult(model=model, grid=grid, n_layers=N_LAYERS, layers=LAYERS, probes=PROBES,
                      cells=tuple(f"p{i // 4}__t{i % 4}" for i in range(16)), references={},
                      grid_sha256=sha, **arrays)
    t = load_thresholds(CLAIMS_FILE)
    verdicts = [{**asdict(c.rule(rec.summary, getattr(t, c.id))), "model": model, "grid": grid,
                 "expected": None} for c in registry.of_experiment("sweep")]
    return jsonable({"schema": "lac-results/2 (see docs/SCHEMA.md)",
                     "run": {"grids": {grid: {"name": grid, "sha256": sha}}},
                     "models": {model: {"model": model, "dtype": dtype, "kernels": kernels}},
                     "verdicts": verdicts, "sweeps": [asdict(rec)], "markers": [],
                     "host_injection": []})


def _write(tmp_path, name, doc):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _shifted(arrays: dict, shift: float, noise: float, seed: int = 11) -> dict:
    rng = np.random.default_rng(seed)
    add = arrays["kl_add"] + shift + rng.normal(0, noise, arrays["kl_add"].shape)
    return {**arrays, "kl_add": add}


def test_two_models_on_one_grid_are_compared_side_by_side_and_exit_0(tmp_path):
    arrays = sweep_arrays()
    a = _write(tmp_path, "a", sweep_doc("parent", arrays))
    b = _write(tmp_path, "b", sweep_doc("child", arrays))  # the very same numbers
    for flag in ((), ("--fail-on-worse",)):
        code, out, err = _run(a, b, *flag)
        assert code == 0, (out, err)
        assert "differs: model parent / child" in out, out
        for claim in ("C1", "C1L", "C2", "C5", "C6"):
            assert f"{claim} on example: A " in out, out
        # exact zero difference in every resample: nothing flagged, whatever the correction
        assert re.search(r"lac compare: 0 of \d+ numbers changed significantly, 0 margins worse",
                         out), out
        assert "worse\n" not in out and "changed\n" not in out
        assert not HEX64.search(out) and "moved:" not in out


def test_a_planted_shift_is_worse_and_fails_only_with_the_flag(tmp_path):
    arrays = sweep_arrays()
    a = _write(tmp_path, "a", sweep_doc("parent", arrays))
    b = _write(tmp_path, "b", sweep_doc("child", _shifted(arrays, 0.3, 0.01)))
    code, out, _ = _run(a, b)
    assert code == 0, out
    c1 = next(line for line in out.splitlines() if re.match(r"\s+p_last\s+margin", line))
    assert c1.rstrip().endswith("worse"), out  # C1's margin at p_last fell by about 0.3
    assert re.search(r"[1-9]\d* margins worse in B", out), out
    code, out, _ = _run(a, b, "--fail-on-worse")
    assert code == 1 and "--fail-on-worse: failing" in out, out


def test_float32_against_bfloat16_of_one_model_says_what_differs(tmp_path):
    arrays = sweep_arrays()
    a = _write(tmp_path, "a", sweep_doc("m", arrays))
    b = _write(tmp_path, "b", sweep_doc("m", _shifted(arrays, 0.0, 0.01), dtype="bfloat16",
                                        kernels="cpu:AVX2"))
    code, out, _ = _run(a, b)
    assert code == 0, out
    assert "differs: dtype float32 / bfloat16; kernels none / cpu:AVX2" in out, out
    assert "moved:" not in out and "B - A [95% simultaneous]" in out


@pytest.mark.parametrize("b_model", ["m", "other"])  # the regression diff, and checkpoints
def test_grids_that_cannot_be_compared_exit_2_named_not_hashed(tmp_path, b_model):
    arrays = sweep_arrays()
    a = _write(tmp_path, "a", sweep_doc("m", arrays))
    elsewhere = _write(tmp_path, "b1", sweep_doc(b_model, arrays, grid="short"))
    code, _, out = _run(a, elsewhere)  # not comparable: one line on stderr
    assert code == 2 and "A ran example, B ran short" in out and not HEX64.search(out), out
    assert len(out.splitlines()) == 1, out
    other = _write(tmp_path, "b2", sweep_doc(b_model, arrays, sha="0" * 64))
    code, _, out = _run(a, other)
    assert code == 2 and "grid example: other content" in out and not HEX64.search(out), out
    assert len(out.splitlines()) == 1, out


def test_a_claim_lac_does_not_know_is_shown_side_by_side_without_a_difference(tmp_path):
    arrays = sweep_arrays()
    docs = [sweep_doc(m, arrays) for m in ("parent", "child")]
    for doc, margin in zip(docs, (0.25, 0.5)):
        part = {"name": "ratio", "status": "HOLDS", "margin": margin, "detail": "",
                "numbers": {"ratio": 1 + margin}, "intervals": {"margin": [0.1, 0.9]}}
        doc["verdicts"].append({"claim": "MINE", "subject": "", "status": "HOLDS",
                                "deciding": part, "parts": [part], "preconditions": [],
                                "fragile": [], "model": doc["verdicts"][0]["model"],
                                "grid": "example", "expected": None})
    code, out, _ = _run(_write(tmp_path, "a", docs[0]), _write(tmp_path, "b", docs[1]))
    assert code == 0, out
    assert "MINE on example: A HOLDS, B HOLDS (MINE is not one of lac's claims" in out, out
    assert re.search(r"ratio\s+margin\s+0\.25 \[0\.1, 0\.9\]\s+0\.5 \[0\.1, 0\.9\]", out), out
    assert re.search(r"ratio\s+ratio\s+1\.25\s+1\.5", out), out
