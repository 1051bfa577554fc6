"""Expectation files: checked whole at start (one clear error, before any work), written without
ever following a link, and two runs updating one file never lose each other's sections."""
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lac_core.verdicts import expected
from lac_core.errors import FixtureError
from lac_core.run.settings import EXPECTED, ROOT

GOOD = {"model": "tiny-llama", "setups": {"float32 model": {"example@5dcefe664d04": {
    "verdicts": {"C1": "FAILS"}, "notes": {}, "cell_findings": {"additive_vs_null": ["a__b"]},
    "baselines": {"C1/g1/median": {"value": 1.45, "tolerance": 0.145}}}}}}


def _write(tmp_path, body, name="tiny-llama.yaml"):
    (tmp_path / name).write_text(body if isinstance(body, str) else yaml.safe_dump(body))


def _edit(change):
    body = yaml.safe_load(yaml.safe_dump(GOOD))
    change(body)
    return body


SEC = "float32 model", "example@5dcefe664d04"
BAD = {  # how a file is damaged -> what the error says
    "yaml syntax": ("setups: {float32 model: [", "cannot be read as expectations"),
    "a list": ("- model: tiny-llama\n", "top level"),
    "verdicts a list": (_edit(lambda b: b["setups"][SEC[0]][SEC[1]].update(verdicts=["C1"])),
                        "verdicts: a mapping"),
    "baseline without value": (_edit(lambda b: b["setups"][SEC[0]][SEC[1]]["baselines"].update(
        {"C1/g1/median": {"tolerance": 0.1}})), "baselines.C1/g1/median"),
    "tolerance as text": (_edit(lambda b: b["setups"][SEC[0]][SEC[1]]["baselines"].update(
        {"C1/g1/median": {"value": 1.0, "tolerance": "0.1"}})), "baselines.C1/g1/median"),
    "another model's": (_edit(lambda b: b.update(model="tiny-qwen2")), "a copy of another model"),
    "duplicate key": ("model: tiny-llama\nmodel: tiny-llama\nsetups: {}\n", "duplicate key"),
}


@pytest.mark.parametrize("damage", BAD)
def test_a_damaged_expectations_file_is_one_clear_error(tmp_path, damage):
    body, message = BAD[damage]
    _write(tmp_path, body)
    with pytest.raises(FixtureError, match=message):
        expected.load("tiny-llama", tmp_path)


def test_a_damaged_expectations_file_stops_the_run_at_start(tmp_path):
    _write(tmp_path, BAD["baseline without value"][0])
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-expected-dir", str(tmp_path),
           "--lac-reports", str(tmp_path / "reports"), "-k", "c1_additive_sufficiency"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 4 and "baselines.C1/g1/median" in out.stdout + out.stderr
    assert "passed" not in out.stdout and not (tmp_path / "reports").exists()


def test_every_shipped_expectations_file_is_whole():
    files = sorted(EXPECTED.glob("*.yaml"))
    assert files
    for path in files:
        model = yaml.safe_load(path.read_text())["model"]
        assert expected.load(model, EXPECTED) is not None, path


def test_saving_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "tiny-llama.yaml.tmp").symlink_to(victim)  # the old temporary name
    for name in os.listdir(tmp_path):
        assert name in ("victim.txt", "tiny-llama.yaml.tmp")
    exp = expected.Expectations("tiny-llama", GOOD["setups"])
    path = expected.save(exp, tmp_path)
    assert victim.read_text() == "keep" and not path.is_symlink()
    assert expected.load("tiny-llama", tmp_path).setups == GOOD["setups"]
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(FixtureError, match="is a symbolic link"):
        expected.save(exp, tmp_path)
    assert victim.read_text() == "keep"


def test_an_update_keeps_a_section_written_while_the_run_went_on(tmp_path):
    """Case G2: a run re-reads the file under the folder's lock before it writes, so a section
    another run recorded meanwhile (here bfloat16's) survives."""
    from lac_core.verdicts.rules import Verdict
    from lac_core.run.session import Session
    from lac_core.run.settings import Settings

    run = Session.start(Settings(models=("tiny-llama",), grids=("example",), expected_dir=tmp_path,
                                 update_baselines=True))
    # read at start: nothing yet in the user's folder, only lac's own file
    assert run.book.read["tiny-llama"] == (expected.load("tiny-llama", EXPECTED),)
    other = expected.Expectations("tiny-llama", {"bfloat16 model": GOOD["setups"]["float32 model"]})
    expected.save(other, tmp_path)  # meanwhile, another run records its own section
    run.ledger.verdicts[("C1", "tiny-llama", "example")] = (Verdict("C1", "x", "HOLDS", None, ()), None)
    run.update_expectations()
    assert set(expected.load("tiny-llama", tmp_path).setups) == {"bfloat16 model", "float32 model"}


def test_the_lock_excludes_a_second_holder(tmp_path):
    import fcntl

    with expected.locked(tmp_path):
        fd = os.open(tmp_path / expected.LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


# Issue 36 item 5: lac wrote expectations (ruamel.yaml, YAML 1.2) it then read as YAML 1.1, where
# `2e-06` and `5e-2` are text: the next run stopped at start and re-recording was refused too.
FINITE = st.floats(allow_nan=False, allow_infinity=False)


def _with_baseline(base: dict) -> dict:
    return {SEC[0]: {SEC[1]: {"verdicts": {"C1": "FAILS"}, "notes": {}, "cell_findings": {},
                              "baselines": {"C1/g1/median": base}}}}


@settings(max_examples=150, deadline=None)
@given(value=FINITE, tolerance=FINITE.map(abs))
@example(value=2e-06, tolerance=0.002).via("the issue's deciding number")
@example(value=round(2.4e-06, 6), tolerance=round(0.1 * 2.4e-06, 6)).via("as make_baselines rounds")
@example(value=1e16, tolerance=5e-324)
def test_any_finite_baseline_and_tolerance_reads_back_as_written(value, tolerance):
    """Written by save, read by load (the next run) and by read_for_update (re-recording), then
    written and read again: the same floats each time."""
    import math
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        expected.save(expected.Expectations("tiny-llama", _with_baseline(
            {"value": value, "tolerance": tolerance})), d)
        for _ in range(2):
            back = expected.load("tiny-llama", d).section(*SEC)["baselines"]["C1/g1/median"]
            assert back == {"value": value, "tolerance": tolerance}
            assert math.copysign(1, back["value"]) == math.copysign(1, value)  # -0.0 stays
            expected.save(expected.read_for_update("tiny-llama", d), d)


@pytest.mark.parametrize("written, number", [("5e-2", 0.05), ("2e-06", 2e-06), ("1E3", 1000.0)])
def test_a_hand_written_tolerance_in_exponent_form_is_a_number(tmp_path, written, number):
    text = yaml.safe_dump(GOOD).replace("tolerance: 0.145", f"tolerance: {written}")
    assert f"tolerance: {written}" in text
    _write(tmp_path, text)
    base = expected.load("tiny-llama", tmp_path).section(*SEC)["baselines"]["C1/g1/median"]
    assert base["tolerance"] == number and not isinstance(base["tolerance"], str)


def test_a_users_folder_overlays_the_shipped_expectations_claim_by_claim(tmp_path):
    """Issue 35 item 5: with --lac-expected-dir, lac's shipped expectations were dropped (a run of
    lac's claims beside a user's gave "11 failed"). The user's entry for a (model, setup, grid,
    claim) wins whole (verdict, baselines, its checks' cell findings); the shipped file fills
    the claims the user's lacks; recording writes only into the user's folder."""
    from lac_core.verdicts.rules import Verdict
    from lac_core.run.session import Session
    from lac_core.run.settings import Settings

    def start(**kw):
        return Session.start(Settings(models=("tiny-llama",), grids=("example",),
                                      expected_dir=tmp_path, **kw))

    run, shipped_file = start(), expected.file_for("tiny-llama", EXPECTED)
    grid, before = run.grids["example"].key, shipped_file.read_bytes()
    shipped = expected.load("tiny-llama", EXPECTED).section("float32 model", grid)
    assert shipped["verdicts"]["C1"] == "FAILS" and "pirate__bread" in \
        shipped["cell_findings"]["additive_vs_null"]
    _write(tmp_path, {"model": "tiny-llama", "setups": {"float32 model": {grid: {
        "verdicts": {"C1": "HOLDS"}, "baselines": {"C1/g1/median": {"value": 9.0,
                                                                     "tolerance": 0.1}}}}}})
    run = start()

    def verdict(claim, status="FAILS"):
        return run.record_verdict(claim, "tiny-llama", "example", Verdict(claim, "x", status, None, ()))

    assert verdict("C1") == "HOLDS"  # the user's entry
    assert verdict("C3") == shipped["verdicts"]["C3"] and verdict("C2") == "FAILS"  # shipped
    # the user's C1 entry lists no failing cells, so the shipped C1 findings do not apply
    assert run.record_cell("additive_vs_null", "tiny-llama", "example", "pirate__bread", []) is False
    exp, setup, key = run.book.key("tiny-llama", "example")
    base = exp.section(setup, key)["baselines"]
    assert base["C1/g1/median"] == {"value": 9.0, "tolerance": 0.1}
    assert not any(k.startswith("C1/") and k != "C1/g1/median" for k in base)
    assert {k: v for k, v in base.items() if k.startswith("C2/")} == \
        {k: v for k, v in shipped["baselines"].items() if k.startswith("C2/")} != {}
    assert run.unexpected() == []
    updating = start(update_baselines=True)  # records C3 into the user's folder only
    updating.ledger.verdicts[("C3", "tiny-llama", "example")] = (
        Verdict("C3", "x", "HOLDS", None, ()), None)
    updating.update_expectations()
    assert shipped_file.read_bytes() == before
    mine = expected.load("tiny-llama", tmp_path).section("float32 model", grid)["verdicts"]
    assert mine == {"C1": "HOLDS", "C3": "HOLDS"}
    assert start().record_verdict("C3", "tiny-llama", "example",
                                  Verdict("C3", "x", "FAILS", None, ())) == "HOLDS"


def test_lacs_failing_claims_stay_expected_beside_an_empty_user_folder(tmp_path):
    """Issue 35 item 5, end to end: C1 FAILS on tiny-llama and lac ships that as expected; a
    user's (empty) expectations folder must not turn it into a failure."""
    (tmp_path / "mine").mkdir()
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-expected-dir", str(tmp_path / "mine"),
           "--lac-reports", str(tmp_path / "reports"), "-k", "c1_additive_sufficiency and not cell"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LAC_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0 and "1 xfailed" in out.stdout, out.stdout[-2000:]
    assert "no expectations" not in out.stdout
