"""Provenance that survives a copy (issue 38.2): lac's source hash is one value for a checkout, a
copy of it without .git and the wheel built from it (which installs claims/ inside lac_core/);
any byte changed in lac_core or a claim module changes it; results from a copy are merged, from
another source refused. The resume cache keys on the same hash."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from lac_core.errors import LacError
from lac_core.paths import ROOT
from lac_core.run import provenance

TREE = ("pyproject.toml", "README.md", "LICENSE", "lac_core", "claims", "fixtures")  # the build's
# What a process running lac from `where` (first on sys.path) says of its own source.
PROBE = """import json
import lac_core
from lac_core.paths import CLAIMS_FILE
from lac_core.run import provenance, resume
print(json.dumps({"file": lac_core.__file__, "resume": resume.code_sha256(),
                  "fingerprint": provenance.fingerprint(CLAIMS_FILE, {})}))"""


def probe(where):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=where, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(where)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["file"].startswith(str(where)), got["file"]  # that copy ran, not the checkout
    return got


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The checkout's fingerprint; a copy of its tree without .git; the wheel lac's build backend
    makes of the copy, unpacked as site-packages holds it. Built in tmp: no build/ in the tree."""
    tmp = tmp_path_factory.mktemp("layouts")
    copy, dist, site = tmp / "copy", tmp / "dist", tmp / "site"
    checkout = probe(ROOT)  # then the copy, at once: the copy is of this source
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=skip)
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(src, copy / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(dist), str(copy)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("pytest_lac-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert any(n.startswith("lac_core/claims/test_") for n in names)  # the layout that differs
    assert not (site / "claims").exists()
    return {"checkout": checkout, "copy": probe(copy), "wheel": probe(site),
            "copy_dir": copy, "site_dir": site}


def test_a_checkout_its_copy_and_its_wheel_have_one_source_hash(layouts):
    copy, wheel = layouts["copy"], layouts["wheel"]
    assert copy["resume"] == wheel["resume"]  # the resume key's code hash: one for both
    assert copy["fingerprint"]["git_commit"] is None and wheel["fingerprint"]["git_commit"] is None
    digest = layouts["checkout"]["fingerprint"]["source_sha256"]
    assert layouts["checkout"]["resume"] == digest
    assert len(digest) == 64
    assert copy["fingerprint"]["source_sha256"] == wheel["fingerprint"]["source_sha256"] == digest
    assert copy["resume"] == digest  # one hash: provenance and the resume cache
    files = provenance.source_files(layouts["site_dir"] / "lac_core")
    assert files.keys() == provenance.source_files(layouts["copy_dir"] / "lac_core").keys()
    assert "claims/test_c1_additive_sufficiency.py" in files and "lac_core/run/resume.py" in files
    assert not any("__pycache__" in n or n.startswith(("lac_core/claims/", "lac_core/fixtures/"))
                   for n in files)


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout,name", [
    ("copy_dir", "claims/test_c1_additive_sufficiency.py"),
    ("copy_dir", "lac_core/run/compute.py"),
    ("site_dir", "lac_core/claims/test_c2_partial_orthogonality.py"),
    ("site_dir", "lac_core/engine/forward.py"),
])
def test_one_byte_changed_in_a_claim_module_or_lac_core_changes_the_hash(layouts, tmp_path,
                                                                          layout, name):
    tree = tmp_path / "tree"
    for part in ("lac_core", "claims"):
        if (layouts[layout] / part).is_dir():
            shutil.copytree(layouts[layout] / part, tree / part)
    before = provenance.source_sha256(tree / "lac_core")
    assert before == layouts["checkout"]["fingerprint"]["source_sha256"]
    (tree / "lac_core" / "__pycache__").mkdir(exist_ok=True)
    (tree / "lac_core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")  # not source
    assert provenance.source_sha256(tree / "lac_core") == before
    _flip_one_byte(tree / name)
    assert provenance.source_sha256(tree / "lac_core") != before


def test_a_copy_without_git_is_merged_and_another_source_is_refused(layouts):
    here = layouts["checkout"]["fingerprint"]
    assert here["git_commit"] or not (ROOT / ".git").exists()  # a clone names its commit
    for there in (layouts["copy"]["fingerprint"], layouts["wheel"]["fingerprint"]):
        provenance.same_or_refuse(here, there, "a copy")  # git_commit None there: information
        provenance.same_or_refuse(there, here, "the checkout")
    other = {**layouts["copy"]["fingerprint"], "source_sha256": "0" * 64}
    with pytest.raises(LacError, match="source_sha256"):
        provenance.same_or_refuse(here, other, "a worker")
    with pytest.raises(LacError, match=r"\blac\b"):
        provenance.same_or_refuse(here, {**here, "lac": "0.0.1"}, "a worker")
