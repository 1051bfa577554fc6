"""A report set is a function of results.json alone: `python -m lac_core.report RESULTS.json
--lac-reports OUT` (a fresh process: no session, no registered claim beyond lac's) writes the
same bytes for the text files and the SVGs and the same pixels for the PNGs as the run did; an
older or foreign results.json is refused by name (exit 2), generated damage included."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lac_core.report import document
from lac_core.report.rebuild import main as rebuild_main
from lac_core.report.reportset import Folder
from lac_core.run.settings import ROOT

from .test_report import source, synthetic_session


def rebuild(results, out):
    return subprocess.run([sys.executable, "-m", "lac_core.report", str(results), "--lac-reports",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_same_set(a, b):
    """Every file of set `a` is in `b`: text and SVG byte for byte, PNG pixel for pixel."""
    from matplotlib.image import imread

    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()
                   and p.name != ".lac-manifest.json" and ".lac-lock" not in p.name)
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()
                                     and p.name != ".lac-manifest.json"
                                     and ".lac-lock" not in p.name)
    for name in files:
        if name.suffix == ".png":
            np.testing.assert_array_equal(imread(a / name), imread(b / name), err_msg=str(name))
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return files


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two models on two grids (every experiment, COMPARE.md and its figures), written as a run
    writes its set."""
    tmp = tmp_path_factory.mktemp("rebuild")
    s = synthetic_session()
    document.write_report_set(source(s), Folder(tmp / "run"))
    return tmp


def test_the_set_is_rebuilt_from_results_json_alone_to_the_same_bytes(written):
    out = rebuild(written / "run" / "results.json", written / "again")
    assert out.returncode == 0, out.stderr[-3000:]
    files = assert_same_set(written / "run", written / "again")
    assert {"REPORT.md", "SUMMARY.md", "COMPARE.md", "results.json"} <= {str(f) for f in files}
    assert any(f.suffix == ".svg" for f in files) and any(f.suffix == ".png" for f in files)


def test_an_older_or_foreign_results_json_is_refused_by_name(written, tmp_path):
    doc = json.loads((written / "run" / "results.json").read_text())
    old = {**doc, "schema": "lac-results/2 (see docs/SCHEMA.md)"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = rebuild(tmp_path / "old.json", tmp_path / "out")
    assert out.returncode == 2 and "old.json" in out.stderr and "lac-results/2" in out.stderr
    assert "rerun lac" in out.stderr and not (tmp_path / "out").exists()
    (tmp_path / "list.json").write_text("[1, 2]")
    out = rebuild(tmp_path / "list.json", tmp_path / "out")
    assert out.returncode == 2 and "list.json" in out.stderr and "Traceback" not in out.stderr


def _paths(doc, prefix=()):
    """Every key path of a JSON document (into dicts and the first item of lists)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list) and doc:
        yield (*prefix, 0)
        yield from _paths(doc[0], (*prefix, 0))


class Doc(tuple):
    """(results.json's dict, its key paths), shown short in hypothesis' reports."""

    def __repr__(self):
        return "Doc(results.json)"


@pytest.fixture(scope="module")
def doc_and_paths(tmp_path_factory):
    """One model on the example grid (every experiment, three figures): what damage is done to."""
    tmp = tmp_path_factory.mktemp("damage")
    document.write_report_set(source(synthetic_session(models=("tiny-llama",),
                                                       grids=("example",))), Folder(tmp))
    doc = json.loads((tmp / "results.json").read_text())
    return Doc((doc, [p for p in _paths(doc) if len(p) <= 4]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_damage_is_refused_by_name_or_rendered_never_a_traceback(
        data, doc_and_paths, tmp_path, capsys):
    """A key removed or a value replaced anywhere in results.json: `lac report` exits 2 with one
    line naming the file, or renders a set (exit 0); it never raises."""
    doc, paths = doc_and_paths
    damaged = copy.deepcopy(doc)
    path = data.draw(st.sampled_from(paths))
    *parent, last = path
    holder = damaged
    for k in parent:
        holder = holder[k]
    if data.draw(st.booleans()) and isinstance(holder, dict):
        del holder[last]
    else:
        holder[last] = data.draw(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                                           st.lists(st.integers(), max_size=2),
                                           st.dictionaries(st.text(max_size=2), st.integers(),
                                                           max_size=2)))
    where = tmp_path / f"damaged-{abs(hash(path)) % 10**8}"
    where.mkdir(exist_ok=True)
    (where / "results.json").write_text(json.dumps(damaged))
    code = rebuild_main([str(where / "results.json"), "--lac-reports", str(where / "out"),
                         "--lac-reports-overwrite"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and str(where / "results.json") in err, err


def test_a_users_severity_that_raises_leaves_its_cells_listed_and_the_set_written(monkeypatch):
    """A user's cell check whose severity function raises: results.json lists its failing cells
    unranked with the error, and the report set is rendered (it used to stop the whole set)."""
    from lac_core.verdicts import claims as registry

    def broken(result, cell, t):
        raise ZeroDivisionError("no spread")

    monkeypatch.setitem(registry.CELL_CHECKS, "mine", registry.CellCheck(
        "mine", "sweep", lambda result, cell, t: [], broken))
    s = synthetic_session(models=("tiny-llama",), grids=("example",))
    s.record_cell("mine", "tiny-llama", "example", "pirate__bread", ["too far"])
    src = source(s)
    (entry,) = [f for f in src.doc["cell_failures"] if f["check"] == "mine"]
    assert entry["worst"] == [["pirate__bread", None]]
    assert entry["severity_error"] == "ZeroDivisionError: no spread"
    text = document.report_markdown(src, {})
    assert "| mine | tiny-llama / example | 1/9 | pirate__bread (?) (severity: " \
           "ZeroDivisionError: no spread) |" in text


def hostile_folder(tmp_path, make: str):
    """(elsewhere, out): `out` made a link to `elsewhere`, a file, or a folder holding a
    REPORT.md lac did not write ("not_lacs")."""
    other, out = tmp_path / "elsewhere", tmp_path / "out"
    other.mkdir()
    if make == "link":
        out.symlink_to(other, target_is_directory=True)
    elif make == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "REPORT.md").write_text("a report of my own")
    return other, out


@pytest.mark.parametrize("make", ["link", "file", "not_lacs"])
def test_lac_report_into_a_hostile_folder_is_refused_before_writing(written, tmp_path, capsys,
                                                                   make):
    """The folder `lac report` writes into is checked as pytest's --lac-reports is: a link, a
    file, or a folder holding a REPORT.md lac did not write is refused (exit 2), nothing
    written through it or over it."""
    other, out = hostile_folder(tmp_path, make)
    code = rebuild_main([str(written / "run" / "results.json"), "--lac-reports", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and len(err.strip().splitlines()) == 1, err
    assert list(other.iterdir()) == []
    if make == "file":
        assert out.read_text() == "mine"
    if make == "not_lacs":
        assert (out / "REPORT.md").read_text() == "a report of my own"
