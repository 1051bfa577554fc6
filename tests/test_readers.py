"""Every file lac reads goes through one reader (lac_core/readfile.py): a regular file only, a size
cap per kind, UTF-8, numbers finite and within a float. What the reader refuses is one lac error
naming the file (exit 4 in a run; compare: exit 2 and one line), never another exception or a
hang. First the cases of issue 36 item 8 one by one, then, per kind of file, hypothesis
generating contents and file types through lac's own entry points, each example under a timer."""
import contextlib
import copy
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lac_core.errors import LacError
from lac_core.paths import CLAIMS_FILE, GRID_DIR, ROOT
from tests.test_compare import results_doc
from tests.test_expected import GOOD

MiB = 1 << 20


class Hang(BaseException):
    """No answer within the timer: a BaseException, so no `except Exception` swallows it."""


@contextlib.contextmanager
def timer(seconds: float):
    def fire(_signum, _frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- lac's entry point for each kind of file, as a run (or compare) reaches it ---------------

def _grid(path):
    from lac_core.protocol.grids import load_grid

    load_grid(path)


def _template(path):
    from lac_core.protocol.templates import choose

    choose(str(path), False)


def _thresholds(path):
    from lac_core.verdicts.thresholds import load_thresholds

    load_thresholds(path)


def _expectations(path):
    from lac_core.verdicts import expected

    expected.read_for_update("tiny-llama", path.parent)  # checks it whole (load) first


def _manifest(path):
    from lac_core.report.reportset import manifest

    manifest(path.parent)


class Refused(LacError):
    """compare's one line on stderr (exit 2), carried as the other kinds' errors are."""


def _results(path):
    from lac_core.compare_runs import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(path), str(path)])
    assert code in (0, 2), (code, out.getvalue(), err.getvalue())
    if code == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1, err.getvalue()
        raise Refused(lines[0])


def _merged(path):
    """lac merge's reader of a shard: exit 2 and one line naming it, or a merge (0 or 1)."""
    from lac_core.merge import main

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main([str(path), "--lac-reports", str(Path(d) / "out")])
    assert code in (0, 1, 2), (code, out.getvalue(), err.getvalue())
    if code == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1, err.getvalue()
        raise Refused(lines[0])


def _yaml(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


def _json(doc) -> str:
    return json.dumps(doc)


KINDS = {  # kind -> (file name, entry point, a good document, how it is written)
    "grid": ("g.yaml", _grid, yaml.safe_load((GRID_DIR / "example.yaml").read_text()), _yaml),
    "chat template": ("t.jinja", _template, None, None),  # text: see _template_text
    "thresholds": ("claims.yaml", _thresholds, yaml.safe_load(CLAIMS_FILE.read_text()), _yaml),
    "expectations": ("tiny-llama.yaml", _expectations, GOOD, _yaml),
    "manifest": (".lac-manifest.json", _manifest,
                 {"format": 2, "files": {"REPORT.md": "0" * 64, "figures/a.png": None}}, _json),
    "results.json": ("results.json", _results, results_doc(), _json),
    "results.json (lac merge)": ("results.json", lambda path: _merged(path), results_doc(), _json),
}


def refusal(kind: str, path: Path, seconds: float = 10) -> str | None:
    """None when lac's reader of `kind` accepted the file, else the message of the one lac error
    it raised; anything else (another exception, no answer in time) fails the test."""
    with timer(seconds):
        try:
            KINDS[kind][1](path)
        except LacError as exc:
            return str(exc)
    return None


# --- issue 36 item 8, one by one ---------------------------------------------------------------

def _claims_with(old: str, new: str) -> str:
    text = CLAIMS_FILE.read_text()
    assert old in text
    return text.replace(old, new, 1)


def _first_value() -> str:
    return next(line.split("value:")[1].split(",")[0].strip()
                for line in CLAIMS_FILE.read_text().splitlines() if "value:" in line)


CASES = {  # name -> (kind, how the file is made, what the message says besides the file)
    "a baseline value of 401 digits": (
        "expectations", lambda p: p.write_text(_yaml(GOOD).replace("1.45", "1" + "0" * 400)),
        "float"),
    "a baseline value of 5000 digits": (
        "expectations", lambda p: p.write_text(_yaml(GOOD).replace("1.45", "9" * 5000)), "YAML"),
    "a thresholds file with a YAML syntax error": (
        "thresholds", lambda p: p.write_text(CLAIMS_FILE.read_text() + "\nC9: {value: [\n"), "YAML"),
    "a thresholds file that is not UTF-8": (
        "thresholds", lambda p: p.write_bytes(CLAIMS_FILE.read_bytes() + b"\n# caf\xe9\n"),
        "UTF-8"),
    "a thresholds file with a huge integer": (
        "thresholds", lambda p: p.write_text(_claims_with(f"value: {_first_value()}",
                                                          "value: 1" + "0" * 400)), "float"),
    "an expectations file linked to /dev/zero": (
        "expectations", lambda p: p.symlink_to("/dev/zero"), "character device"),
    "an expectations file that is a FIFO": ("expectations", lambda p: os.mkfifo(p), "FIFO"),
    "a 6 GB sparse chat template": (
        "chat template", lambda p: os.truncate(p.touch() or p, 6 << 30), "1 MiB"),
    "a grid linked to /dev/zero": ("grid", lambda p: p.symlink_to("/dev/zero"), "device"),
    "a manifest of 2 MiB": ("manifest", lambda p: p.write_text(" " * (2 * MiB)), "1 MiB"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_case_is_one_error_naming_the_file_and_the_limit(tmp_path, case):
    kind, make, says = CASES[case]
    path = tmp_path / KINDS[kind][0]
    make(path)
    message = refusal(kind, path)
    assert message is not None and str(path) in message and says in message, message
    assert len(message) < 600, message


@pytest.mark.parametrize("call, option", [
    (lambda name: _grid_by_name(name + ".yaml"), "--lac-grid"),
    (lambda name: _template(Path(name)), "--lac-chat-template"),
    (lambda name: _model(name), "--lac-model"),
])
def test_a_name_over_255_characters_is_one_usage_error(call, option):
    with pytest.raises(LacError) as err, timer(10):
        call("n" * 300)
    assert option in str(err.value) and "255" in str(err.value), str(err.value)


def _grid_by_name(name):
    from lac_core.protocol.grids import resolve_grid

    resolve_grid(name)


def _model(name):
    from lac_core.models.registry import resolve

    resolve(name, offline=True)


def test_a_fifo_expectations_file_stops_the_run_at_start_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "tiny-llama.yaml")
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--lac-model",
           "tiny-llama", "--lac-grid", "example", "--lac-expected-dir", str(tmp_path),
           "--lac-reports", str(tmp_path / "reports"), "-k", "c1_additive_sufficiency"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on a FIFO expectations file")
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "lac:" in line]
    assert out.returncode == 4 and "INTERNALERROR" not in out.stdout + out.stderr
    assert len(lines) == 1 and str(tmp_path / "tiny-llama.yaml") in lines[0] and "FIFO" in lines[0]


# --- generated: contents and file types, per kind --------------------------------------------

HUGE = "@@HUGE@@"  # a placeholder string, written out as a number of `digits` digits
TYPES = ("regular", "regular", "regular", "not UTF-8", "FIFO", "link to /dev/zero",
         "link to a FIFO", "directory", "dangling link", "sparse, over every cap")
NUMBER = st.integers(-10**6, 10**6) | st.floats() | st.just(HUGE)
LEAF = NUMBER | st.text(max_size=12) | st.booleans() | st.none()
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _places(node, out):
    """(container, key) of every node below `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, child in items:
        out.append((node, key))
        _places(child, out)
    return out


@st.composite
def documents(draw, kind: str) -> bytes:
    """A good document of the kind with up to three nodes replaced or removed (or only numbers
    replaced), or any text or bytes; huge numbers spelled out in digits."""
    shape = draw(st.sampled_from(("edited", "edited", "edited", "text", "bytes")))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "chat template":
        from lac_core.protocol.templates import BUILTIN

        good = BUILTIN["chatml"]
        if shape == "text":
            return draw(st.text(max_size=300)).encode()
        at = draw(st.integers(0, len(good)))
        return (good[:at] + draw(st.text(max_size=40) | st.just(HUGE)) + good[at:]).encode()
    if shape == "text":
        return draw(st.text(max_size=300)).encode()
    doc = copy.deepcopy(KINDS[kind][2])
    numbers_only = draw(st.booleans())  # a number where the kind holds one: the range checks
    for _ in range(draw(st.integers(0 if numbers_only else 1, 3))):
        places = [(c, k) for c, k in _places(doc, []) if not numbers_only or (
            isinstance(c[k], int | float) and not isinstance(c[k], bool))]
        if not places:
            break
        container, key = draw(st.sampled_from(places))
        if numbers_only:
            container[key] = draw(NUMBER)
        elif draw(st.booleans()):
            container[key] = draw(VALUE)
        elif isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    text = KINDS[kind][3](doc)
    digits = "9" * draw(st.sampled_from((20, 309, 401, 5000)))
    for quoted in (f"'{HUGE}'", f'"{HUGE}"', HUGE):
        text = text.replace(quoted, digits)
    return text.encode()


def _make(path: Path, ftype: str, data: bytes) -> None:
    if ftype in ("regular", "not UTF-8"):
        path.write_bytes(data + (b"\n# \xff\xfe\x80\n" if ftype == "not UTF-8" else b""))
    elif ftype == "FIFO":
        os.mkfifo(path)
    elif ftype == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif ftype == "link to a FIFO":
        os.mkfifo(path.with_name("fifo"))
        path.symlink_to(path.with_name("fifo"))
    elif ftype == "directory":
        path.mkdir()
    elif ftype == "dangling link":
        path.symlink_to(path.with_name("nowhere"))
    else:
        path.touch()
        os.truncate(path, 300 * MiB)  # sparse: beyond the largest cap (results.json, 256 MiB)


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Imports the chat-template check renders with, so no example pays them against its timer."""
    from transformers.utils import chat_template_utils  # noqa: F401


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_kind_of_file_is_read_or_refused_naming_it(kind, data):
    """100 examples per kind (600 in all), each under a 10 s timer."""
    contents = data.draw(documents(kind), label="contents")
    ftype = data.draw(st.sampled_from(TYPES), label="file type")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / KINDS[kind][0]
        _make(path, ftype, contents)
        message = refusal(kind, path)
    event(f"{ftype}: {'accepted' if message is None else 'refused'}")
    if message is not None:
        assert str(path) in message, message
        assert ftype != "sparse, over every cap" or " MiB" in message, message  # names the cap
    elif ftype != "regular":
        pytest.fail(f"a {kind} that is {ftype} was accepted")


# --- the two kinds read outside the reader: a resume entry and a hub's answer ------------------

@st.composite
def entries(draw) -> bytes:
    """A resume entry's bytes: random bytes, or an npz archive whose members are generated (meta
    JSON that is lac's shape with values drawn, arrays of any dtype, a digest or none)."""
    import numpy as np

    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    members = {}
    if draw(st.booleans()):
        meta = {"format": draw(st.sampled_from(["lac-resume/2", "lac-resume/1", "x", 7])),
                "key": draw(st.sampled_from([{"k": 1}, {}, None])), "run_id": "r",
                "result": draw(st.recursive(st.none() | st.integers() | st.text(max_size=8),
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                                st.text(max_size=6), c, max_size=3), max_leaves=8))}
        members["meta"] = np.array(json.dumps(meta))
    for i in range(draw(st.integers(0, 3))):
        members[draw(st.sampled_from([f"a{i}", "digest", "meta2"]))] = np.arange(
            draw(st.integers(0, 5))).astype(draw(st.sampled_from(["int8", "float32", "U3"])))
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=entries(), ftype=st.sampled_from(TYPES))
def test_a_resume_entry_of_any_content_or_type_is_used_or_noted_never_raised(contents, ftype):
    """80 examples, each under a 10 s timer: the resume cache takes an entry it wrote, and notes
    and recomputes anything else (never raises, never hangs, never reads a FIFO or device)."""
    from lac_core.run.resume import ResultCache

    name, key = ("m", "g", "sweep"), {"k": 1}
    with tempfile.TemporaryDirectory() as d:
        cache = ResultCache(Path(d))
        path = cache.path(key)
        _make(path, ftype, contents)
        with timer(10):
            got = cache.get(name, key)
    assert got is None  # nothing generated here is an entry lac wrote: all are noted, none used
    assert ftype == "regular" and not contents or cache.notes, "an entry not used, and no note"


@settings(max_examples=200, deadline=None)
@given(sha=st.one_of(st.text(max_size=45), st.sampled_from(["0" * 40, "a" * 40, "A" * 40, None])),
       names=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
           ["config.json", "a/b.json", "../x", "a/../../x", "/etc/x", "a//b", "a\\b", ".", "",
            "additional_chat_templates/../../x.jinja", "x" * 300])), max_size=5))
def test_a_hub_answer_is_taken_only_when_no_path_can_leave_the_repository(sha, names):
    """200 generated commits and listings: check_answer accepts a 40-hex commit and names that
    stay inside the repository once joined to it, and refuses the rest with one error naming it."""
    from lac_core.errors import MissingWeightsError
    from lac_core.models.hub import check_answer

    try:
        check_answer("owner/name", None, sha, names)
    except MissingWeightsError as exc:
        assert "--lac-model owner/name" in str(exc)
        return
    assert isinstance(sha, str) and len(sha) == 40 and all(c in "0123456789abcdef" for c in sha)
    root = Path("/repo")
    for n in names:
        joined = Path(os.path.normpath(root / n))
        assert joined != root and root in joined.parents and ".." not in n.split("/"), n
