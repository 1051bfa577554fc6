"""Hostile folders (issue 36, generated tests): hypothesis builds a report folder as a careless or
hostile colleague leaves it on a shared machine (their files named like lac's outputs and near
them, staging and manifest look-alikes, links in and out, FIFOs, a folder another run holds, the
expectations folder inside it) and runs lac into it (complete, SIGINT, SIGTERM, an experiment that
raises) on tiny-llama. After each run: no file lac did not write changed or vanished, nothing was
written outside the folder, and the set published is COMPLETE for the run or PARTIAL saying why
(or, when the folder is in the way, the run is refused with exit 4 and nothing is written)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from lac_core.report import document as report, reportset
from lac_core.report.reportset import Folder
from lac_core.run.session import Session
from lac_core.run.settings import ROOT, Settings
from lac_core.verdicts import expected

MARK = ".lac-staging-of"  # lac's mark in a staging folder it made (reportset.MARK)
EXAMPLES = 6  # generated examples, beside the explicit ones below: about 10 s each on 2 cores
CLAIMS = "claims/test_c1_additive_sufficiency.py"  # one claim and one check per cell: 5 tests
GRID = """baseline:
  persona: a thoughtful person
  task: Give advice to someone facing a difficult decision.
template: "As {persona}, {task}"
personas:
  pirate: a pirate captain
  nurse: a night nurse
tasks:
  bread: Explain how to bake bread.
  tax: Explain income tax.
"""
PLUGIN = """
import os, signal
import pytest

RUN, AT, seen = os.environ["LAC_HOSTILE_RUN"], int(os.environ["LAC_HOSTILE_AT"]), []

if RUN == "raises":
    import lac_core.protocol.experiments as experiments

    def _broken(*args, **kwargs):
        raise RuntimeError("the sweep raised (injected by the hostile-folder test)")

    experiments.sweep = _broken


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if RUN.startswith("SIG") and "lm" in item.fixturenames:
        if len(seen) == AT:  # a real signal to this process, before lac test number AT
            os.kill(os.getpid(), getattr(signal, RUN))
        seen.append(item.nodeid)
"""
# Regular files a user keeps beside lac's: never lac's, never touched.
NEAR = ["results.json.bak", "REPORT.md~", "report.md", "SUMMARY.md.orig", "figures.txt",
        "figures/my_plot.png", "notes/results.json", "lac-20260101T000000Z-abcdef/results.json",
        "expected/notes.md", "expected/tiny-llama.yaml.bak", ".lac-lock.bak"]
# Named like lac's staging or manifest, not made by lac: never touched.
LOOK_ALIKES = ["staging folder", "staging file", "staging with a user's mark", "staging with a "
               "linked mark", "staging with a folder mark", "staging link", "manifest backup",
               "manifest temp link"]
# Harmless links in the folder (lac never writes through them): to a file, to a folder, dangling.
LINKS = ["to a file outside", "to a folder outside", "dangling", "to the folder itself"]
# Each makes lac refuse the folder at start (exit 4, nothing written), "user file" and "edited"
# unless --lac-reports-overwrite.
OBSTACLES = [None, "user file at an output name", "link at an output name", "figures links out",
             "fifo at an output name", "locked by another run", "damaged manifest",
             "lac's file edited"]


def _names() -> list[str]:
    return Session.start(Settings(models=("tiny-llama",), grids=(str(_grid()),))).report_files()


def _grid() -> Path:
    path = Path(tempfile.gettempdir()) / "lac-hostile-grid" / "tiny.yaml"
    path.parent.mkdir(exist_ok=True)
    if not path.is_file() or path.read_text() != GRID:
        path.write_text(GRID)
    return path


def snapshot(top: Path) -> dict[str, tuple]:
    """Every path below `top` (not following links): its type and its link target or content hash
    (a FIFO or socket is never opened)."""
    out = {}
    for where, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(where) / name
            st_ = os.lstat(path)
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = ("other", stat.S_IFMT(st_.st_mode))
    return out


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build(base: Path, names: list[str], case: dict) -> dict:
    """The hostile folder base/reports (beside base/outside, a user's files out of lac's reach);
    what it may let lac touch, and whether it must refuse the run."""
    reports, outside = base / "reports", base / "outside"
    _file(outside / "theirs.txt", "a colleague's file")
    _file(outside / "theirs" / "kl_by_layer.png", "a colleague's figure")
    _file(outside / "theirs" / MARK, "lac staging of run r0\n")
    (outside / "into-reports").symlink_to(reports)  # a link from outside into the folder
    (reports / "expected").mkdir(parents=True)
    info = {"lacs": {}, "sweepable": set(), "refused": False, "hold": None}
    obstacle = case["obstacle"]
    if case["previous"] or obstacle == "lac's file edited":  # a set lac published before
        prev = {"results.json": "{}", "REPORT.md": "**Run status: COMPLETE.**",
                "COMPARE.md": "an earlier two-model run", "figures/old_figure.png": "old"}
        Folder(reports).publish({n: (lambda p, t=t: p.write_text(t)) for n, t in prev.items()},
                                report.REPLACES)
        info["lacs"] = reportset.manifest(reports)
        if case["previous"] == "stale one edited":  # no longer lac's, and not written this run
            _file(reports / "COMPARE.md", "the user's notes on the comparison")
    if case["leftover"] and hasattr(Folder, "make_staging"):  # a killed run's staging: lac's
        staging = Path(Folder(reports, run_id="killed").make_staging())
        _file(staging / "figures" / "half.png", "half")
        info["sweepable"].add(staging.name)
    for rel in case["near"]:
        _file(reports / rel, f"the user's {rel}")
    for kind in case["look_alikes"]:
        if kind == "staging folder":
            _file(reports / ".lac-staging-my-notes" / "notes.txt", "my notes")
        elif kind == "staging file":
            _file(reports / ".lac-staging-draft.md", "my draft")
        elif kind == "staging with a user's mark":
            _file(reports / ".lac-staging-mine" / MARK, "my file, named oddly\n")
        elif kind == "staging with a linked mark":
            (reports / ".lac-staging-linked").mkdir()
            (reports / ".lac-staging-linked" / MARK).symlink_to(
                outside / "theirs" / MARK)
        elif kind == "staging with a folder mark":
            _file(reports / ".lac-staging-dir" / MARK / "x", "x")
        elif kind == "staging link":
            (reports / ".lac-staging-link").symlink_to(outside / "theirs")
        elif kind == "manifest backup":
            _file(reports / ".lac-manifest.json.bak", json.dumps({"files": {"x": None}}))
        elif kind == "manifest temp link":
            (reports / "..lac-manifest.json.tmp").symlink_to(outside / "theirs.txt")
    for kind in case["links"]:
        target = {"to a file outside": outside / "theirs.txt", "to a folder outside":
                  outside / "theirs", "dangling": base / "nowhere", "to the folder itself":
                  reports}[kind]
        (reports / f"link {kind}").symlink_to(target)
    at = case["output"] if case["output"] in names else names[0]
    if obstacle in ("link at an output name", "fifo at an output name"):
        (reports / at).unlink(missing_ok=True)  # in place of the previous set's file
    if obstacle == "user file at an output name":
        _file(reports / at, "the user's own file at one of lac's names")
        info["refused"] = not case["overwrite"]
    elif obstacle == "link at an output name":
        (reports / at).parent.mkdir(parents=True, exist_ok=True)
        (reports / at).symlink_to(outside / "theirs.txt")
        info["refused"] = True
    elif obstacle == "figures links out":
        if not (reports / "figures").exists():
            (reports / "figures").symlink_to(outside / "theirs")
            info["refused"] = True
    elif obstacle == "fifo at an output name":
        (reports / at).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(reports / at)
        info["refused"] = True
    elif obstacle == "locked by another run":
        info["hold"] = Folder(reports)
        info["hold"].lock("another-run")
        info["refused"] = True
    elif obstacle == "damaged manifest":
        (reports / reportset.MANIFEST).unlink(missing_ok=True)
        (reports / reportset.MANIFEST).write_text("{not json")
        info["lacs"], info["refused"] = {}, True
    elif obstacle == "lac's file edited":
        (reports / "results.json").write_text('{"edited": "by the user"}')
        info["refused"] = not case["overwrite"]
    return info


def run(base: Path, case: dict, plugin: Path, cache: Path) -> subprocess.CompletedProcess:
    reports = base / "reports"
    cmd = [sys.executable, "-m", "pytest", CLAIMS, "-q", "-p", "no:cacheprovider", "-p",
           "lac_hostile", "--lac-model", "tiny-llama", "--lac-grid", str(_grid()),
           "--lac-reports", str(reports), "--lac-expected-dir", str(reports / "expected")]
    cmd += ["--lac-reports-overwrite"] * case["overwrite"] + \
        ["--lac-update-baselines"] * case["update"] + ["--lac-no-cache"] * (case["run"] == "raises")
    env = {**os.environ, "PYTHONPATH": str(plugin), "LAC_CACHE_DIR": str(cache),
           "LAC_HOSTILE_RUN": case["run"], "LAC_HOSTILE_AT": str(case["at"])}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)


def allowed(rel: str, before: dict, info: dict, case: dict, names: list[str]) -> bool:
    """Whether lac may change, replace or remove `rel` (a path of the report folder before the
    run): its lock; its manifest; a file it listed there that is still as it wrote it; a staging
    folder it made; with --lac-reports-overwrite, a regular file at a name this run writes; with
    --lac-update-baselines, the expectations file and the expectations folder's lock."""
    rel = rel.removeprefix("reports/")
    top = rel.split("/")[0]
    lacs = info["lacs"]
    return rel == reportset.LOCK or (rel == reportset.MANIFEST and bool(lacs)) or \
        (rel in lacs and before.get(f"reports/{rel}") == ("file", lacs[rel])) or \
        top in info["sweepable"] or \
        (case["overwrite"] and rel in names and before[f"reports/{rel}"][0] == "file") or \
        (case["update"] and rel in (_expectations(), f"expected/{reportset.LOCK}"))


def _expectations() -> str:
    return f"expected/{expected.file_for('tiny-llama', Path('.')).name}"


def new_allowed(rel: str, case: dict, names: list[str], where: str | None) -> bool:
    """Whether lac may create `rel` (a path not there before): the files of its set and their
    folders (in the report folder, or in the subfolder it moved the set to), its lock and
    manifest, and the expectations file when updating."""
    rel = rel.removeprefix("reports/")
    if where and where != "." and (rel == where or rel.startswith(where + "/")):
        rel = rel[len(where) + 1:] or reportset.MANIFEST
    dirs = {str(p) for n in names for p in Path(n).parents if str(p) != "."}
    return rel in (reportset.LOCK, reportset.MANIFEST, *names, *dirs) or \
        (case["update"] and rel in (_expectations(), f"expected/{reportset.LOCK}"))


CASES = st.fixed_dictionaries({
    "run": st.sampled_from(["complete", "SIGINT", "SIGTERM", "raises"]),
    "at": st.integers(0, 1),  # the signal comes before the first lac test, or after it
    "obstacle": st.sampled_from(OBSTACLES[:1] * 6 + OBSTACLES[1:]),  # most runs go ahead
    "output": st.sampled_from(["results.json", "REPORT.md", "SUMMARY.md",
                               "figures/kl_by_layer_tiny-llama_tiny.png"]),
    "previous": st.sampled_from([None, "intact", "stale one edited"]),
    "leftover": st.booleans(),
    "near": st.sets(st.sampled_from(NEAR), max_size=4),
    "look_alikes": st.sets(st.sampled_from(LOOK_ALIKES), max_size=5),
    "links": st.sets(st.sampled_from(LINKS), max_size=3),
    "overwrite": st.booleans(),
    "update": st.booleans(),
})


def _case(**kw) -> dict:
    return {"run": "complete", "at": 0, "obstacle": None, "output": "results.json",
            "previous": None, "leftover": False, "near": set(), "look_alikes": set(),
            "links": set(), "overwrite": False, "update": False, **kw}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A resume cache filled once (so each example reuses the sweep's results), lac's names for
    the tiny grid, and the plugin that sends signals or makes the sweep raise."""
    top = tmp_path_factory.mktemp("hostile")
    plugin = top / "plugin"
    plugin.mkdir()
    (plugin / "lac_hostile.py").write_text(PLUGIN)
    base = top / "warm"
    (base / "reports" / "expected").mkdir(parents=True)
    out = run(base, _case(), plugin, top / "cache")
    assert out.returncode in (0, 1), (out.stdout + out.stderr)[-3000:]
    return {"top": top, "plugin": plugin, "cache": top / "cache", "names": _names()}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # a failing case is shown as found, unshrunk
          suppress_health_check=list(HealthCheck))
@given(case=CASES)
@example(case=_case(look_alikes=set(LOOK_ALIKES), leftover=True, previous="intact"))
@example(case=_case(run="SIGTERM", previous="intact", near={"results.json.bak"}))
@example(case=_case(run="SIGINT", at=1, links=set(LINKS), update=True))
@example(case=_case(run="raises", obstacle="user file at an output name", overwrite=True))
def test_a_hostile_folder_keeps_what_is_not_lacs_and_gets_an_honest_set(lab, case):
    base = Path(tempfile.mkdtemp(dir=lab["top"], prefix="case-"))
    names = lab["names"]
    info = build(base, names, case)
    before = snapshot(base)
    try:
        out = run(base, case, lab["plugin"], lab["cache"])
    finally:
        if info["hold"] is not None:
            info["hold"].release()
    text = out.stdout + out.stderr
    after = snapshot(base)
    assert "INTERNALERROR" not in text and "Traceback" not in text, text[-3000:]
    written = re.search(r"^lac: report set written to (.+)$", text, re.M)
    where = None
    if written:
        where = str(Path(written[1]).relative_to(base / "reports"))
    # nothing outside the report folder changed (base/outside, the links into the folder)
    outside = {k: v for k, v in before.items() if not k.startswith("reports/")}
    assert {k: v for k, v in after.items() if not k.startswith("reports/")} == outside
    # no path lac did not write changed or vanished; nothing new but lac's own
    for rel, was in before.items():
        if rel.startswith("reports/") and after.get(rel) != was:
            assert allowed(rel, before, info, case, names), \
                (rel, was, after.get(rel), case, text[-2000:])
    for rel in set(after) - set(before):
        assert new_allowed(rel, case, names, where), (rel, case, text[-2000:])
    assert not [p for p in after if Path(p).name.startswith(reportset.STAGING) and
                p not in before], "lac left staging behind"
    if info["refused"]:  # the folder is in the way: exit 4, nothing written
        assert out.returncode == 4 and written is None, text[-3000:]
        locks = {f"reports/{reportset.LOCK}", f"reports/expected/{reportset.LOCK}"}
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(k in locks or k.split("/")[1] in info["sweepable"] for k in changed), \
            (changed, text[-2000:])  # only lac's locks, and the staging a killed run left
        return
    code = {"complete": (0, 1), "SIGINT": (2,), "SIGTERM": (2,), "raises": (1,)}[case["run"]]
    if case["update"] and case["run"].startswith("SIG"):
        code = (1, 2)  # rewritten expectations make lac's outcome failed (review them): exit 1
    assert out.returncode in code and written, text[-3000:]
    published = base / "reports" / where
    data = json.loads((published / "results.json").read_text())
    listed = reportset.manifest(published)  # this run's files are listed as it wrote them
    assert {"results.json", "REPORT.md"} <= set(listed)
    for name in set(listed) & set(names):  # (an earlier set's file a user edited stays listed
        if (published / name).exists():  # with lac's digest: that is how lac knows it not its own)
            digest = hashlib.sha256((published / name).read_bytes()).hexdigest()
            assert digest == listed[name], name
    status = data["run"]["status"]
    assert f"Run status: {status}" in (published / "REPORT.md").read_text()
    if case["run"] == "complete":
        assert status == "COMPLETE" and not data["run"]["not_run"] and not data["run"]["failed"]
    elif case["run"] == "raises":
        assert status == "PARTIAL" and "the sweep raised" in str(data["run"]["failed"])
        assert data["run"]["not_run"], data["run"]
    else:  # interrupted: PARTIAL, naming what was interrupted (the claim, or the tests after it)
        assert status == "PARTIAL", (case, data["run"])
        assert {n["why"] for n in data["run"]["not_run"]} <= {"interrupted"}, data["run"]
        assert data["run"]["not_run"] or data["run"].get("tests_interrupted"), data["run"]
        assert "interrupted" in (published / "REPORT.md").read_text()
