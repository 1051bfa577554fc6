"""The run's state and its end, without pytest: verdicts recorded, the report set written, the
expectations updated, and the regression gate firing on a moved number."""
import json

from lac_core.verdicts import rules
from lac_core.run.session import Session
from lac_core.run.settings import Settings

from .test_rules import GOOD, T, sweep


def _session(tmp_path, **kw):
    (tmp_path / "expected").mkdir(exist_ok=True)
    settings = Settings(models=("tiny-llama",), grids=("short",), report_dir=tmp_path / "reports",
                        expected_dir=tmp_path / "expected", **kw)
    return Session.start(settings, args=["claims/"])


def _record(session, kl):
    v = rules.c1(sweep(kl), T.C1)
    session.record_verdict("C1", "tiny-llama", "short", v)
    session.record_cell("additive_vs_null", "tiny-llama", "short", "a__b", ["too big"])
    return v


def test_finish_writes_the_report_and_gates_on_drift(tmp_path):
    first = _session(tmp_path, regen_all=True)
    _record(first, GOOD)
    out = first.finish()
    assert not out.failed and out.lines[0].startswith("lac: wrote")
    assert (tmp_path / "expected" / "tiny-llama.yaml").exists()
    data = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert data["verdicts"][0]["status"] == "HOLDS" and data["cell_failures"][0]["cells"] == ["a__b"]
    assert "| C1 | HOLDS |" in (tmp_path / "reports" / "REPORT.md").read_text()

    same = _session(tmp_path)
    _record(same, GOOD)
    assert same.ledger.verdicts[("C1", "tiny-llama", "short")][1] == "HOLDS"
    assert same.record_cell("additive_vs_null", "tiny-llama", "short", "a__b", []) is True  # a finding
    assert same.finish().failed is False

    moved = _session(tmp_path)
    _record(moved, {**GOOD, 5: 0.05})
    out = moved.finish()
    assert out.failed and any("tiny-llama / short: C1/p_last/median: baseline 0.01, now 0.03" in line
                              for line in out.lines)


def test_an_empty_session_writes_nothing(tmp_path):
    assert _session(tmp_path).finish().lines == [] and not (tmp_path / "reports").exists()
