"""lac's commands outside pytest and the small promises of its options: `python -m lac_core.list`
and `python -m lac_core.fetch --help` answer without a traceback, dtype spellings are made
canonical before any key is built, a mistyped grid name gets a suggestion, and the fast interval
summaries equal NumPy's NaN-aware ones bit for bit."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lac_core.errors import GridError
from lac_core.models import REGISTRY
from lac_core.paths import GRID_DIR, ROOT
from lac_core.protocol.grids import resolve_grid
from lac_core.run.settings import Settings, parse_dtype
from lac_core.verdicts.uncertainty import resampled_summaries


def _module(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_list_names_every_registered_model_and_shipped_grid():
    out = _module("lac_core.list")
    assert out.returncode == 0, out.stderr
    for name in [*REGISTRY, *(p.stem for p in GRID_DIR.glob("*.yaml"))]:
        assert f"  {name} " in out.stdout, name


def test_fetch_help_is_help_not_a_traceback():
    out = _module("lac_core.fetch", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m lac_core.fetch")
    # the names come from `lac list`: listing them here would import torch before --help answers
    assert "Traceback" not in out.stderr and "lac list" in " ".join(out.stdout.split())


@pytest.mark.parametrize("given_, canonical", [("bf16", "bfloat16"), ("BF16", "bfloat16"),
                                               ("fp16", "float16"), ("half", "float16"),
                                               ("fp32", "float32"), ("float32", "float32")])
def test_dtype_spellings_are_made_canonical_before_any_key(given_, canonical):
    assert parse_dtype(given_) == canonical
    options = {"--lac-dtype": given_}
    made = Settings.from_options(lambda flag: options.get(flag))
    assert made.dtype == canonical


def test_a_mistyped_grid_name_gets_a_suggestion():
    with pytest.raises(GridError, match=r"did you mean example\?"):
        resolve_grid("exampel")


def _reference(x):
    """The summaries as np.nanpercentile and friends give them, slice by slice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p25, med, p75 = np.nanpercentile(x, [25, 50, 75], axis=1)
        return (med, p25, p75, np.nanmin(x, axis=1), np.nanmax(x, axis=1),
                np.isfinite(x).sum(axis=1))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**31 - 1),
       st.floats(0, 0.6))
def test_fast_summaries_equal_nanpercentile_bit_for_bit(resamples, cells, layers, seed, holes):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=(resamples, cells, layers))
    x[rng.random(x.shape) < holes] = np.nan  # undefined angles, whole slices sometimes
    got = resampled_summaries(x)
    want = _reference(x)
    for i in np.ndindex(got.shape):
        s = got[i]
        values = (s.median, s.p25, s.p75, s.min, s.max, s.n)
        expect = tuple(w[i] for w in want)
        assert np.array_equal(np.array(values[:5]), np.array(expect[:5], dtype=float),
                              equal_nan=True) and values[5] == expect[5], (values, expect)


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["list", "--help"],
                                  ["fetch", "--help"], ["report", "--help"],
                                  ["merge", "--help"]])
def test_every_command_answers_help_without_importing_torch(argv):
    """`lac COMMAND --help` (python -m lac_core here: the console script calls the same main)
    answers before anything heavy loads (issue 35.8: fetch --help took 7 s importing torch)."""
    probe = ("import sys, runpy; sys.argv = ['lac', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('lac_core', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
             "print('HEAVY', heavy, 'CODE', code)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert "HEAVY [] CODE 0" in out.stdout, (out.stdout, out.stderr)
    assert out.stdout.startswith("usage: lac")


def test_an_unknown_command_is_one_line_and_exit_2():
    out = _module("lac_core", "comapre")
    assert out.returncode == 2 and "no command 'comapre'" in out.stderr


def _hostile_merge_args(tmp):
    """`lac merge` arguments a careless or hostile user passes, and what the error must name."""
    import os

    (tmp / "empty").mkdir()
    os.mkfifo(tmp / "fifo.json")
    (tmp / "expected-file").write_text("not a folder")
    (tmp / "shard").mkdir()
    (tmp / "shard" / "results.json").write_text("{}")
    return {
        "a shard that does not exist": ([str(tmp / "nowhere.json")], "nowhere.json"),
        "a folder without results.json": ([str(tmp / "empty")], "empty/results.json"),
        "a FIFO as a shard": ([str(tmp / "fifo.json")], "fifo.json"),
        "an empty name": ([""], "empty"),
        "an expectations folder that is a file": (
            [str(tmp / "shard"), "--lac-expected-dir", str(tmp / "expected-file")],
            "expected-file"),
        "a shard that is not lac's": ([str(tmp / "shard")], "shard/results.json"),
    }


MERGE_CASES = ["a shard that does not exist", "a folder without results.json",
               "a FIFO as a shard", "an empty name", "an expectations folder that is a file",
               "a shard that is not lac's"]


@pytest.mark.parametrize("case", MERGE_CASES)
def test_lac_merge_refuses_hostile_arguments_in_one_line(case, tmp_path, capsys):
    """Each is exit 2 and one line on stderr naming what is wrong, never a traceback or a hang;
    nothing is written."""
    from lac_core.merge import main

    args, says = _hostile_merge_args(tmp_path)[case]
    if "--lac-reports" not in args:
        args = [*args, "--lac-reports", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()

