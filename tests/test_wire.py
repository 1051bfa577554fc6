"""An xdist worker's results reach the controller as data (run/datacodec.py: JSON and arrays in an
npz), never as a pickle: a real session's export comes back exactly, any value the codec allows
comes back exactly, and hostile bytes are refused whole with one line in the run's failures,
nothing executed (issue 38, item 4)."""
import ast
import copy
import io
import json
import math
import os
import pickle
import types
from dataclasses import fields, is_dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lac_core.paths import CORE
from lac_core.run.datacodec import MAX_DEPTH, WIRE_FORMAT, pack, unpack
from lac_core.run.session import Session
from lac_core.run.settings import Settings
from lac_core.suite.distributed import Controller
from lac_core.suite.start import SESSION
from lac_core.verdicts import rules
from lac_core.verdicts.kinds import Kind, Shared

from .test_reportset import _claims
from .test_rules import GOOD, T, sweep


def _typed(x):
    """A set element with its type spelled out (a Kind member equals its text)."""
    return (type(x).__name__, tuple(map(_typed, x)) if type(x) is tuple else x)


def differences(a, b, path="") -> list[str]:
    """Where `b` is not exactly `a`: type, dtype, shape, bytes of arrays, NaN and the sign of
    zero, dict order, record fields."""
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} became {type(b).__name__}"]
    if isinstance(a, (np.ndarray, np.generic)):
        a, b = np.asarray(a), np.asarray(b)
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return [] if same else [f"{path}: array {a.dtype}{a.shape} became {b.dtype}{b.shape}"]
    if type(a) is float:
        same = (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b))
        return [] if same else [f"{path}: {a!r} became {b!r}"]
    if isinstance(a, dict):
        if len(a) != len(b):
            return [f"{path}: {len(a)} keys became {len(b)}"]
        return [d for (ka, va), (kb, vb) in zip(a.items(), b.items())
                for d in differences(ka, kb, f"{path}.key") + differences(va, vb, f"{path}[{ka!r}]")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items became {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, set):
        same = sorted(map(_typed, a), key=repr) == sorted(map(_typed, b), key=repr)
        return [] if same else [f"{path}: set {a!r} became {b!r}"]
    if is_dataclass(a):
        return [d for f in fields(a)
                for d in differences(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")]
    return [] if a == b else [f"{path}: {a!r} became {b!r}"]


# At the end of a real run (serial, tiny-llama, every claim on the example grid): the part a worker
# would send, through the wire and back, compared with itself.
PROBE = """
import json
import pytest
from lac_core.run.datacodec import pack, unpack
from lac_core.suite.distributed import part_of
from lac_core.suite.start import started
from tests.test_wire import differences


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    part = part_of(started(session.config))
    data = pack(part)
    kinds = sorted({type(v).__name__ for field in part.values() if isinstance(field, dict)
                    for v in field.values()})
    with open("wire.json", "w") as f:
        json.dump({"differences": differences(part, unpack(data)), "bytes": len(data),
                   "fields": sorted(part), "value_types": kinds}, f)
"""


def test_a_real_sessions_part_comes_back_exactly(tmp_path, monkeypatch):
    out = _claims(tmp_path, inject=PROBE.replace('"wire.json"', repr(str(tmp_path / "wire.json"))),
                  k="")
    assert out.returncode in (0, 1), (out.stdout + out.stderr)[-3000:]
    seen = json.loads((tmp_path / "wire.json").read_text())
    assert seen["differences"] == [], seen["differences"][:20]
    types_ = set(seen["value_types"])  # the export held what the wire must carry
    assert {"SweepResult", "MarkerResult", "HostResult", "tuple", "set"} <= types_, types_
    assert {"fingerprint", "results", "verdicts", "claims"} <= set(seen["fields"]), seen


DTYPES = ["<f8", "<f4", "<f2", ">f8", "<i8", "<i4", "|i1", "<u2", "|b1", "<c16", "<U3", "|S2"]
HASHABLE = st.recursive(st.one_of(st.text(max_size=4), st.integers(), st.booleans(),
                                  st.sampled_from([*Kind, *Shared])),
                        lambda inner: st.tuples(inner, inner), max_leaves=4)
ARRAYS = st.sampled_from(DTYPES).flatmap(lambda d: hnp.arrays(
    np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)))
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6), ARRAYS,
    ARRAYS.filter(lambda a: a.shape == ()).map(lambda a: a[()]),  # numpy scalars
    st.sampled_from([*Kind, *Shared]))
KEYS = st.one_of(st.sampled_from(["$tuple", "$x", "a"]), st.text(max_size=4), HASHABLE)
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner), st.sets(HASHABLE, max_size=3),
    st.dictionaries(KEYS, inner, max_size=3)), max_leaves=16)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=5), VALUES, max_size=4))
def test_any_value_the_wire_allows_comes_back_exactly(export):
    assert differences(export, unpack(pack(export))) == []


# What a worker may not send, and the line the run then fails with.
class _Planted:
    """A pickle payload: unpickling it calls `call(*args)`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _npz(meta, **arrays) -> bytes:
    buf = io.BytesIO()
    text = meta if isinstance(meta, str) else json.dumps({"format": WIRE_FORMAT, "export": meta})
    np.savez(buf, meta=np.array(text), **arrays)  # an object array is pickled into the archive
    return buf.getvalue()


def _hostile(marker):
    return {
        "a pickle": (pickle.dumps({"results": _Planted(open, str(marker), "w")}),
                     "not an npz archive"),
        "a pickle that runs a command": (pickle.dumps(_Planted(os.system, f"touch '{marker}'")),
                                         "not an npz archive"),
        "text, not bytes": ("{}", "str, not bytes"),
        "an unknown tag": (_npz({"results": {"$code": "print(1)"}}), "unknown tag $code"),
        "an unknown record class": (_npz({"x": {"$record": ["Popen", {"args": ["touch", "x"]}]}}),
                                    "'Popen' is not a result record"),
        "an unknown vocabulary": (_npz({"x": {"$enum": ["Signals", "SIGKILL"]}}),
                                  "'Signals' is not a vocabulary lac sends"),
        "an object array": (_npz({"x": {"$array": "a0"}},
                                 a0=np.array([_Planted(open, str(marker), "w")], dtype=object)),
                            "allow_pickle=False"),
        "a list at the top": (_npz([1, 2]), "top level is not a dict of field names"),
        "tuple keys at the top": (_npz({"$dict": [[{"$tuple": [1]}, 2]]}),
                                  "top level is not a dict of field names"),
        "another format": (_npz(json.dumps({"format": "lac-wire/0", "export": {}})),
                           f"not {WIRE_FORMAT} data"),
        "deep nesting": (_npz({"x": json.loads("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))}),
                         f"nested deeper than {MAX_DEPTH} levels"),
        "nesting past Python's reader": (_npz(
            f'{{"format": "{WIRE_FORMAT}", "export": {{"x": {"[" * 100_000}{"]" * 100_000}}}}}'),
            f"nested deeper than {MAX_DEPTH} levels"),
        "a field missing": (pack({"claims": []}), ("it lacks ", "fingerprint")),
        "a field of another type": ("results_as_list", "its results is a list, not a dict"),
    }


def _controller(session) -> Controller:
    config = types.SimpleNamespace(stash=pytest.Stash())
    config.stash[SESSION] = session
    return Controller(config)


def _session(tmp_path) -> Session:
    (tmp_path / "expected").mkdir(exist_ok=True)
    return Session.start(Settings(models=("tiny-llama",), grids=("short",),
                                  report_dir=tmp_path / "reports",
                                  expected_dir=tmp_path / "expected"), args=["claims/"])


def test_a_workers_part_is_merged(tmp_path):
    """The wire as the controller takes it: a worker's verdict (Verdict, Parts) arrives whole."""
    from lac_core.suite.distributed import part_of

    worker, controller = _session(tmp_path), _session(tmp_path)
    verdict = rules.c1(sweep(GOOD), T.C1)
    worker.record_verdict("C1", "tiny-llama", "short", verdict)
    _controller(controller).take(pack(part_of(worker)))
    assert controller.tally.refused == []
    assert differences(worker.export()["verdicts"], controller.export()["verdicts"]) == []
    assert controller.export()["verdicts"]  # not two empty dicts


@pytest.mark.parametrize("case", list(_hostile("x")))
def test_hostile_data_is_refused_whole_and_never_run(tmp_path, case):
    marker = tmp_path.parent / f"{tmp_path.name}-ran"
    data, why = _hostile(marker)[case]
    lac = _session(tmp_path)
    if data == "results_as_list":  # a whole part of this lac's fields, one of the wrong type
        from lac_core.suite.distributed import part_of

        data = pack({**part_of(lac), "results": []})
    before = copy.deepcopy(lac.export())
    _controller(lac).take(data)
    assert not marker.exists(), "the worker's data ran code on the controller"
    (line,) = lac.tally.refused  # the run fails, saying why, once
    assert line.startswith("lac: the results an xdist worker sent are refused ("), line
    assert all(w in line for w in ((why,) if isinstance(why, str) else why)), line
    assert "nothing of them is merged" in line and "Traceback" not in line
    assert differences(before, lac.export()) == []  # nothing merged


FORBIDDEN = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
ALLOWED: dict = {}  # module -> why it may import one of FORBIDDEN: none needs to


def test_no_module_of_lac_imports_pickle():
    """Data from elsewhere (a worker, a resume entry, a report) is read as data: lac_core has
    no module that could unpickle it."""
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            rel = path.relative_to(CORE).as_posix()
            found += [f"{rel}: {n}" for n in names
                      if n.split(".")[0] in FORBIDDEN and rel not in ALLOWED]
    assert found == []
