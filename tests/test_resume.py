"""The resume cache: a run killed after its first experiment, rerun, gives the results of an
uninterrupted run; a damaged or foreign entry is recomputed and replaced; --lac-no-cache ignores
it."""
import dataclasses
from collections.abc import Mapping
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from lac_core.protocol import experiments, steering
from lac_core.engine.forward import Engine
from lac_core.protocol.grids import resolve_grid
from lac_core.verdicts.metrics import Summary
from lac_core.verdicts.results import SweepResult, jsonable
from lac_core.run.resume import FORMAT, ResultCache, digest_of
from lac_core.run.settings import ROOT

ARGS = ["-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model", "tiny-llama",
        "--lac-grid", "example", "-k", "c1_additive or c4_no"]  # two experiments: sweep, then host


def _cmd(tmp_path, name, *extra):
    return [sys.executable, *ARGS, "--lac-reports", str(tmp_path / name), *extra]


def _env(tmp_path):
    return {**os.environ, "LAC_CACHE_DIR": str(tmp_path / "cache"),  # tiny models need no weights
            "PYTHONUNBUFFERED": "1"}


def _results(tmp_path, name) -> dict:
    doc = json.loads((tmp_path / name / "results.json").read_text())
    doc.pop("run")
    return doc


def test_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    full = subprocess.run(_cmd(tmp_path, "full", "--lac-no-cache"), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stdout[-3000:]
    assert not (tmp_path / "cache" / "results").exists()  # --lac-no-cache writes nothing either
    proc = subprocess.Popen(_cmd(tmp_path, "killed"), cwd=ROOT, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:  # kill it as soon as its first experiment is done
        seen.append(line)
        if "example sweep: done" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert list((tmp_path / "cache" / "results").glob("*.npz"))  # kept before "done" was said
    assert not list((tmp_path / "cache" / "results").glob("*.pkl"))  # no pickles any more
    again = subprocess.run(_cmd(tmp_path, "again"), cwd=ROOT, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "example / sweep: from the resume cache" in again.stdout
    assert _results(tmp_path, "again") == _results(tmp_path, "full")
    run = json.loads((tmp_path / "again" / "results.json").read_text())["run"]
    assert "tiny-llama / example / sweep" in run["from_resume_cache"]
    assert "came from the resume cache" in (tmp_path / "again" / "REPORT.md").read_text()


def test_damaged_or_foreign_entries_are_recomputed(tmp_path):
    cache, name = ResultCache(tmp_path), ("m", "g", "sweep")
    key = {"model": "m", "grid": "abc"}
    cache.put(name, key, {"numbers": [1, 2]}, "run1")
    assert cache.get(name, key) == {"numbers": [1, 2]} and cache.used[name] == "run1"
    assert cache.get(name, {**key, "grid": "other"}) is None  # another key: another file
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:10])  # truncated
    assert cache.get(name, key) is None and "not used" in cache.notes[-1]
    cache.put(name, {"model": "x"}, {"numbers": [0]}, "r")
    shutil.copyfile(cache.path({"model": "x"}), path)  # a whole entry, of another key
    assert cache.get(name, key) is None and "another key" in cache.notes[-1]
    cache.put(name, key, {"numbers": [3]}, "run2")  # replaced
    assert cache.get(name, key) == {"numbers": [3]}
    assert ResultCache(None).get(name, key) is None  # --lac-no-cache
    assert ResultCache(tmp_path).get(("m", "g", "residuals"), key) is None  # never cached


# --- entries are data: nothing planted under an entry's name runs, or is trusted ---------------

NAME, KEY = ("m", "g", "sweep"), {"model": "m", "grid": "abc"}


class _Planted:
    """What an attacker would plant: unpickling it calls `call(*args)`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _note_pattern(path):
    return rf"m / g / sweep: resume entry {re.escape(path.name)} not used \(.+\); recomputed"


def _not_used(cache, got, note=""):
    """get gave None and a note naming the entry, and why."""
    assert got is None and NAME not in cache.used
    assert re.fullmatch(_note_pattern(cache.path(KEY)), cache.notes[-1], re.S), cache.notes
    assert note in cache.notes[-1], cache.notes[-1]


def _replaced(cache, tmp_path):
    """put writes a data-only entry in place of the bad one (readable without pickle); no
    temporary file stays in the folder."""
    path = cache.path(KEY)
    cache.put(NAME, KEY, {"numbers": (4, 5)}, "fresh")
    assert path.is_file()
    with np.load(path, allow_pickle=False) as npz:  # data only: an npz, no pickled member
        assert "meta" in npz.files
    assert ResultCache(tmp_path).get(NAME, KEY) == {"numbers": (4, 5)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def _write_npz(path, **members):
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, **members)
    path.chmod(0o600)  # as lac writes entries: what is tested is the content, not the mode


def _plant_entry(path, meta: dict, **arrays):
    """An entry of this FORMAT with `meta` and `arrays`, its digest right: what anyone who can
    write the cache can make, so the checks beyond the digest must stand on their own."""
    members = {"meta": np.array(json.dumps({"format": FORMAT, **meta})), **arrays}
    _write_npz(path, **members, digest=np.array(digest_of(members)))


@pytest.mark.parametrize("how", ["open", "system"])
def test_planted_pickle_is_never_run(tmp_path, how):
    marker = tmp_path.parent / f"{tmp_path.name}-ran-{how}"
    planted = _Planted(open, str(marker), "w") if how == "open" else \
        _Planted(os.system, f"touch '{marker}'")
    cache = ResultCache(tmp_path)
    canonical = json.loads(json.dumps(KEY, sort_keys=True))
    cache.path(KEY).write_bytes(pickle.dumps({"key": canonical, "run_id": "r", "result": planted}))
    cache.path(KEY).chmod(0o600)
    got = cache.get(NAME, KEY)
    assert not marker.exists(), "the planted pickle ran"
    _not_used(cache, got)
    _replaced(cache, tmp_path)


def test_planted_object_array_is_never_loaded(tmp_path):
    """A well-formed entry whose array member is an object array (a pickle inside the zip)."""
    marker = tmp_path.parent / f"{tmp_path.name}-ran-npz"
    cache = ResultCache(tmp_path)
    meta = {"format": FORMAT, "key": KEY, "run_id": "r", "result": {"$array": "a0"}}
    _write_npz(cache.path(KEY), meta=np.array(json.dumps(meta)), digest=np.array("0" * 64),
               a0=np.array([_Planted(open, str(marker), "w")], dtype=object))
    got = cache.get(NAME, KEY)
    assert not marker.exists(), "the planted object array was unpickled"
    _not_used(cache, got, "allow_pickle=False")
    _replaced(cache, tmp_path)


def _other_class(path):
    _plant_entry(path, {"key": KEY, "run_id": "r",
                        "result": {"$record": ["Popen", {"args": ["touch", "x"]}]}})


def _other_key(path):
    other = ResultCache(path.parent)
    other.put(NAME, {"model": "other"}, [1.5], "r")
    os.replace(other.path({"model": "other"}), path)


def _other_format(path):
    _write_npz(path, meta=np.array(json.dumps({"key": KEY, "run_id": "r", "result": 1})))


def _older_format(path):
    """A whole entry as lac-resume/1 wrote them (no digest): not used, whatever it holds."""
    with np.load(path, allow_pickle=False) as npz:
        members = {m: npz[m] for m in npz.files if m != "digest"}
    meta = json.loads(str(members["meta"][()]))
    members["meta"] = np.array(json.dumps({**meta, "format": "lac-resume/1"}))
    _write_npz(path, **members)


def _no_digest(path):
    with np.load(path, allow_pickle=False) as npz:
        members = {m: npz[m] for m in npz.files if m != "digest"}
    _write_npz(path, **members)


def _array_member_as_digest(path):
    _plant_entry(path, {"key": KEY, "run_id": "r", "result": {"$array": "digest"}})


def _bare_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.arange(3))


DAMAGE = {  # how an entry is damaged -> what its note says
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), ""),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), ""),
    "a class outside the allow-list": (_other_class, "'Popen' is not a result record"),
    "another key": (_other_key, "the entry holds another key"),
    "another format": (_other_format, f"not a {FORMAT} entry"),
    "an older format": (_older_format, f"not a {FORMAT} entry"),
    "no digest": (_no_digest, "digest does not match"),
    "the digest read as an array": (_array_member_as_digest, "unknown tag $array"),
    "a bare .npy": (_bare_npy, "not an npz archive"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_unusable_entries_are_noted_and_replaced(tmp_path, damage):
    cache = ResultCache(tmp_path)
    cache.put(NAME, KEY, {"numbers": (1, 2)}, "run1")
    do, note = DAMAGE[damage]
    do(cache.path(KEY))
    _not_used(cache, cache.get(NAME, KEY), note)
    _replaced(cache, tmp_path)


def test_a_directory_at_an_entry_name_is_not_read_nor_deleted(tmp_path):
    """Not lac's file: never read as an entry, never removed; the result is just not kept."""
    cache = ResultCache(tmp_path)
    path = cache.path(KEY)
    path.mkdir()
    (path / "theirs").write_text("x")
    _not_used(cache, cache.get(NAME, KEY), "not a regular file")
    cache.put(NAME, KEY, {"numbers": (4, 5)}, "fresh")
    assert (path / "theirs").read_text() == "x" and "is a directory lac did not write" in cache.notes[-1] \
        and "result not kept" in cache.notes[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_cache_that_cannot_be_written_costs_no_result(tmp_path):
    """A file where the cache folder should be: the result is not kept, and that is all."""
    (tmp_path / "results").write_text("not a folder")
    cache = ResultCache(tmp_path / "results")
    cache.put(NAME, KEY, {"numbers": (1, 2)}, "run1")
    assert "result not kept in the resume cache" in cache.notes[-1]
    assert cache.get(NAME, KEY) is None and (tmp_path / "results").read_text() == "not a folder"


def test_unsupported_values_are_refused_and_nothing_stays(tmp_path):
    """Better no entry than one that would come back different (or need pickle to come back)."""
    cache = ResultCache(tmp_path)
    for bad in ({1, 2}, np.array([object()]), Summary.of([1.0, 2.0]), b"bytes", np.float64):
        with pytest.raises(TypeError):
            cache.put(NAME, KEY, {"fine": 1, "bad": bad}, "r")
        assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    cache = ResultCache(tmp_path)
    cache.put(NAME, KEY, [1], "run1")

    def fail(f, **members):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    cache.put(NAME, KEY, [2], "run2")  # not kept, said, and nothing else
    assert "disk full" in cache.notes[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(KEY).name]
    assert cache.get(NAME, KEY) == [1]  # the old entry is whole


# --- the round trip is exact -----------------------------------------------------------------


def _assert_same(a, b, where="result"):
    """Same types all the way down, same dict order, same arrays (dtype, shape, values), NaN
    equal to NaN."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        np.testing.assert_equal(a, b, err_msg=where)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            assert np.array_equal(np.signbit(a), np.signbit(b)), where  # -0.0 stays -0.0
    elif dataclasses.is_dataclass(a):
        assert set(vars(b)) == {f.name for f in dataclasses.fields(b)}, f"{where}: extra state"
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, Mapping):  # dicts, and the summaries' read-only tables
        assert list(a) == list(b), f"{where}: keys or their order"
        for (ka, va), kb in zip(a.items(), b):
            _assert_same(ka, kb, f"{where} key {ka!r}")
            _assert_same(va, b[kb], f"{where}[{ka!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                     math.copysign(1, b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _round_trip(tmp_path, result, kind="sweep"):
    cache, name = ResultCache(tmp_path), ("m", "g", kind)
    cache.put(name, KEY, result, "run1")
    with np.load(cache.path(KEY), allow_pickle=False) as npz:  # data only, every member
        assert all(npz[m].dtype.kind in "biufU" for m in npz.files)
    back = ResultCache(tmp_path).get(name, KEY)
    assert back is not None and back is not result
    _assert_same(result, back)
    assert json.dumps(jsonable(dataclasses.asdict(back))) == \
        json.dumps(jsonable(dataclasses.asdict(result)))  # what results.json is made of
    return back


def test_real_records_round_trip_exactly(tmp_path, lac_models):
    lm, grid = lac_models("tiny-llama"), resolve_grid("example")
    sweep = experiments.sweep(Engine(lm), grid)
    markers = experiments.markers(Engine(lm), grid)
    host = experiments.host_injection(Engine(lm), grid)
    steer = steering.steering(Engine(lm), grid, markers)
    for record in (sweep, markers, host):
        assert record.summary is not None  # a cached property: in __dict__, never in the entry
    sweep.__dict__["_resampled"] = {"cache": object()}  # as uncertainty.py keeps its caches
    for kind, record in (("sweep", sweep), ("markers", markers), ("host", host),
                         ("steering", steer)):
        back = _round_trip(tmp_path / kind, record, kind)
        assert "summary" not in vars(back) and "_resampled" not in vars(back)
        if kind != "steering":
            _assert_same(record.summary, back.summary)  # derived again, the same


def test_edge_values_round_trip_exactly(tmp_path):
    f32 = np.array([[1.5, np.nan], [-np.inf, -0.0]], dtype=np.float32)
    record = SweepResult(
        model="m", grid="g", n_layers=2, layers=(0, 1), probes=(), cells=("a", "b"),
        kl_add=np.asfortranarray(np.arange(6.0).reshape(2, 3)), kl_null=np.zeros((2, 0, 1)),
        geometry={"s": f32, "i": np.arange(4, dtype=np.int16), "b": np.array([True, False]),
                  "u": np.array(["x", "yz"]), "0d": np.array(2.5)},
        references={"$tuple": [1], "nested": {"t": ((1, 2), [3, (4,)]), "e": [], "n": None}},
        checks={3: "int key", (1, "a"): "tuple key", None: 0, 2.5: True, "z": 1, "a": 2},
        cost={"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "neg0": -0.0, "big": 2**80,
              "f64": np.float64(0.1), "i64": np.int64(-3), "b": np.bool_(True), "one": 1.0})
    _round_trip(tmp_path, record)


# --- entries lac did not write: another owner, writable by others, damaged (issue 34, 1) -------


def _sweep(scale=1.0) -> SweepResult:
    """A small sweep record: what a cached C1 decides on (kl_add) is one of its arrays."""
    kl_add = np.arange(1.0, 7.0).reshape(3, 1, 2) * scale
    return SweepResult(model="m", grid="g", n_layers=2, layers=(0, 1), probes=("p",),
                       cells=("a", "b", "c"), kl_add=kl_add, kl_null=np.full((3, 1, 2), 9.0),
                       geometry={}, references={})


def _scale_kl_add(path, factor):
    """What issue 34 did by hand: the entry's kl_add member times `factor`, saved back with
    np.savez, every other member as it was (the file keeps its owner and mode)."""
    with np.load(path, allow_pickle=False) as npz:
        members = {m: npz[m] for m in npz.files}
    meta = json.loads(str(members["meta"][()]))
    member = meta["result"]["$record"][1]["kl_add"]["$array"]
    members[member] = members[member] * factor
    np.savez(path, **members)


def _forged(cache, how):
    """An entry of KEY whose kl_add is 100 times smaller than the one computed: edited in place
    with np.savez, or written whole by lac's own writer (as anyone could), digest included."""
    cache.put(NAME, KEY, _sweep(), "run1")
    if how == "np.savez":
        _scale_kl_add(cache.path(KEY), 0.01)
    else:
        cache.put(NAME, KEY, _sweep(0.01), "forged")
    return cache.path(KEY)


def _other_user(monkeypatch, path):
    """The entry's owner is no longer the user running lac (chown, without being root)."""
    owner = os.stat(path).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)


FOREIGN = {  # how an entry comes to be one lac may not trust -> what its note says
    "chmod 666": (lambda mp, p: p.chmod(0o666), "writable by group or others (mode 666)"),
    "chmod 620": (lambda mp, p: p.chmod(0o620), "writable by group or others (mode 620)"),
    "another owner": (_other_user, "not owned by you"),
}


@pytest.mark.parametrize("how", ["np.savez", "lac's writer"])
@pytest.mark.parametrize("foreign", FOREIGN)
def test_an_entry_others_could_have_written_is_recomputed(tmp_path, monkeypatch, how, foreign):
    path = _forged(ResultCache(tmp_path), how)
    if how == "lac's writer":  # a whole entry: the owner and mode rule alone keeps it out
        control = ResultCache(tmp_path).get(NAME, KEY)
        assert control is not None and control.kl_add.max() == pytest.approx(0.06)
    make, note = FOREIGN[foreign]
    make(monkeypatch, path)
    cache = ResultCache(tmp_path)
    _not_used(cache, cache.get(NAME, KEY), note)
    monkeypatch.undo()  # the user running lac again: the entry is replaced, theirs again
    _replaced(cache, tmp_path)
    assert os.stat(path).st_mode & 0o077 == 0


def test_an_edited_entry_is_found_by_its_digest(tmp_path):
    """Owner and mode as lac left them, one array changed: the digest written with the entry
    no longer matches its content."""
    path = _forged(ResultCache(tmp_path), "np.savez")
    assert os.stat(path).st_uid == os.geteuid() and os.stat(path).st_mode & 0o777 == 0o600
    cache = ResultCache(tmp_path)
    _not_used(cache, cache.get(NAME, KEY), "digest")
    _replaced(cache, tmp_path)


def test_a_link_at_an_entry_name_is_not_followed(tmp_path):
    """A symbolic link to a whole entry of the same key elsewhere is not read."""
    elsewhere = ResultCache(tmp_path / "elsewhere")
    elsewhere.put(NAME, KEY, _sweep(0.01), "planted")
    cache = ResultCache(tmp_path / "results")
    (tmp_path / "results").mkdir()
    cache.path(KEY).symlink_to(elsewhere.path(KEY))
    _not_used(cache, cache.get(NAME, KEY), "symbolic link")


def test_both_caches_apply_one_owner_rule(tmp_path, monkeypatch):
    """The load cache's rule, applied to resume entries: the same refusal, word for word."""
    from lac_core.models import loadcache

    cache = ResultCache(tmp_path / "results")
    cache.put(NAME, KEY, _sweep(), "run1")
    entry = tmp_path / "loaded" / "entry"
    entry.mkdir(parents=True)
    entry.chmod(0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(entry).st_uid + 1)
    why = loadcache.problem(entry, {})
    assert why.startswith("the entry is not owned by you")
    _not_used(cache, cache.get(NAME, KEY), why)


def test_an_edited_entry_is_recomputed_in_a_run(tmp_path):
    """Issue 34's scenario end to end: C1's sweep kept, its kl_add scaled by 0.01 and saved back
    with np.savez; the next run says so and recomputes it, to the numbers of the first run."""
    cmd = [sys.executable, "-m", "pytest", "claims/test_c1_additive_sufficiency.py", "-q", "-p",
           "no:cacheprovider", "--lac-model", "tiny-llama", "--lac-grid", "example",
           "-k", "not cell"]
    first = subprocess.run([*cmd, "--lac-reports", str(tmp_path / "first")], cwd=ROOT,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:]
    entries = list((tmp_path / "cache" / "results").glob("*.npz"))
    assert len(entries) == 1
    _scale_kl_add(entries[0], 0.01)
    again = subprocess.run([*cmd, "--lac-reports", str(tmp_path / "again")], cwd=ROOT,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "from the resume cache" not in again.stdout
    line = next(x for x in again.stdout.splitlines() if "resume entry" in x)
    assert "tiny-llama / example / sweep" in line and "digest" in line and "recomputed" in line
    run = json.loads((tmp_path / "again" / "results.json").read_text())["run"]
    assert run["from_resume_cache"] == {}
    assert [n for n in run["resume_cache_not_used"] if "digest" in n]
    assert "Resume cache entries not used (recomputed):" in \
        (tmp_path / "again" / "REPORT.md").read_text()
    assert _results(tmp_path, "again") == _results(tmp_path, "first")


def test_the_swept_layers_leave_the_markers_result_and_its_expectations_alone(tmp_path):
    """Issue 35 item 7: --lac-layers recomputed the markers experiment (which never reads the
    swept layers) and listed its grid without expectations. Now the markers result comes from
    the resume cache and the shipped markers expectations are found."""
    args = ["-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model", "tiny-llama",
            "--lac-grid", "example", "-k", "c3"]
    first = subprocess.run([sys.executable, *args, "--lac-reports", str(tmp_path / "a")], cwd=ROOT,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0 and "example / markers: from" not in first.stdout, first.stdout[-2000:]
    again = subprocess.run([sys.executable, *args, "--lac-reports", str(tmp_path / "b"),
                            "--lac-layers", "2,6"], cwd=ROOT, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "example / markers: from the resume cache" in again.stdout
    assert "no expectations" not in again.stdout
    run = json.loads((tmp_path / "b" / "results.json").read_text())["run"]
    assert "tiny-llama / example / markers" in run["from_resume_cache"]
