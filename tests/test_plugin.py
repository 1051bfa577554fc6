"""The plugin end to end on a tiny model and the example grid (every experiment): recording
expectations, strict xfails for findings, a changed verdict failing the run, the numeric
regression gate, a model that fails to load failing once, and keyed expectations."""
import json
import subprocess
import sys

import pytest
import yaml

from lac_core.protocol.grids import resolve_grid
from lac_core.run.settings import ROOT

EXAMPLE = resolve_grid("example").key


def _run(tmp_path, *extra, model="tiny-llama"):
    (tmp_path / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "--lac-model", model, "--lac-grid", "example", "-q",
           "-p", "no:cacheprovider", "--lac-reports", str(tmp_path / "reports"),
           "--lac-expected-dir", str(tmp_path / "expected"), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def _section(path):
    return yaml.safe_load(path.read_text())["setups"]["float32 model"][EXAMPLE]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    first = _run(tmp)  # an empty folder of one's own: lac's shipped expectations fill it
    assert first.returncode == 0, first.stdout[-2000:]
    assert "no expectations for" not in first.stdout and "xfailed" in first.stdout
    update = _run(tmp, "--lac-update-baselines")
    assert "lac: wrote" in update.stdout
    return tmp, tmp / "expected" / "tiny-llama.yaml"


def test_the_example_grid_runs_every_experiment(recorded):
    tmp, _ = recorded
    data = json.loads((tmp / "reports" / "results.json").read_text())
    assert {v["claim"] for v in data["verdicts"]} == {"C1", "C1L", "C2", "C3", "C3R", "C4", "C5", "C6"}
    assert all(len(r) == 1 for r in (data["sweeps"], data["markers"], data["host_injection"]))
    grid = data["run"]["grids"]["example"]
    assert grid["sha256"].startswith(EXAMPLE.split("@")[1]) and grid["experiments"] == ["sweep", "markers", "host"]


def test_recorded_findings_pass_as_strict_xfails(recorded):
    tmp, path = recorded
    sec = _section(path)
    assert sec["verdicts"]["C1"] == "FAILS" and sec["baselines"]
    again = _run(tmp)
    assert again.returncode == 0, again.stdout[-2000:]
    assert "xfailed" in again.stdout and "lac verdicts" in again.stdout
    report = (tmp / "reports" / "REPORT.md").read_text()
    assert "| C1 | FAILS |" in report and "Provenance" in report


def _edited(path, edit):
    saved = path.read_text()
    body = yaml.safe_load(saved)
    edit(body["setups"]["float32 model"][EXAMPLE])
    path.write_text(yaml.safe_dump(body))
    return saved


def test_changed_verdict_fails_the_run(recorded):
    tmp, path = recorded
    flip = {"HOLDS": "FAILS", "FAILS": "HOLDS", "INCONCLUSIVE": "HOLDS"}
    saved = _edited(path, lambda sec: sec["verdicts"].update(C4=flip[sec["verdicts"]["C4"]]))
    try:
        out = _run(tmp)
    finally:
        path.write_text(saved)
    assert out.returncode == 1 and "C4 verdict changed on tiny-llama / example" in out.stdout


def test_numeric_drift_fails_the_session(recorded):
    tmp, path = recorded
    key = "C1/p_last/median"

    def bump(sec):
        sec["baselines"][key]["value"] += 10 * sec["baselines"][key]["tolerance"] + 1

    saved = _edited(path, bump)
    try:
        out = _run(tmp)
    finally:
        path.write_text(saved)
    assert out.returncode == 1
    assert f"tiny-llama / example: {key}: baseline" in out.stdout and "numeric drift" in out.stdout


def test_expectations_of_another_template_are_not_used(recorded):
    tmp, _ = recorded
    out = _run(tmp, "--lac-chat-template", "chatml")
    assert out.returncode == 1 and "no expectations for tiny-llama / float32 chatml" in out.stdout


def test_a_model_that_does_not_load_fails_once(tmp_path):
    """A checkpoint whose weights are unreadable: its first test fails with the cause, its other
    tests are skipped, and the next model still runs."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (broken / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (tmp_path / "expected").mkdir()
    cmd = [sys.executable, "-m", "pytest", "claims/", "--lac-no-cache", "-q", "-rfs", "-p", "no:cacheprovider", "--lac-model",
           str(broken), "--lac-model", "tiny-llama", "--lac-grid", "example", "--lac-reports", str(tmp_path / "r"),
           "--lac-expected-dir", str(tmp_path / "expected")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.stdout.count("failed to load:") == 1, out.stdout[-3000:]
    assert "failed to load (the cause is reported once, above)" in out.stdout
    verdicts = json.loads((tmp_path / "r" / "results.json").read_text())["verdicts"]
    assert any(v["claim"] == "C1" and v["model"] == "tiny-llama" for v in verdicts)  # it ran
    assert out.stdout.count("Traceback") == 0 and len(out.stdout) < 60_000
