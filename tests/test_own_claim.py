"""docs/own-claim.md, run as a user runs it: lac installed from its wheel, the page's files
copied into a folder outside the checkout, a tiny model. The claim gets what a built-in claim
gets: its verdict and report row, intervals, its thresholds in the provenance, expectations
and the regression gate."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from lac_core.paths import ROOT

from .conftest import installed_wheel

PAGE = ROOT / "docs" / "own-claim.md"
FILE = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)


def page_files() -> dict[str, str]:
    """The files the page shows, by name: the code the test runs is the page's code."""
    return dict(FILE.findall(PAGE.read_text()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout, installed (without dependencies: they are this venv's) into a
    folder of its own that comes first on sys.path."""
    return installed_wheel(tmp_path_factory.mktemp("wheel"))


def _run(folder, site, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "LAC_CACHE_DIR": str(folder / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--lac-model", "tiny-llama",
           "--lac-grid", "example", "--lac-expected-dir", "expected", "--lac-no-cache", *args]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def test_the_page_names_its_files():
    assert set(page_files()) == {"conftest.py", "share.yaml", "test_share.py"}


def test_a_claim_of_ones_own_is_first_class(tmp_path, installed):
    folder = tmp_path / "my-claims"
    folder.mkdir()
    for name, text in page_files().items():
        (folder / name).write_text(text)
    where = subprocess.run([sys.executable, "-c", "import lac_core; print(lac_core.__file__)"],
                           cwd=folder, env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed)), where  # the wheel's lac, not the checkout's

    first = _run(folder, installed, "--lac-update-baselines")
    assert "lac: wrote" in first.stdout, first.stdout[-3000:] + first.stderr[-2000:]
    recorded = yaml.safe_load((folder / "expected" / "tiny-llama.yaml").read_text())
    section = recorded["setups"]["float32 model"]
    sec = next(iter(section.values()))
    assert list(sec["verdicts"]) == ["SHARE", "LARGER"]
    assert "additive_below_null" in sec["cell_findings"]
    assert any(k.startswith("SHARE/p_last/") for k in sec["baselines"])

    held = _run(folder, installed)
    assert held.returncode == 0, held.stdout[-3000:]  # held to what was recorded
    data = json.loads((folder / "reports" / "results.json").read_text())
    (verdict,) = [v for v in data["verdicts"] if v["claim"] == "SHARE"]
    assert verdict["status"] == sec["verdicts"]["SHARE"] and "fragile" in verdict
    assert all("margin" in p["intervals"] for p in verdict["parts"])
    (larger,) = [v for v in data["verdicts"] if v["claim"] == "LARGER"]  # reads |dX|, |dY| and
    assert all({"margin", "norm_dx", "norm_dy", "along_base"} <= set(p["intervals"])  # the
               for p in larger["parts"])  # user's own metric, each with its interval
    (sweep,) = data["sweeps"]
    assert len(sweep["geometry"]["persona_along_base"]) == len(sweep["cells"])
    digest = hashlib.sha256((folder / "share.yaml").read_bytes()).hexdigest()
    assert data["run"]["thresholds_sha256"]["share.yaml"] == digest
    assert data["run"]["git_commit"] is None  # installed, not the checkout
    report = (folder / "reports" / "REPORT.md").read_text()
    assert re.search(r"^\| SHARE \|", report, re.M) and "Run status: COMPLETE" in report
    assert all(UNIT_ROW.search(r) for r in share_rows(report)), report[-4000:]  # its unit
    (worst,) = re.findall(r"^\| additive_below_null \| tiny-llama / example \| \d+/9 \| (.*) \|$",
                          report, re.M)  # its failing cells, by the severity it declares
    assert not re.search(r"\(-?0\)", worst), worst

    key = next(k for k in sec["baselines"] if k.startswith("SHARE/"))
    sec["baselines"][key]["value"] += 10 * sec["baselines"][key]["tolerance"] + 1
    (folder / "expected" / "tiny-llama.yaml").write_text(yaml.safe_dump(recorded))
    drifted = _run(folder, installed)
    assert drifted.returncode == 1 and f"tiny-llama / example: {key}: baseline" in drifted.stdout


BROKEN = '''
from pathlib import Path

from lac_core import Claim, Names, register_claim


def raising_rule(summary, t):
    """Reads a probe that was never swept: KeyError at this line."""
    return summary.kl_add["no_such_probe"]


def wrong_type_rule(summary, t):
    """Returns a status string instead of a Verdict."""
    return "HOLDS"


for claim_id, rule in (("RAISES", raising_rule), ("WRONGTYPE", wrong_type_rule)):
    register_claim(Claim(id=claim_id, statement=f"{claim_id}: a broken rule", experiment="sweep",
                         rule=rule, thresholds={"probes": Names},
                         thresholds_file=Path(__file__).with_name("broken.yaml")))
'''
BROKEN_YAML = "RAISES:\n  probes: [p_last]\nWRONGTYPE:\n  probes: [p_last]\n"
BROKEN_TESTS = '''
import pytest


@pytest.mark.claim("RAISES")
def test_raises(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("RAISES", sweep_result, lm.spec.name, sweep_grid)


@pytest.mark.claim("WRONGTYPE")
def test_wrong_type(lm, sweep_grid, sweep_result, claim_gate):
    claim_gate("WRONGTYPE", sweep_result, lm.spec.name, sweep_grid)
'''


def _checkout_run(folder, *args, expected="expected"):
    """pytest in `folder` on this checkout's lac (or the one PYTHONPATH names), a tiny model."""
    env = {**os.environ, "LAC_CACHE_DIR": str(folder.parent / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-expected-dir", expected, *args]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def _share_project(folder, conftest_extra: str = "") -> None:
    folder.mkdir(parents=True)
    for name, text in page_files().items():
        (folder / name).write_text(text + (conftest_extra if name == "conftest.py" else ""))


@pytest.fixture(scope="module")
def sub_folder_runs(tmp_path_factory):
    """The page's claim and two broken ones in rootdir/myclaims/ (a conftest pytest imports while
    collecting, after lac started): run whole under xdist, then the page's test alone on the
    cached result. One project for both issues, so the suite pays for one sweep."""
    root = tmp_path_factory.mktemp("own") / "project"
    folder = root / "myclaims"
    _share_project(folder, BROKEN)
    (folder / "broken.yaml").write_text(BROKEN_YAML)
    (folder / "test_broken.py").write_text(BROKEN_TESTS)
    (root / "expected").mkdir()
    whole = _checkout_run(root, "-n", "2")
    first = json.loads((root / "reports" / "results.json").read_text())
    report = (root / "reports" / "REPORT.md").read_text()
    alone = _checkout_run(root, "myclaims/test_share.py", "-n", "2")  # the broken claims are
    # registered, not run; the same workers' threads, so the cached sweep is used as it is
    again = json.loads((root / "reports" / "results.json").read_text())
    return root, whole, first, report, alone, again


def test_a_rule_that_raises_or_returns_no_verdict_is_an_error_of_its_own_claim(sub_folder_runs):
    """Its test fails naming the exception (or the type returned); the report and results.json
    say 'error' with it; the other claim's verdict is what it is without the broken ones."""
    _root, run, data, report, alone, again = sub_folder_runs
    out = run.stdout
    assert run.returncode == 1, out[-3000:] + run.stderr[-2000:]
    assert re.search(r"RAISES on tiny-llama / example: error: KeyError: 'no_such_probe' at "
                     r"conftest.py:\d+ in raising_rule", out), out[-4000:]
    assert re.search(r"WRONGTYPE on tiny-llama / example: error: its rule returned str, not a "
                     r"Verdict", out), out[-4000:]
    failed = data["run"]["failed"]
    assert failed["tiny-llama / example / claim RAISES"].startswith("error: KeyError: "
                                                                     "'no_such_probe'")
    assert failed["tiny-llama / example / claim WRONGTYPE"].startswith("error: its rule "
                                                                       "returned str")
    why = {n["claim"]: n["why"] for n in data["run"]["not_run"]}
    assert set(why) == {"RAISES", "WRONGTYPE"} and all(w.startswith("error: ") for w in
                                                       why.values())
    assert re.search(r"^\| RAISES \| error \(\d\) \|", report, re.M), report[:3000]
    assert re.search(r"^- \(\d\) error: KeyError: 'no_such_probe'", report, re.M)
    assert "tiny-llama / example / claim WRONGTYPE: error: its rule returned str" in report
    share = [v for v in data["verdicts"] if v["claim"] == "SHARE"]
    assert share and share == [v for v in again["verdicts"] if v["claim"] == "SHARE"], \
        alone.stdout[-3000:]


def test_a_claim_registered_in_a_sub_folder_is_judged_and_in_the_provenance(sub_folder_runs):
    """Its thresholds are loaded after collection in each xdist worker, and its file is hashed
    into the provenance the controller reports."""
    root, run, data, report, alone, again = sub_folder_runs
    digest = hashlib.sha256((root / "myclaims" / "share.yaml").read_bytes()).hexdigest()
    for got, said in ((data, run.stdout), (again, alone.stdout)):
        assert "no thresholds section" not in said, said[-3000:]
        assert [v["claim"] for v in got["verdicts"]] == ["LARGER", "SHARE"], said[-3000:]
        assert got["run"]["thresholds_sha256"]["share.yaml"] == digest
    assert re.search(r"^\| SHARE \| (HOLDS|FAILS|INCONCLUSIVE)", report, re.M)


UNIT_ROW = re.compile(r"\| -?\d+\.\d{4} nats \| \[-?\d+\.\d{4}, -?\d+\.\d{4}\] nats \|")


def share_rows(report: str) -> list[str]:
    """SHARE's rows of the verdict details and of the interval table."""
    return re.findall(r"^\| SHARE \| tiny-llama / example \| (?:\w+ \| )?\w+ \| .*$", report, re.M)


def test_a_claims_declared_unit_and_cells_against_show_as_a_builtins_do(sub_folder_runs):
    """SHARE declares the unit of its margins and the cells against its line: under xdist (the
    controller, which reports, never imported the conftest) REPORT.md puts the unit after each
    margin and interval as it does C1's 'nats', and its failing test names the cells against
    the line with their values as a built-in's does (SHARE fails on tiny-llama, and nothing is
    expected here)."""
    _root, run, _data, report, _alone, _again = sub_folder_runs
    rows = share_rows(report)
    assert len(rows) >= 2 and all(UNIT_ROW.search(r) for r in rows), rows or report[-4000:]
    assert re.search(r"SHARE FAILS on tiny-llama / example: .*; cells against the line "
                     r"\(\d+/9\): \S+ \(\d", run.stdout), run.stdout[-4000:]


def test_a_bad_claim_in_a_sub_folder_stops_the_run_before_any_model_loads(tmp_path):
    """rootdir/myclaims/conftest.py is imported while pytest collects, after lac started: a bad
    thresholds section is still exit 4 before a model loads, with or without xdist workers,
    and nothing is written."""
    root = tmp_path / "project"
    _share_project(root / "myclaims")
    (root / "expected").mkdir()
    good = (root / "myclaims" / "share.yaml").read_text()
    (root / "myclaims" / "share.yaml").write_text(good.replace("max_share", "max_shares"))
    for extra in ((), ("-n", "2")):
        bad = _checkout_run(root, *extra)
        said = bad.stdout + bad.stderr
        assert bad.returncode == 4, said[-3000:]
        assert "share.yaml" in said and "SHARE.max_shares" in said, said[-3000:]
        assert "tiny-llama load" not in said and not (root / "reports").exists()


def test_a_users_check_ranks_its_failing_cells_by_its_own_severity_under_xdist(sub_folder_runs):
    """The controller never imported the conftest, so it cannot call the check's severity
    function: each failing cell's severity is computed on the worker when the cell fails and
    travels with its results (it was 0 for every cell before, listed in id order)."""
    _root, run, data, _report, _alone, _again = sub_folder_runs
    entries = [c for c in data["cell_failures"] if c["check"] == "additive_below_null"]
    assert entries, run.stdout[-3000:]
    values = [value for _cell, value in entries[0]["worst"]]
    assert values and all(v > 0 for v in values), entries
    assert values == sorted(values, reverse=True)
