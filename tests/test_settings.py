"""Options and environment: every bad value is one clear error at start (exit 4, nothing run),
never a silent default, and the expectations a run is held to match its setup."""
import os
import subprocess
import sys

import pytest

from lac_core.errors import UsageError
from lac_core.protocol.prompts import layer_fractions_to_layers, swept_layers
from lac_core.run.session import Session, new_run_id
from lac_core.run.settings import ROOT, Settings, env_cache_dir, env_offline, parse_layers, parse_probes, parse_threads


def _start(tmp_path, *args, env=None, collect=True):
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-reports", str(tmp_path / "reports"),
           *(["--collect-only"] if collect else []), *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    (["--lac-layers", "0"], "0 is out of range"),  # case 10: the embedding output
    (["--lac-layers", "1.5"], "1.5 is out of range"),
    (["--lac-layers", "0.5,0.5"], "0.5 is given twice"),
    (["--lac-layers", "4,4"], "4 is given twice"),
    (["--lac-layers", "0.5,0.52"], "0.5 and 0.52 are both layer 4"),  # tiny: 8 layers
    (["--lac-layers", "9"], "9 is layer 9, out of range for a model with 8 layers"),
    (["--lac-threads", "-1"], "--lac-threads '-1': give a positive number"),  # case 17
    (["--lac-threads", "0"], "--lac-threads '0': give a positive number"),
    (["--lac-probes", "p_last,p_last"], "p_last is given twice"),
    (["--lac-model", ""], "--lac-model '' is empty"),
    (["--lac-chat-template", ""], "--lac-chat-template '' is empty"),
])
def test_bad_options_stop_the_run_at_start(tmp_path, args, message):
    code, text = _start(tmp_path, *args)
    assert code == 4 and message in text and "INTERNALERROR" not in text, text[-1500:]


def test_layer_rules_are_the_same_for_indices_and_fractions():
    assert swept_layers(8, (1, 7)) == (1, 7) and swept_layers(8, (0.25, 0.5)) == (2, 4)
    for bad in ((0,), (8,), (0.05,), (0.95,)):  # fractions that land on 0 or n are refused too
        with pytest.raises(UsageError, match="out of range"):
            swept_layers(8, bad)
    assert layer_fractions_to_layers(4) == (1, 2, 3)  # the default collapsing stays silent
    assert swept_layers(4) == (1, 2, 3)
    for text in ("-1", "1.0", "0.0", "nan", "1,,2"):
        with pytest.raises(UsageError):
            parse_layers(text)
    assert parse_probes("p_last,g1") == ("p_last", "g1") and parse_threads("2") == 2


@pytest.mark.parametrize("value, offline", [("1", True), ("on", True), ("Yes", True), ("0", False),
                                            ("off", False), ("", False)])
def test_lac_offline_values(monkeypatch, value, offline):
    monkeypatch.setenv("LAC_OFFLINE", value)
    assert env_offline() is offline


def test_an_unknown_lac_offline_value_is_an_error(tmp_path):
    code, text = _start(tmp_path, env={"LAC_OFFLINE": "sure"})
    assert code == 4 and "LAC_OFFLINE='sure'" in text


def test_lac_cache_dir_expands_the_home_folder(monkeypatch):
    monkeypatch.setenv("LAC_CACHE_DIR", "~/lac-cache-x")
    assert str(env_cache_dir()) == os.path.expanduser("~/lac-cache-x") and "~" not in str(env_cache_dir())


@pytest.mark.parametrize("case", ["missing", "a file"])
def test_an_unusable_expectations_folder_is_an_error_at_start(tmp_path, case):
    where = tmp_path / "expected"
    if case == "a file":
        where.write_text("x")
    code, text = _start(tmp_path, "--lac-expected-dir", str(where))
    assert code == 4 and ("does not exist" if case == "missing" else "is not a folder") in text
    if case == "missing":  # recording into a new folder is fine
        code, _ = _start(tmp_path, "--lac-expected-dir", str(where), "--lac-update-baselines")
        assert code == 0


def test_the_setup_key_names_what_was_set_away_from_its_default():
    """Case 11: a run with its own layers, probes, attention or plan is compared only with
    baselines of that setup; the default setups keep their names."""
    base = dict(models=("tiny-llama",), grids=("example",))
    assert Session.start(Settings(**base)).book.setup("tiny-llama") == "float32 model"
    s = Session.start(Settings(**base, layers=(2, 4), probes=("p_last", "g1"), attention="eager",
                               plan="naive"))
    assert s.book.setup("tiny-llama") == "float32 model layers=2,4 probes=p_last,g1 attention=eager plan=naive"


def test_bfloat16_expectations_are_kept_per_kernel_family(tmp_path):
    """A bfloat16 run is never held to baselines recorded with other kernels (its numbers move
    10-300% between CPUs), and the run says which families have a section."""
    from lac_core.models.placement import kernels
    from lac_core.verdicts import expected
    from lac_core.verdicts.rules import Verdict

    s = Session.start(Settings(models=("tiny-llama",), grids=("example",), dtype="bfloat16",
                               expected_dir=tmp_path))
    here = kernels("cpu", "bfloat16")
    assert s.book.setup("tiny-llama") == f"bfloat16 model kernels={here}"
    grid = s.grids["example"].key
    section = {"verdicts": {"C1": "FAILS"}, "baselines": {"C1/g1/median": {"value": 9.0, "tolerance": 0.1}}}
    expected.save(expected.Expectations("tiny-llama", {"bfloat16 model kernels=cpu:OTHER": {grid: section}}), tmp_path)
    s = Session.start(Settings(models=("tiny-llama",), grids=("example",), dtype="bfloat16",
                               expected_dir=tmp_path))
    assert s.record_verdict("C1", "tiny-llama", "example", Verdict("C1", "x", "HOLDS", None, ())) is None
    assert s.unexpected() == [f"tiny-llama / bfloat16 model kernels={here} / {grid} (recorded only for "
                              "cpu:OTHER: bfloat16 and float16 numbers depend on the kernels, so record "
                              "this machine's with --lac-update-baselines)"]


def test_a_run_with_its_own_layers_is_not_held_to_default_baselines(tmp_path):
    code, text = _start(tmp_path, "--lac-layers", "2,4", "--lac-no-cache", "-k",
                        "c1_additive_sufficiency and not cell", collect=False)
    assert "C1 verdict changed on" not in text and "numeric drift beyond tolerance" not in text
    assert "no expectations for tiny-llama / float32 model layers=2,4 / example@" in text


def test_run_ids_are_unique_within_one_second():
    """Case 12: ids name report subfolders and where a cached result came from."""
    ids = {new_run_id(1_700_000_000.0) for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("20231114T221320Z-") for i in ids)


def test_a_setting_keys_only_the_experiments_that_read_it():
    """Issue 35 item 7: --lac-layers changed the markers grid's keys though only the sweep reads
    the swept layers (markers recomputed, its expectations not found). Each experiment's resume
    key and expectations setup hold only the settings it reads."""
    base = dict(models=("tiny-llama",), grids=("example",))
    plain = Session.start(Settings(**base))
    own = Session.start(Settings(**base, layers=(2, 6), probes=("p_last",), plan="naive",
                                 swap_pairs="all"))
    for kind in ("residuals", "target", "markers", "host"):
        assert own.result_key("tiny-llama", "example", kind, {}) == \
            plain.result_key("tiny-llama", "example", kind, {}), kind
    for kind in ("sweep", "steering"):
        assert own.result_key("tiny-llama", "example", kind, {}) != \
            plain.result_key("tiny-llama", "example", kind, {}), kind
    assert own.book.setup("tiny-llama", "markers") == own.book.setup("tiny-llama", "host") == \
        plain.book.setup("tiny-llama", "sweep") == "float32 model"
    assert own.book.setup("tiny-llama", "sweep") == "float32 model layers=2,6 probes=p_last plan=naive"
    eager = Session.start(Settings(**base, attention="eager"))  # every experiment reads it
    assert eager.book.setup("tiny-llama", "markers") == "float32 model attention=eager"
    from lac_core.verdicts import expected  # a default run still finds every shipped entry
    shipped = expected.load("tiny-llama", Settings().expected_dir)
    exp, setup, key = plain.book.key("tiny-llama", "example")
    assert setup == "float32 model" and exp.section(setup, key) == shipped.section(setup, key)


@pytest.mark.parametrize("cores, workers, load, threads", [
    (2, None, 0.0, 2), (2, None, 0.4, 2), (2, None, 1.0, 1), (2, None, 2.6, 1), (2, None, 9.4, 1),
    (2, 2, 0.0, 1), (32, None, 4.2, 28), (32, 4, 0.0, 8), (32, 4, 30.0, 2), (1, None, 0.0, 1),
    (8, None, -1.0, 8)])
def test_auto_threads_take_only_the_cores_others_leave_free(cores, workers, load, threads):
    """Issue 35.2: on a shared 2-core machine torch's default (every core) made the short grid 8x
    slower than --lac-threads 1 (402.8 s against 51.6 s); --lac-threads auto takes the free
    cores (not the default: the count would change float32 numbers with the load)."""
    from lac_core.run.settings import Settings, default_threads, parse_threads

    assert default_threads(cores, workers, load) == threads
    assert parse_threads("auto") == parse_threads(" AUTO ") == "auto"
    assert Settings(threads="auto").threads == "auto"  # checked when made: accepted
    with pytest.raises(UsageError, match="positive number of threads or auto"):
        Settings(threads="some")
