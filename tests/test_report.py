"""What the report shows never looks more complete than the run behind it: every planned model
has its column, what failed says why in the report set itself, and a run that produced nothing
still replaces the previous report with one that says so."""
import json
import subprocess
import sys

from lac_core.report.document import table
from lac_core.run.settings import ROOT


def _claims(tmp_path, *args):
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-p", "no:cacheprovider",
           "--lac-grid", "example", "--lac-reports", str(tmp_path / "reports"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_a_pipe_in_a_value_stays_in_its_column():
    """Probe A2: a grid key may hold '|': escaped, never a new column."""
    header, rule, row = table(["cell", "clean"], [["pi|rate__bread", "arr"]])
    assert row == "| pi\\|rate__bread | arr |" and row.count(" | ") == header.count(" | ")


def _broken_checkpoint(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (broken / "model.safetensors").write_bytes(b"\0" * 1000)
    (broken / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return broken


def test_a_model_that_failed_to_load_has_its_column_and_its_cause(tmp_path):
    """Probe E8."""
    out = _claims(tmp_path, "--lac-model", "tiny-llama", "--lac-model", str(_broken_checkpoint(tmp_path)),
                  "-k", "c1_additive_sufficiency and not cell")
    assert out.returncode == 1, out.stdout[-2000:]
    data = json.loads((tmp_path / "reports" / "results.json").read_text())
    failed = data["run"]["failed"]
    assert len(failed) == 1 and next(iter(failed)).startswith("broken@")
    report = (tmp_path / "reports" / "REPORT.md").read_text()
    matrix = report.split("## Verdicts")[1].split("##")[0]
    assert "broken@" in matrix and "tiny-llama / example" in matrix
    assert "What failed" in report and next(iter(failed.values()))[:40] in report


def test_a_run_that_produced_nothing_still_replaces_the_previous_report(tmp_path):
    """Probe G1: a folder never keeps an earlier run's report as if it were this one's."""
    first = _claims(tmp_path, "--lac-model", "tiny-llama", "-k", "c1_additive_sufficiency and not cell")
    assert first.returncode in (0, 1)
    before = json.loads((tmp_path / "reports" / "results.json").read_text())["run"]["run_id"]
    again = _claims(tmp_path, "--lac-model", str(_broken_checkpoint(tmp_path)),
                    "-k", "c1_additive_sufficiency and not cell")
    assert again.returncode == 1
    run = json.loads((tmp_path / "reports" / "results.json").read_text())["run"]
    assert run["run_id"] != before and run["status"] == "PARTIAL" and run["failed"]
    assert "Run status: PARTIAL" in (tmp_path / "reports" / "REPORT.md").read_text()


# ---- The report's shape, from a small synthetic session built in-process (no model runs) ----

import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lac_core.report import document  # noqa: E402
from lac_core.report.source import RunSource  # noqa: E402
from lac_core.verdicts.gate import CellOutcome, GateOutcome  # noqa: E402
from lac_core.run.resultsfile import results_document  # noqa: E402
from lac_core.run.session import Session  # noqa: E402
from lac_core.run.settings import Settings  # noqa: E402
from lac_core.verdicts import claims as registry, uncertainty  # noqa: E402
from lac_core.verdicts.results import (MARKER_CONDITIONS, GEOMETRY_STATS, HostResult,  # noqa: E402
                                       MarkerResult, SteeringResult, SweepResult)

PROBES = ("p_user_last", "p_last", "g1", "g2")
LAYERS = (2, 4, 6)


def _records(model, grid, rng):
    """Synthetic records of each experiment the grid runs; p_user_last's null KL is 0 at L6, so
    its F there is undefined."""
    cells = tuple(c.id for c in grid.cells)
    n, out = len(cells), {}
    if "sweep" in grid.experiments:
        add = rng.uniform(0.5, 2.0, (n, len(PROBES), len(LAYERS)))
        null = add * rng.uniform(1.1, 1.6, add.shape)
        null[:, 0, 2] = 0.0
        geo = {s: rng.uniform(0.1, 0.9, (n, len(PROBES), 8)) for s in GEOMETRY_STATS}
        out["sweep"] = SweepResult(model, grid.name, 8, LAYERS, PROBES, cells, add, null, geo, {},
                                   grid_sha256=grid.sha256, **grid.design)
    if "markers" in grid.experiments:
        hits = {c: {k: (["arr"] if i % 2 == 0 and k != "bare" else []) for k in MARKER_CONDITIONS}
                for i, c in enumerate(cells)}
        texts = {c: {k: f"{k} text of {c}\x13 ahoy\nmatey |" for k in MARKER_CONDITIONS}
                 for c in cells}
        out["markers"] = MarkerResult(model, grid.name, 4, 80, cells, texts, {}, hits,
                                      grid_sha256=grid.sha256, **grid.design)
    if "host" in grid.experiments:
        kl = {c: {"host": 10.0 + i, "oracle": 8.0 + i, "cached": 9.5 + i, "layers 4": 9.5 + i,
                  "layers 3,4": 9.0 + i} for i, c in enumerate(cells)}
        out["host"] = HostResult(model, grid.name, 4, ((4,), (3, 4)), cells, kl, {},
                                 grid_sha256=grid.sha256, **grid.design)
        dose = {str(a): {c: {"tokens": [], "text": "", "hits": [], "kl": float(a)} for c in cells}
                for a in (0.0, 0.5, 1.0, 2.0)}
        out["steering"] = SteeringResult(model, grid.name, 4, 80, cells, (0.0, 0.5, 1.0, 2.0),
                                         "next", dose, [], grid_sha256=grid.sha256)
    return out


def synthetic_session(models=("tiny-llama", "tiny-qwen2"), grids=("example", "markers"),
                      gate=None, drop=(), expected_dir=None):
    """A session holding synthetic records and the verdicts lac's rules give on them; `drop`
    leaves out verdicts (claim, model, grid) as if their tests did not run; `expected_dir`: the
    expectations read (lac's own by default)."""
    s = Session.start(Settings(models=tuple(models), grids=tuple(grids),
                               **({"expected_dir": expected_dir} if expected_dir else {})))
    rng = np.random.default_rng(0)
    for model in models:
        s.ledger.provenance[model] = {k: "x" for k in (
            "source", "sha256", "architecture", "n_layers", "d_model", "dtype",
            "attn_implementation", "device", "torch", "transformers", "chat_template",
            "chat_template_sha256", "decoding")}
        for label, grid in s.grids.items():
            for kind, r in _records(model, grid, rng).items():
                s.ledger.results[(model, label, kind)] = r
                for claim in registry.of_experiment(kind):
                    if (claim.id, model, label) not in drop:
                        s.record_verdict(claim.id, model, label,
                                         uncertainty.judge(claim.id, r, s.thresholds))
    s.out.gate_outcome = GateOutcome.from_json(gate if gate is not None else {
        "status": "passed", "drift": [], "changed_verdicts": [], "without_expectations": [],
        "refused": []})
    return s


def source(session):
    """What the session's report is rendered from: its results.json, written and read back."""
    return RunSource.of(json.loads(document.results_text(results_document(session))))


FAILED_GATE = {"status": "failed", "without_expectations": [], "refused": [],
               "drift": [{"model": "tiny-llama", "grid": "example", "quantity": "C1/p_last/median",
                          "baseline": 1.5, "value": 1.9, "tolerance": 0.01}],
               "changed_verdicts": [{"claim": "C4", "model": "tiny-qwen2", "grid": "example",
                                     "expected": "HOLDS", "got": "FAILS"}]}


@pytest.fixture(scope="module")
def report_md():
    s = synthetic_session(gate=FAILED_GATE)
    return document.report_markdown(source(s), {}), s


def _headings(text):
    return [line for line in text.splitlines() if line.startswith("## ")]


def test_experiment_sections_come_in_order_under_anchors_the_matrix_links(report_md):
    text, _s = report_md
    heads = [h for h in _headings(text) if h.startswith("## Experiment")]
    assert [h.split(":")[0] for h in heads] == [f"## Experiment {i}" for i in (1, 2, 3, 4)]
    matrix = text.split("## Verdicts")[1].split("\n## ")[0]
    for i in (1, 2, 3):
        assert f"[experiment {i}](#experiment-{i})" in matrix
        assert text.index(f'<a id="experiment-{i}"></a>') < text.index(f"## Experiment {i}:")
    assert text.index(f"## Experiment 4:") > text.index("## Experiment 3:")


def test_the_title_names_the_models_and_statements_sit_beside_verdicts(report_md):
    text, _s = report_md
    assert text.splitlines()[0].startswith(
        "# lac report: failed (tiny-llama, tiny-qwen2 on example, markers): ")
    matrix = text.split("## Verdicts")[1].split("\n## ")[0]
    row = next(line for line in matrix.splitlines() if line.startswith("| C1 |"))
    assert re.match(r"\| C1 \| (HOLDS|FAILS)", row) and registry.CLAIMS["C1"].statement in row


def test_the_interval_appendix_comes_last(report_md):
    text, _s = report_md
    assert _headings(text)[-1].startswith("## Appendix: every deciding number")
    assert text.index("## Provenance") < text.index("## Appendix")


def test_margins_carry_their_units(report_md):
    text, _s = report_md
    details = text.split("## Claim by claim")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0][2:]: line for line in details.splitlines()[2:]}
    assert re.search(r"\| -?\d+\.\d{4} nats \|", rows["C1"])
    assert re.search(r"\| -?\d+\.\d{4} cosine \|", rows["C2"])
    assert re.search(r"\| -?\d+\.\d{4} share of the KL gap \|", rows["C4"])
    appendix = text.split("## Appendix")[1]
    assert re.search(r"\| C4 \| [^|]+ \| precondition \| \w+ \| -?\d+\.\d{4} nats \|", appendix)


def test_a_grid_without_a_sweep_is_one_note_not_a_cell_per_model(report_md):
    text, _s = report_md
    matrix = text.split("## Verdicts")[1].split("\n## ")[0]
    assert "not run: the grid runs" not in matrix
    notes = [line for line in matrix.splitlines() if line.startswith("- `·` grid markers")]
    assert len(notes) == 1 and "C1, C1L, C2, C5, C6" in notes[0]


def test_a_verdict_that_did_not_come_gives_its_reason_once():
    s = synthetic_session(models=("tiny-llama",), grids=("example",),
                          drop={("C1", "tiny-llama", "example"), ("C2", "tiny-llama", "example")})
    matrix = document.report_markdown(source(s), {}).split("## Verdicts")[1].split("\n## ")[0]
    assert matrix.count("| not run (1) |") == 2 and matrix.count("- (1) not run: deselected") == 1


def test_the_gate_section_shows_drift_and_changed_verdicts(report_md):
    text, _s = report_md
    gate = text.split("## Regression gate")[1].split("\n## ")[0]
    assert gate.startswith(": failed") and "1 deciding number beyond tolerance" in gate
    assert "| tiny-llama / example | C1/p_last/median | 1.5 | 1.9 | 0.01 |" in gate
    assert "| C4 | tiny-qwen2 / example | HOLDS | FAILS |" in gate


def test_sample_generations_of_the_marker_cells_are_shown(report_md):
    text, _s = report_md
    exp2 = text.split("## Experiment 2")[1].split("\n## ")[0]
    assert "Sample generations of cells whose clean text has a persona marker" in exp2
    assert "clean     [arr] clean text of pirate__bread\\x13 ahoy⏎matey |" in exp2
    assert "bare      [-] bare text of pirate__bread" in exp2


def test_summary_has_status_matrix_with_expected_and_a_failed_gate(report_md):
    from lac_core.report.summary import summary_markdown
    _text, s = report_md
    doc = results_document(s)
    summary = summary_markdown(document.view(source(s)))
    assert summary.startswith("# lac: failed (tiny-llama, tiny-qwen2 on example, markers): ")
    assert "**Run status: COMPLETE" in summary and "![" not in summary
    assert "| claim | tiny-llama / example |" in summary
    assert re.search(r"\| C1 \| \w+ \((expected \w+|no expectation)\) \|", summary)
    assert "**Regression gate: failed**" in summary
    assert "| tiny-llama / example | C1/p_last/median | 1.5 | 1.9 | 0.01 |" in summary


def test_summary_from_a_bare_results_dict():
    """SUMMARY.md needs nothing but results.json's dict."""
    from lac_core.report.summary import summary_markdown
    from lac_core.report.tables import View
    doc = {"run": {"run_id": "r1", "status": "PARTIAL", "wall_seconds": 3, "failed": {},
                   "grids": {"short": {"experiments": ["sweep"]}},
                   "not_run": [{"claim": "C1L", "model": "m", "grid": "short",
                                "why": "deselected"}]},
           "models": {"m": {}}, "regression_gate": {"status": "not applied", "why": "updating"},
           "verdicts": [{"claim": "C1", "model": "m", "grid": "short", "status": "FAILS",
                         "fragile": [], "expected": "FAILS"}]}
    text = summary_markdown(View(doc))
    assert "| C1 | FAILS (expected FAILS) |" in text and "| C1L | not run (1) |" in text
    assert "- (1) not run: deselected" in text
    assert "**Regression gate: not applied** (updating)" in text


def test_compare_md_is_in_the_set_only_with_two_models():
    one = document.Plan(("tiny-llama",), {"example": ("sweep", "markers", "host")})
    two = document.Plan(("tiny-llama", "tiny-qwen2"), {"example": ("sweep", "markers", "host")})
    assert "COMPARE.md" not in document.report_names(one)
    names = document.report_names(two)
    assert {"COMPARE.md", "SUMMARY.md", "figures/compare_kl_by_depth.svg"} <= set(names)
    assert all(n[:-4] + ".svg" in names for n in names if n.endswith(".png"))


def test_compare_md_sets_the_models_side_by_side(tmp_path):
    s = synthetic_session(grids=("example",))
    writers = {}
    for out in document.OUTPUTS:
        writers.update(out.writers(source(s)))
    assert "COMPARE.md" in writers
    writers["COMPARE.md"](tmp_path / "COMPARE.md")
    text = (tmp_path / "COMPARE.md").read_text()
    assert "| claim | statement | tiny-llama | tiny-qwen2 | models |" in text
    assert "(figures/compare_kl_by_depth.png)" in text and "no null runs" in text
    single = synthetic_session(models=("tiny-llama",), grids=("example",))
    assert not any("COMPARE" in n for out in document.OUTPUTS for n in out.writers(source(single)))


def test_an_update_that_needs_review_says_so_with_its_changes():
    from lac_core.report.summary import summary_markdown
    from lac_core.report.tables import View
    gate = {"status": "not applied", "why": "this run rewrote the expectations", "drift": [],
            "changed_verdicts": [], "without_expectations": [], "refused": [],
            "rewritten": ["m / float32 model / short@ab: C1/g1/median: 1.2 -> 1.4"], "review": True}
    doc = {"run": {"run_id": "r1", "status": "COMPLETE", "wall_seconds": 3, "failed": {},
                   "grids": {"short": {"experiments": ["sweep"]}}, "not_run": []},
           "models": {"m": {}}, "regression_gate": gate,
           "verdicts": [{"claim": "C1", "model": "m", "grid": "short", "status": "FAILS",
                         "fragile": [], "expected": "FAILS"}]}
    text = summary_markdown(View(doc))
    assert "1 changes to review: the run fails until it is rerun without" in text
    assert "- m / float32 model / short@ab: C1/g1/median: 1.2 -> 1.4" in text


# The first line of SUMMARY.md and REPORT.md: the run's outcome and why, never "passed" above a
# run whose tests fail.
def _red_doc(gate=None, verdicts=(("C1", "FAILS", None), ("C2", "INCONCLUSIVE", None),
                                  ("C6", "HOLDS", None))):
    """A bare results.json dict of one model on one grid, run with no expectations."""
    gate = gate or {"status": "passed", "drift": [], "changed_verdicts": [], "refused": [],
                    "without_expectations": ["m / float32 model / short@ab"]}
    return {"run": {"run_id": "r1", "status": "COMPLETE", "wall_seconds": 3, "failed": {},
                    "grids": {"short": {"experiments": ["sweep"]}}, "not_run": []},
            "models": {"m": {}}, "regression_gate": gate,
            "verdicts": [{"claim": c, "model": "m", "grid": "short", "status": st,
                          "fragile": [], "expected": exp} for c, st, exp in verdicts]}


def test_the_first_line_says_a_run_with_unexpected_failures_failed_and_why():
    """Claims that do not hold with nothing expected fail their tests: the first line says the
    run failed, which claims, and that nothing gated them (not the gate's "passed")."""
    from lac_core.report.summary import summary_markdown
    from lac_core.report.tables import View
    first = summary_markdown(View(_red_doc())).splitlines()[0]
    assert first.startswith("# lac: failed (m on short): "), first
    assert "2 claims fail with nothing expected (m / short: C1 FAILS, C2 INCONCLUSIVE)" in first
    assert "not gated: no expectations for m / float32 model / short@ab" in first
    assert "passed" not in first


def test_the_first_line_of_a_green_run_says_passed_and_what_it_was_checked_against():
    from lac_core.report.summary import run_outcome
    held = _red_doc(verdicts=(("C1", "HOLDS", None),))
    assert run_outcome(held).line() == \
        "passed: every claim holds; not gated: no expectations for m / float32 model / short@ab"
    gated = _red_doc(gate={"status": "passed", "drift": [], "changed_verdicts": [],
                           "refused": [], "without_expectations": []},
                     verdicts=(("C1", "FAILS", "FAILS"), ("C2", "HOLDS", "HOLDS")))
    assert run_outcome(gated).line() == "passed: every verdict as expected, every deciding " \
        "number within its baseline's tolerance"


def test_the_first_line_of_the_report_names_drift_and_changed_verdicts(report_md):
    text, _s = report_md
    first = text.splitlines()[0]
    assert first.startswith("# lac report: failed (tiny-llama, tiny-qwen2 on example, markers): ")
    assert "1 deciding number beyond tolerance" in first and "1 verdict changed" in first


def test_a_gate_with_no_expectations_is_not_applied_and_unexpected_cells_are_listed(tmp_path):
    """With nothing recorded, nothing was gated: the gate says "not applied" (not "passed"),
    and a per-cell check that fails with nothing expected (a failed test) is in the gate's
    outcome and on the first line."""
    from lac_core.run import gating
    grid = tmp_path / "example.yaml"  # a grid of one's own: no expectations, shipped or not
    grid.write_text((ROOT / "fixtures" / "grids" / "example.yaml").read_text().replace(
        "bake a loaf", "bake a round loaf"))
    s = synthetic_session(models=("tiny-llama",), grids=(str(grid),), expected_dir=tmp_path)
    s.record_cell("additive_vs_null", "tiny-llama", "example", "pirate__bread", ["KL above"])
    s.record_cell("additive_vs_null", "tiny-llama", "example", "chef__tax", [])
    gate = s.gate(json.loads(document.results_text(results_document(s))))
    assert gate.status == "not applied" and "no expectations" in gate.why
    assert gate.unexpected_cells == (CellOutcome("additive_vs_null", "tiny-llama", "example",
                                                 "pirate__bread", "passes", "fails"),)
    from lac_core.report.summary import run_outcome
    s.out.gate_outcome = gate
    outcome = run_outcome(results_document(s))
    assert outcome.status == "failed" and \
        "1 cell fails a per-cell check with nothing expected (additive_vs_null on tiny-llama / " \
        "example: pirate__bread)" in outcome.line()
