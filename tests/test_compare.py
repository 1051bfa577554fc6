"""`python -m lac_core.compare A B`: exit 0 (same), 1 (something flipped, moved or went missing),
2 (not comparable, or an input that is not a lac results.json: one line naming it). Synthetic
results.json documents in the shape lac writes (report/document.py), no model run."""
import contextlib
import io
import json
import subprocess
import sys

import pytest

from lac_core.compare import main as compare

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
    out = subprocess.run([sys.executable, "-m", "lac_core.compare", str(good), str(missing)],
                         capture_output=True, text=True, timeout=120)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1 and str(missing) in lines[0], out.stderr
    assert "Traceback" not in out.stderr
