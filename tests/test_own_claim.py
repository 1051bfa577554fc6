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

PAGE = ROOT / "docs" / "own-claim.md"
FILE = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)


def page_files() -> dict[str, str]:
    """The files the page shows, by name: the code the test runs is the page's code."""
    return dict(FILE.findall(PAGE.read_text()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout, installed (without dependencies: they are this venv's) into a
    folder of its own that comes first on sys.path."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp / "dist")], check=True)
    wheel = next((tmp / "dist").glob("lac-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True)
    return tmp / "site"


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
    assert list(sec["verdicts"]) == ["SHARE"] and "additive_below_null" in sec["cell_findings"]
    assert any(k.startswith("SHARE/p_last/") for k in sec["baselines"])

    held = _run(folder, installed)
    assert held.returncode == 0, held.stdout[-3000:]  # held to what was recorded
    data = json.loads((folder / "reports" / "results.json").read_text())
    (verdict,) = [v for v in data["verdicts"] if v["claim"] == "SHARE"]
    assert verdict["status"] == sec["verdicts"]["SHARE"] and "fragile" in verdict
    assert all("margin" in p["intervals"] for p in verdict["parts"])
    digest = hashlib.sha256((folder / "share.yaml").read_bytes()).hexdigest()
    assert data["run"]["thresholds_sha256"]["share.yaml"] == digest
    assert data["run"]["git_commit"] is None  # installed, not the checkout
    report = (folder / "reports" / "REPORT.md").read_text()
    assert re.search(r"^\| SHARE \|", report, re.M) and "Run status: COMPLETE" in report

    key = next(k for k in sec["baselines"] if k.startswith("SHARE/"))
    sec["baselines"][key]["value"] += 10 * sec["baselines"][key]["tolerance"] + 1
    (folder / "expected" / "tiny-llama.yaml").write_text(yaml.safe_dump(recorded))
    drifted = _run(folder, installed)
    assert drifted.returncode == 1 and f"tiny-llama / example: {key}: baseline" in drifted.stdout
