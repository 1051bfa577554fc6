"""The regression gate as CI sees it: its outcome in results.json and as one JUnit test case,
lac/regression_gate, counted in pytest's summary (also under -n 2); claim tests carry their
verdicts as JUnit properties; baseline updates print what changed and keep hand-set tolerances
and comments; `lac compare` tells two runs apart by exit code."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from lac_core.compare_runs import main as compare
from lac_core.paths import ROOT
from lac_core.protocol.grids import resolve_grid

EXAMPLE = resolve_grid("example").key
KEY = "C1/p_last/median"


def _run(folder, *extra, n=None):
    (folder / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "--lac-model", "tiny-llama",
           "--lac-grid", "example", "-q", "-p", "no:cacheprovider", "-k", "c1_ or c4_no",
           "--lac-reports", str(folder / "reports"), "--lac-expected-dir", str(folder / "expected"),
           "--junitxml", str(folder / "junit.xml"), *(["-n", str(n)] if n else []), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def _file(folder):
    return folder / "expected" / "tiny-llama.yaml"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    first = _run(folder, "--lac-regen-all")
    assert first.returncode == 0, first.stdout[-3000:]  # regen-all writes and passes
    assert "lac: wrote" in first.stdout and _file(folder).exists()
    return folder


def _case(folder, name="regression_gate"):
    root = ET.parse(folder / "junit.xml").getroot()
    return root, next(c for c in root.iter("testcase") if c.get("name").endswith(name))


def _shift(folder):
    body = yaml.safe_load(_file(folder).read_text())
    base = body["setups"]["float32 model"][EXAMPLE]["baselines"][KEY]
    base["value"] += 10 * base["tolerance"] + 1
    saved = _file(folder).read_text()
    _file(folder).write_text(yaml.safe_dump(body))
    return saved


@pytest.mark.parametrize("workers", [None, 2])
def test_numbers_that_drift_fail_the_gate_everywhere_ci_reads(recorded, workers):
    clean = _run(recorded, n=workers)
    assert clean.returncode == 0, clean.stdout[-3000:]
    _root, case = _case(recorded)
    assert case.find("failure") is None
    assert json.loads((recorded / "reports" / "results.json").read_text())[
        "regression_gate"]["status"] == "passed"
    saved = _shift(recorded)
    try:
        out = _run(recorded, n=workers)
    finally:
        _file(recorded).write_text(saved)
    assert out.returncode == 1 and "FAILED lac/regression_gate" in out.stdout
    assert "1 failed" in out.stdout.splitlines()[-1]  # counted in pytest's own summary
    root, case = _case(recorded)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert int(suite.get("failures")) == 1 and KEY in case.find("failure").get("message", "") + \
        (case.find("failure").text or "")
    gate = json.loads((recorded / "reports" / "results.json").read_text())["regression_gate"]
    assert gate["status"] == "failed" and [d["quantity"] for d in gate["drift"]] == [KEY]
    assert {"baseline", "value", "tolerance", "model", "grid"} <= set(gate["drift"][0])


def test_claim_tests_carry_their_verdicts_and_no_worker_internals(recorded):
    out = _run(recorded, n=2)
    assert out.returncode == 0, out.stdout[-2000:]
    root, case = _case(recorded, "test_c1_additive_sufficiency[tiny-llama-example]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["lac_verdict"] == "FAILS" and props["lac_expected"] == "FAILS"
    assert props["lac_claim"] == "C1" and "lac_margin" in props and "lac_deciding" in props
    names = {p.get("name") for p in root.iter("property")}
    assert "lac_progress" not in names


def test_update_prints_what_changed_fails_and_keeps_hand_edits(recorded):
    text = _file(recorded).read_text()
    body = yaml.safe_load(text)
    sec = body["setups"]["float32 model"][EXAMPLE]
    tol, value = sec["baselines"][KEY]["tolerance"], sec["baselines"][KEY]["value"]
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.strip() == f"{KEY}:")
    assert lines[at + 1].strip() == f"value: {value}" and lines[at + 2].strip() == f"tolerance: {tol}"
    lines[at] += "  # widened by hand after review"
    lines[at + 1] = lines[at + 1].replace(f"value: {value}", f"value: {value + 1}")
    lines[at + 2] = lines[at + 2].replace(f"tolerance: {tol}", "tolerance: 0.5")
    edited = "\n".join(lines)
    _file(recorded).write_text(edited)
    try:
        out = _run(recorded, "--lac-update-baselines")
        assert out.returncode == 1, out.stdout[-2000:]
        assert f"{KEY}: {value + 1} -> {value} (tolerance 0.5 kept)" in out.stdout
        assert "1 failed" in out.stdout.splitlines()[-1]  # counted, not only an exit code
        root, case = _case(recorded)
        assert case.find("failure") is not None and KEY in case.find("failure").get("message", "") \
            + (case.find("failure").text or "")
        assert json.loads((recorded / "reports" / "results.json").read_text())[
            "regression_gate"]["review"] is True
        after = _file(recorded).read_text()
        assert "# widened by hand after review" in after  # the comment survives
        assert yaml.safe_load(after)["setups"]["float32 model"][EXAMPLE]["baselines"][KEY] == \
            {"value": value, "tolerance": 0.5}  # the value rewritten, the tolerance kept
        again = _run(recorded, "--lac-update-baselines")  # nothing changed now: it passes
        assert again.returncode == 0 and "(nothing changed)" in again.stdout
        assert _case(recorded)[1].find("failure") is None
    finally:
        _file(recorded).write_text(text)


def test_expectations_refuse_duplicate_keys(tmp_path):
    from lac_core.errors import FixtureError
    from lac_core.verdicts import expected

    (tmp_path / "tiny-llama.yaml").write_text("model: tiny-llama\nsetups: {}\nsetups: {}\n")
    with pytest.raises(FixtureError, match="duplicate key 'setups'"):
        expected.load("tiny-llama", tmp_path)


def test_compare_exit_codes(recorded, tmp_path, capsys):
    a = json.loads((recorded / "reports" / "results.json").read_text())
    paths = {}
    for name, edit in {
        "same": lambda d: None,
        "moved": lambda d: d["verdicts"][0]["parts"][0]["numbers"].update(
            median=d["verdicts"][0]["parts"][0]["numbers"]["median"] + 5),
        "flipped": lambda d: d["verdicts"][0].update(status="HOLDS"),
        "other": lambda d: d["run"]["grids"]["example"].update(sha256="0" * 64),
    }.items():
        doc = json.loads(json.dumps(a))
        edit(doc)
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    base = str(recorded / "reports" / "results.json")
    assert compare([base, str(paths["same"])]) == 0
    assert compare([base, str(paths["moved"])]) == 1
    assert "moved: tiny-llama / example: C1/" in capsys.readouterr().out
    assert compare([base, str(paths["flipped"])]) == 1
    assert "flipped: C1 on tiny-llama / example: FAILS -> HOLDS" in capsys.readouterr().out
    assert compare([base, str(paths["other"])]) == 2
    cli = subprocess.run([sys.executable, "-m", "lac_core", "compare", base, str(paths["moved"])],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "differences" in cli.stdout


# The gate's outcome is one typed value (verdicts/gate.py), made once by run/gating.py; every
# output renders from it, and results.json holds it whole.
def _outcomes():
    from hypothesis import strategies as st

    from lac_core.verdicts.gate import CellOutcome, Changed, Drift, GateOutcome

    text = st.text(min_size=1, max_size=6)
    num = st.floats(allow_nan=False, allow_infinity=False, width=32)
    return st.builds(
        GateOutcome, st.sampled_from(["passed", "failed", "not applied"]), text,
        st.lists(st.builds(Drift, text, text, text, num, num, num), max_size=2).map(tuple),
        st.lists(st.builds(Changed, text, text, text, text, text), max_size=2).map(tuple),
        st.lists(text, max_size=2).map(tuple),
        st.lists(st.builds(CellOutcome, text, text, text, text, text, text), max_size=2)
        .map(tuple), st.lists(text, max_size=2).map(tuple), st.booleans(),
        st.lists(text, max_size=2).map(tuple), st.booleans())


def test_the_gate_outcome_survives_results_json_whole():
    from hypothesis import given, settings

    from lac_core.verdicts.gate import GateOutcome

    @settings(max_examples=200, deadline=None)
    @given(_outcomes())
    def check(outcome):
        back = GateOutcome.from_json(json.loads(json.dumps(outcome.to_json())))
        assert back == outcome

    check()


def test_every_output_renders_the_one_outcome():
    """The terminal lines, the JUnit case and its properties, SUMMARY.md's gate and the run's
    first line say the same drift and changed verdict, each read from the typed outcome."""
    from lac_core.report.summary import run_outcome
    from lac_core.report.tables import gate_lines
    from lac_core.suite.plugin import gate_report
    from lac_core.verdicts.gate import Changed, Drift, GateOutcome

    outcome = GateOutcome("failed", drift=(Drift("m", "g", "C1/g1/median", 1.5, 1.9, 0.01),),
                          changed_verdicts=(Changed("C4", "m", "g", "HOLDS", "FAILS"),))
    terminal = "\n".join(outcome.failure_lines())
    junit = gate_report(outcome)
    assert junit.outcome == "failed" and junit.longrepr == terminal
    assert dict(junit.user_properties) == {"lac_gate": "failed", "lac_drift": 1,
                                           "lac_changed_verdicts": 1}
    doc = {"run": {"failed": {}, "not_run": []}, "verdicts": [],
           "regression_gate": outcome.to_json()}
    markdown = "\n".join(gate_lines(doc["regression_gate"]))
    first = run_outcome(doc).line()
    for said in (terminal, markdown, first):
        assert "C4" in said and ("C1/g1/median" in said or "1 deciding number" in said), said
    assert "m / g: C1/g1/median: baseline 1.5, now 1.9, tolerance 0.01" in terminal
    assert "| m / g | C1/g1/median | 1.5 | 1.9 | 0.01 |" in markdown
