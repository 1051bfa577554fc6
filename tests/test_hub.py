"""Hub ids end to end: the real huggingface_hub client against a small local hub (HF_ENDPOINT),
in subprocesses so the hub library reads its endpoint, cache and offline switch at import."""
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from lac_core.paths import ROOT

SHA_MAIN, SHA_V1 = "a1" * 20, "b2" * 20
REVISIONS = {"main": SHA_MAIN, "v1": SHA_V1, SHA_MAIN: SHA_MAIN, SHA_V1: SHA_V1}
REPOS = ("owner/tiny", "owner/cached", "Qwen/Qwen2.5-1.5B-Instruct")
DENIED = {"owner/private": (401, None), "owner/gated": (403, "GatedRepo")}
WEIGHTS = "model.safetensors"
EXTRA = {"pytorch_model.bin": b"pickled weights lac must not fetch", "onnx/model.onnx": b"onnx"}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """The files of a tiny Llama as save_pretrained writes them (safetensors), plus files a load
    does not read (a .bin beside the safetensors, an ONNX export)."""
    from lac_core.models.tiny import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("repo")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer("llama").save_pretrained(folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
             if p.is_file()}
    return {**files, **EXTRA}


class Hub(BaseHTTPRequestHandler):
    """The endpoints huggingface_hub calls: revision info, the tree listing, resolve (HEAD, GET
    with Range). `server.seen` logs (method, path, Range header) of every request."""

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=(), head=False):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, doc):
        self._send(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])

    def _handle(self, head):
        server, path = self.server, self.path.split("?", 1)[0]
        server.seen.append((self.command, path, self.headers.get("Range")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo, rev = (api.group(1), api.group(3) or "main") if api else (
            (resolve.group(1), resolve.group(2)) if resolve else (None, None))
        rev = unquote(rev) if rev else rev
        if repo in DENIED:
            status, code = DENIED[repo]
            return self._send(status, b"{}", [("X-Error-Code", code)] if code else [], head)
        if repo not in REPOS:
            return self._send(404, b"{}", [("X-Error-Code", "RepoNotFound")], head)
        if rev not in server.revisions:
            return self._send(404, b"{}", [("X-Error-Code", "RevisionNotFound")], head)
        files, sha = server.files, server.revisions[rev]
        if api and api.group(2) != "tree":
            return self._json({"id": repo, "sha": sha, "siblings": [{"rfilename": f}
                                                                     for f in files]})
        if api:
            return self._json([{"type": "file", "path": f, "size": len(data), "oid": _git(data),
                                **({"lfs": {"oid": _sha(data), "size": len(data),
                                            "pointerSize": 130}} if _lfs(f) else {})}
                               for f, data in files.items()])
        name = resolve.group(3)
        if name not in files:
            return self._send(404, b"{}", [("X-Error-Code", "EntryNotFound")], head)
        self._file(name, files[name], sha, head)

    def _file(self, name, data, sha, head):
        headers = [("X-Repo-Commit", sha), ("ETag", f'"{_git(data)}"'), ("Accept-Ranges", "bytes")]
        if _lfs(name):
            headers += [("X-Linked-Etag", f'"{_sha(data)}"'), ("X-Linked-Size", str(len(data)))]
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
        if start:
            headers.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
        cut = self.server.cut.pop(name, None) if not head else None
        if cut is None:
            return self._send(206 if start else 200, data[start:], headers, head)
        self.send_response(200)  # the whole length promised, `cut` bytes sent, connection closed
        for key, value in headers + [("Content-Length", str(len(data)))]:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


def _git(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".onnx"))


@pytest.fixture
def hub(tiny_repo, tmp_path):
    """A local hub on a random port, and an environment that points the hub library at it with an
    empty cache of its own (the user's cache, token and offline switches are never read)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.files, server.seen, server.cut = dict(tiny_repo), [], {}
    server.revisions = dict(REVISIONS)  # revision -> the commit the hub answers
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    drop = ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LAC_OFFLINE", "HF_HUB_CACHE",
            "HF_HOME", "HF_ENDPOINT", "HF_TOKEN_PATH")
    server.env = {**{k: v for k, v in os.environ.items() if k not in drop},
                  "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
                  "HF_HUB_DISABLE_TELEMETRY": "1", "LAC_CACHE_DIR": str(tmp_path / "lac")}
    server.cache = tmp_path / "hf" / "hub"
    yield server
    server.shutdown()
    server.server_close()


CHECK = """
import json, sys
from lac_core.errors import LacError
from lac_core.run import preflight
from lac_core.run.settings import Settings
for name in sys.argv[1:]:
    try:
        spec = next(iter(preflight.check(Settings(models=(name,), grids=("example",))).models
                         .values()))
        print(json.dumps({"name": spec.name, "revision": spec.revision, "dir": spec.local_dir,
                          "layers": spec.n_layers}))
    except LacError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _python(hub, script, *args, env=()):
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**hub.env, **dict(env)})
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _gets(hub, name):
    return [s for s in hub.seen if s[0] == "GET" and s[1].endswith(f"/resolve/{SHA_MAIN}/{name}")
            or s[0] == "GET" and s[1].endswith(f"/resolve/main/{name}")]


def test_a_hub_id_downloads_what_a_load_reads_and_gives_the_tiny_models_logits(hub, tiny_repo):
    script = """
import json, sys, torch
from lac_core.models.load import load
from lac_core.models.tiny import tiny_model
lm = load(sys.argv[1])
ids = torch.tensor([[5, 17, 42, 99, 3]])
got, want = lm.model(ids).logits, tiny_model("llama")(ids).logits
print(json.dumps({"name": lm.spec.name, "equal": torch.equal(got, want),
                  "source": lm.provenance["source"], "dir": lm.spec.local_dir}))
"""
    [done] = _python(hub, script, "owner/tiny")
    assert done["name"] == f"owner--tiny@{SHA_MAIN[:12]}" and done["equal"], done
    assert f"commit {SHA_MAIN}" in done["source"]
    snapshot = Path(done["dir"])
    assert snapshot == hub.cache / "models--owner--tiny" / "snapshots" / SHA_MAIN
    fetched = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert WEIGHTS in fetched and "config.json" in fetched and "tokenizer.json" in fetched
    assert not fetched & set(EXTRA), fetched  # no .bin beside safetensors, no ONNX
    assert (snapshot / WEIGHTS).read_bytes() == tiny_repo[WEIGHTS]
    for name in fetched:  # each file fetched once
        assert len([s for s in hub.seen if s[0] == "GET" and s[1].endswith("/" + name)]) == 1


def test_a_pinned_revision_is_resolved_to_its_commit_before_any_work(hub):
    names = ["owner/tiny@v1", f"owner/tiny@{SHA_V1}", "qwen2.5-1.5b-instruct@v1", "owner/tiny"]
    pinned, by_sha, registered, main = _python(hub, CHECK, *names)
    assert pinned["name"] == by_sha["name"] == f"owner--tiny@{SHA_V1[:12]}", pinned
    assert pinned["revision"] == SHA_V1 and Path(pinned["dir"]).name == SHA_V1
    assert registered["name"] == f"qwen2.5-1.5b-instruct@{SHA_V1[:12]}", registered
    assert registered["layers"] == 8  # read from the snapshot, not the registry's 28
    assert main["name"] == f"owner--tiny@{SHA_MAIN[:12]}" and main["revision"] == SHA_MAIN
    assert (hub.cache / "models--owner--tiny" / "refs" / "v1").read_text() == SHA_V1


def test_the_hubs_refusals_each_give_one_clear_error(hub):
    names = ["owner/tiny@nope", "owner/missing", "owner/private", "owner/gated",
             "smollm2-135m-instruc", "Qwen/Qwen2.5-1.5B-Instruc"]
    revision, missing, private, gated, typo, hub_typo = _python(hub, CHECK, *names)
    assert revision["error"] == "UnknownModelError", revision
    assert "has no revision 'nope'" in revision["message"]
    assert missing["error"] == "UnknownModelError"
    assert "no model repo owner/missing on the hub" in missing["message"], missing
    for refused in (private, gated):
        assert refused["error"] == "HubAccessError", refused
        assert "`hf auth login`" in refused["message"] and "HF_TOKEN" in refused["message"]
    assert "owner/private" in private["message"] and "HTTP 401" in private["message"]
    assert "gated" in gated["message"] and f"{hub.url}/owner/gated" in gated["message"]
    assert "Did you mean smollm2-135m-instruct?" in typo["message"], typo
    assert "did you mean Qwen/Qwen2.5-1.5B-Instruct?" in hub_typo["message"], hub_typo
    assert not [s for s in hub.seen if "/resolve/" in s[1]]  # no file fetched for any of them


@pytest.mark.parametrize("switch", ["LAC_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_a_model_not_cached_is_refused_without_asking_the_hub(hub, switch):
    from huggingface_hub import snapshot_download

    snapshot_download("owner/cached", cache_dir=hub.cache, endpoint=hub.url, token=False,
                      allow_patterns=["*.json", "*.jinja", WEIGHTS])
    hub.seen.clear()
    refused, cached = _python(hub, CHECK, "owner/tiny", "owner/cached", env={switch: "1"})
    assert refused["error"] == "MissingWeightsError", refused
    assert "owner/tiny" in refused["message"] and "`hf download owner/tiny`" in refused["message"]
    assert f"{switch}=1" in refused["message"] and str(hub.cache) in refused["message"]
    assert cached["name"] == f"owner--cached@{SHA_MAIN[:12]}", cached  # offline, from the cache
    assert hub.seen == []


def test_an_interrupted_download_resumes_with_a_range_request(hub, tiny_repo):
    script = """
import sys
import huggingface_hub.constants
huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = 1 << 16  # written to disk in 64 KiB pieces
exec(sys.argv.pop(1))
"""
    cut = 3 * (1 << 16) + 1000
    assert len(tiny_repo[WEIGHTS]) > cut + (1 << 16)
    hub.cut[WEIGHTS] = cut  # the first GET sends `cut` bytes of it, then closes the connection
    [done] = _python(hub, script, CHECK, "owner/tiny")
    assert done["name"] == f"owner--tiny@{SHA_MAIN[:12]}", done
    ranges = [s[2] for s in _gets(hub, WEIGHTS)]
    assert ranges == [None, f"bytes={3 << 16}-"], hub.seen  # what was written is not fetched again
    assert (Path(done["dir"]) / WEIGHTS).read_bytes() == tiny_repo[WEIGHTS]


def _claims(hub, tmp_path, *args):
    (tmp_path / "expected").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider",
           "--lac-no-cache", "--lac-grid", "example", "--lac-model", "owner/tiny",
           "--lac-reports", str(tmp_path / "reports"), "--lac-expected-dir",
           str(tmp_path / "expected"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=hub.env)


def test_collect_only_names_the_commit_and_downloads_nothing(hub, tmp_path):
    out = _claims(hub, tmp_path, "--collect-only")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert f"[owner--tiny@{SHA_MAIN[:12]}-example]" in text  # the identity a run will have
    assert "not in the local Hugging Face cache; --collect-only downloads nothing" in text
    assert not [s for s in hub.seen if "/resolve/" in s[1]], hub.seen
    assert not (hub.cache / "models--owner--tiny" / "snapshots").exists()


def test_two_xdist_workers_share_one_download(hub, tmp_path):
    out = _claims(hub, tmp_path, "-n", "2", "-k", "c1_ or c4_no")
    text = out.stdout + out.stderr
    assert f"owner--tiny@{SHA_MAIN[:12]}         example" in text, text[-3000:]  # a verdict
    assert "error" not in text.lower(), text[-3000:]
    files = {s[1].rsplit("/", 1)[1] for s in hub.seen if s[0] == "GET" and "/resolve/" in s[1]}
    assert WEIGHTS in files and "config.json" in files
    for name in files:  # the controller downloaded it at start; the workers found it cached
        assert len([s for s in hub.seen if s[0] == "GET" and s[1].endswith("/" + name)]) == 1


def test_only_the_files_a_load_reads_are_chosen():
    from lac_core.models.hub import wanted

    repo = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "model-00001-of-00002.safetensors", "consolidated.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "README.md",
            "pytorch_model.bin", "onnx/model.onnx", "model.gguf", "training_args.bin"]
    assert wanted(repo) == sorted(repo[:5] + [repo[5], repo[7], repo[8]])
    pickled = ["config.json", "pytorch_model.bin", "training_args.bin", "vocab.json", "merges.txt"]
    assert wanted(pickled) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]


def test_a_bad_expectations_folder_is_refused_before_any_download(hub, tmp_path):
    out = _claims(hub, tmp_path, "--lac-expected-dir", str(tmp_path / "no-such-folder"))
    assert out.returncode == 4, (out.stdout + out.stderr)[-3000:]
    assert "--lac-expected-dir" in out.stdout + out.stderr
    assert not [s for s in hub.seen if "/resolve/" in s[1]], hub.seen  # no file was fetched


def test_fetch_puts_a_hub_id_into_the_hugging_face_cache_ahead_of_a_run(hub):
    out = subprocess.run([sys.executable, "-m", "lac_core.fetch", "owner/tiny"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=hub.env)
    assert out.returncode == 0, out.stderr[-3000:]
    snapshot = hub.cache / "models--owner--tiny" / "snapshots" / SHA_MAIN
    assert out.stdout.strip() == str(snapshot) and (snapshot / WEIGHTS).is_file()


def _outside(tmp_path, hub):
    """Every file under tmp_path but outside the hub library's cache and lac's cache."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and hub.cache not in p.parents
            and tmp_path / "lac" not in p.parents]


def test_a_revision_that_is_a_path_is_refused_before_any_path_is_built(hub, tmp_path):
    """Issue 36 case 2: `owner/tiny@../../../../x/pwned` wrote the hub library's ref file (named
    by the revision) outside the cache, even with a hub that answers it; a revision is a branch or
    tag name by git's rules, or a commit, and at most 255 bytes, checked before any request."""
    bad = ["../../../../x/pwned", "main/../../x", "a..b", "-x" * 200, "x" * 256, "a//b", ".hidden",
           "v1.lock", "a b", "a:b", "a\\b", "a~1", "a^", "end."]
    for revision in bad:
        hub.revisions[revision] = SHA_MAIN  # a hub that answers anything
    answers = _python(hub, CHECK, *[f"owner/tiny@{r}" for r in bad])
    for revision, answer in zip(bad, answers):
        assert answer.get("error") == "UsageError", (revision, answer)
        assert "revision" in answer["message"] and "branch" in answer["message"], answer
    assert "255" in answers[bad.index("x" * 256)]["message"]
    assert hub.seen == [], hub.seen  # refused before asking the hub
    assert _outside(tmp_path, hub) == []


def test_a_hub_commit_that_is_not_40_hex_digits_is_refused(hub, tmp_path):
    """Issue 36 case 2: a hub whose commit `sha` is `../../../../snap` made lac write snap.json
    (the hub library's tree cache, named by the commit) outside the cache."""
    hub.revisions["main"] = "../../../../snap"
    [answer] = _python(hub, CHECK, "owner/tiny")
    assert answer.get("error") == "MissingWeightsError", answer
    assert "'../../../../snap'" in answer["message"] and "40 hexadecimal" in answer["message"]
    assert _outside(tmp_path, hub) == [] and not list(tmp_path.rglob("snap*"))
    assert not [s for s in hub.seen if "/resolve/" in s[1] or "/tree/" in s[1]], hub.seen


@pytest.mark.parametrize("name", ["additional_chat_templates/../../x.jinja", "/etc/x.json",
                                  "additional_chat_templates//x.jinja", "./config.json",
                                  "a\\..\\config.json", "additional_chat_templates/\0.jinja"])
def test_a_listing_name_outside_the_repository_is_refused(hub, tmp_path, name):
    """Issue 36 case 2: a listing holding `additional_chat_templates/../../x.jinja` was chosen by
    lac's filter (the hub library then refused it: INTERNALERROR); every name of a listing must be
    a plain relative path inside the repository before lac picks or builds anything from it."""
    hub.files[name] = b"{}"
    [answer] = _python(hub, CHECK, "owner/tiny")
    assert answer.get("error") == "MissingWeightsError", answer
    assert repr(name) in answer["message"] and "plain relative path" in answer["message"]
    assert _outside(tmp_path, hub) == []
    assert not [s for s in hub.seen if "/resolve/" in s[1]], hub.seen


def test_a_hostile_revision_run_exits_4_with_one_line(hub, tmp_path):
    hub.revisions["../../../../x/pwned"] = SHA_MAIN  # a hub that answers it
    out = _claims(hub, tmp_path, "--lac-model", "owner/tiny@../../../../x/pwned")
    text = out.stdout + out.stderr
    assert out.returncode == 4 and "INTERNALERROR" not in text and "Traceback" not in text, text
    assert "revision '../../../../x/pwned'" in text and _outside(tmp_path, hub) == []
    assert not [s for s in hub.seen if "pwned" in unquote(s[1])], hub.seen  # never asked
    assert not (tmp_path / "x").exists()


def test_a_pinned_download_asks_the_hub_for_the_commit_once(hub):
    """The commit lac checked is the one downloaded: the hub is not asked again (a hub that
    answers another commit the second time cannot slip one past the check)."""
    _python(hub, CHECK, "owner/tiny@v1")
    asked = [s for s in hub.seen if re.fullmatch(r"/api/models/owner/tiny/revision/v1", s[1])]
    assert len(asked) == 1, hub.seen
    assert not [s for s in hub.seen if "/resolve/v1/" in s[1] or "/tree/v1" in s[1]], hub.seen


def _git_accepts(name: str) -> bool:
    """git's own answer: a branch or tag name (git check-ref-format --allow-onelevel)."""
    return subprocess.run(["git", "check-ref-format", "--allow-onelevel", name],
                          capture_output=True).returncode == 0


REF_ALPHABET = "ab1./-_@{}~^:?*[]\\ \t\x7fé"


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0,
                    reason="git is not installed")
def test_revision_check_agrees_with_git_check_ref_format():
    """Generated: lac's revision rule is git's (check-ref-format --allow-onelevel) on names built
    from the characters its rules are about (200 examples), plus 40-hex commits."""
    from hypothesis import given, settings, strategies as st

    from lac_core.errors import UsageError
    from lac_core.models.hub import check_revision

    def lac_accepts(name: str) -> bool:
        try:
            check_revision("owner/tiny", name)
            return True
        except UsageError:
            return False

    @settings(max_examples=200, deadline=None)
    @given(st.text(REF_ALPHABET, min_size=1, max_size=12))
    def agree(name):
        assert lac_accepts(name) == _git_accepts(name), name

    agree()
    assert lac_accepts(SHA_MAIN) and lac_accepts("refs/pr/1") and lac_accepts("v1.0")
