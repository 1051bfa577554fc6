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
