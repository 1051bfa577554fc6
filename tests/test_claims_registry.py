"""A claim's declaration carries everything said about it (issue 37): what the report, the
gates and the breakdown show of a claim is read from its registered Claim, so a built-in claim
that forgets a field fails here, and a user's claim declared with the same fields is shown as a
built-in is. And one builder per experiment summary: a second one fails here."""
import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lac_core
from lac_core.report import breakdown, tables
from lac_core.verdicts import claims as registry
from lac_core.verdicts import paper, results, rules
from lac_core.verdicts.thresholds import load_thresholds
from lac_core.paths import FIXTURES

BUILTIN = [c.id for c in registry.builtin()]


@pytest.fixture(scope="module")
def paper_verdicts():
    return paper.verdicts(load_thresholds(FIXTURES / "claims.yaml"))


@pytest.mark.parametrize("claim", BUILTIN)
def test_a_builtin_claim_declares_what_the_report_and_gates_need(claim, paper_verdicts):
    """A unit for the margin of every part and precondition its rule gives (on the paper's
    data), the function naming the cells against a part's line, and a severity for each of its
    cell checks: without them its report rows and failure messages silently say less."""
    c = registry.CLAIMS[claim]
    names = {p.name for (cid, _m, _g), v in paper_verdicts.items() if cid == claim
             for p in (*v.preconditions, *v.parts)}
    assert names, f"{claim} gives no part on the paper's data"
    assert {n: c.unit(n) for n in names if not c.unit(n)} == {}, f"{claim}: margin without a unit"
    assert callable(c.against), f"{claim}: no function naming the cells against its line"
    for check in c.cell_checks:
        assert callable(check.severity), f"{claim}: cell check {check.name} has no severity"


def _user_claim(monkeypatch, **fields):
    """A claim of a user's, registered for one test (the registry is restored after it)."""
    monkeypatch.setattr(registry, "CLAIMS", dict(registry.CLAIMS))
    monkeypatch.setattr(registry, "CELL_CHECKS", dict(registry.CELL_CHECKS))
    return lac_core.register_claim(lac_core.Claim(
        id="MINE", statement="a user's claim", experiment="host",
        rule=lambda summary, t: None, thresholds={"max_gap": float}, **fields))


def _verdict(claim, margin):
    part = {"name": "oracle", "status": "FAILS", "margin": margin, "detail": "d", "numbers": {},
            "intervals": {"margin": [margin - 1, margin + 1]}}
    return {"claim": claim, "model": "m", "grid": "g", "status": "FAILS", "fragile": [],
            "deciding": part, "parts": [part], "preconditions": []}


def _row(lines, claim):
    (row,) = [line for line in lines if line.startswith(f"| {claim} |")]
    return row.split(" | ")


def test_a_user_claims_unit_shows_beside_its_margin_as_a_builtins_does(monkeypatch):
    """The verdict details and the interval table put the declared unit after the margin and
    its interval, in the same columns as C4's."""
    _user_claim(monkeypatch, units={"margin": "share of the KL gap"})
    view = tables.View({"verdicts": [_verdict("C4", 0.25), _verdict("MINE", 0.25)],
                        "run": {"not_run": [], "grids": {"g": {"experiments": ["host"]}}}})
    for lines in (tables.claim_details(view), tables.interval_table(view)):
        mine, c4 = _row(lines, "MINE"), _row(lines, "C4")
        assert mine[1:] == c4[1:] and "0.2500 share of the KL gap" in mine, lines


def test_a_user_claims_cells_against_the_line_come_from_its_declaration(monkeypatch):
    """What a failing gate names beside its numbers: (cell, value) pairs as a built-in's read,
    plain cell ids as they are; a claim that declares no function names none."""
    def against(result, part, t):
        return [(c, result.kl[c][part.name]) for c in result.cells
                if result.kl[c][part.name] > t.max_gap] + ["c9"]

    _user_claim(monkeypatch, against=against)
    result = SimpleNamespace(cells=("c0", "c1"), kl={"c0": {"oracle": 0.5}, "c1": {"oracle": 2.0}})
    part = rules.Part("oracle", rules.FAILS, -1.0, "d")
    thresholds = SimpleNamespace(MINE=SimpleNamespace(max_gap=1.0))
    assert registry.against("MINE", part, result, thresholds) == ["c1 (2)", "c9"]
    assert registry.against("C4", None, result, thresholds) == []


def test_a_user_cell_checks_severity_orders_its_worst_cells(monkeypatch):
    """REPORT.md lists a check's failing cells worst first by the severity it declares."""
    check = lac_core.CellCheck("mine_check", "host", lambda r, c, t: [],
                               severity=lambda r, c, t: r.kl[c]["oracle"])
    _user_claim(monkeypatch, cell_checks=(check,))
    result = SimpleNamespace(kl={"a": {"oracle": 0.1}, "b": {"oracle": 3.0}, "c": {"oracle": 1.0}})
    assert breakdown.worst_first("mine_check", result, ["a", "b", "c"], None) == \
        [("b", 3.0), ("c", 1.0), ("a", 0.1)]


SUMMARY_CLASSES = {n for n in dir(results) if n.endswith("Summary") and n != "Summary"}
# The one builder of each experiment's summary, for the full grid and every resample alike.
BUILDERS = {("verdicts/results.py", f.__name__) for f in results.SUMMARIES.values()}
# paper.py builds summaries of another kind of data: the paper's published numbers (its stored
# medians and per-cell values), which no result record holds. It reads no record and is never
# resampled, so it is a reader of published data, not a second builder of a run's summary.
PUBLISHED = {("verdicts/paper.py", n) for n in ("sweep_summary", "marker_summary",
                                                "host_summary")}


def _constructions(root: Path) -> set[tuple[str, str, str]]:
    """(file, top-level function or class, summary class) of every call that names a summary
    class, directly or through a classmethod (HostSummary.of), anywhere in the package."""
    found = set()
    for path in root.rglob("*.py"):
        for top in ast.parse(path.read_text()).body:
            for node in ast.walk(top):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                if isinstance(f, ast.Attribute) and isinstance(f.value, (ast.Name, ast.Attribute)) \
                        and f.attr not in SUMMARY_CLASSES:
                    f = f.value  # HostSummary.of(...), results.HostSummary.of(...)
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name in SUMMARY_CLASSES:
                    found.add((path.relative_to(root).as_posix(),
                               getattr(top, "name", "<module>"), name))
    return found


def test_each_experiment_summary_has_one_builder():
    """The full grid's summary and every resample's come from results.SUMMARIES; any other code
    that builds a SweepSummary, MarkerSummary or HostSummary is a second builder whose fields can
    drift from the first's (as the resampled ones once did)."""
    assert SUMMARY_CLASSES == {"SweepSummary", "MarkerSummary", "HostSummary"}
    got = _constructions(Path(lac_core.__file__).parent)
    assert {(f, fn) for f, fn, _c in got} - BUILDERS - PUBLISHED == set(), sorted(got)
    assert {(f, fn) for f, fn, _c in got if f == "verdicts/results.py"} == BUILDERS


def test_the_summary_scan_finds_a_second_builder(tmp_path):
    """The scan sees a construction in any module, direct or by a classmethod."""
    (tmp_path / "mine.py").write_text("def again(r):\n    return SweepSummary('x', 1)\n\n"
                                      "def host(r):\n    return results.HostSummary.of('h', {}, {})\n")
    assert _constructions(tmp_path) == {("mine.py", "again", "SweepSummary"),
                                        ("mine.py", "host", "HostSummary")}
