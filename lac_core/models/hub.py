"""Hub ids: a model repo's snapshot in the Hugging Face cache, downloaded when the run allows it."""
# huggingface_hub does the work (its cache, file locks, progress bars, resume within a download,
# HF_TOKEN, HF_ENDPOINT, HF_HUB_CACHE); lac picks the files a load reads, resolves the revision to
# a commit before any experiment, and turns the hub's answers into one message each. Nothing
# from the command line or the hub names a path before it is checked: a revision is a branch or
# tag name by git's rules (or a commit), the hub's commit is 40 hex digits, every name its listing
# gives is a plain relative path; the download is pinned to the commit checked (the hub is not
# asked again). The hub library is imported inside the functions: the plugin stays light at
# import time.
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..errors import HubAccessError, MissingWeightsError, UnknownModelError, UsageError
from .inspect import PROMPT_FILES, missing_weights

FILES = ("config.json", "generation_config.json", *PROMPT_FILES)
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PICKLED = ("pytorch_model*.bin", "pytorch_model.bin.index.json")  # only where no safetensors
LOGIN = "log in with `hf auth login` (or set HF_TOKEN to a token that can read it)"
COMMIT = re.compile(r"[0-9a-f]{40}")  # a commit as the hub names it (and its cache folders)
NAME_BYTES = 255  # a revision names a file of the cache (refs/<revision>): one file name's limit
_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")  # check-ref-format rules 3-5, 8, 10
_PATH_BAD = re.compile(r"[\x00-\x1f\x7f\\]")


def ref_name(name: str) -> bool:
    """A branch or tag name by git's rules (check-ref-format --allow-onelevel): no '..', '@{',
    space, control character or any of ~^:?*[\\; no empty component, none starting with '.'
    or ending with '.lock'; not '@', not ending with '.'; as `git branch` wants, no leading '-'."""
    return bool(name) and name != "@" and not name.endswith(".") and not name.startswith("-") \
        and _REF_BAD.search(name) is None \
        and all(part and not part.startswith(".") and not part.endswith(".lock")
                for part in name.split("/"))


def check_revision(hub_id: str, revision: str | None) -> None:
    """Before any request or path: a revision is a branch or tag name, or a commit (which is one),
    of at most 255 bytes; anything else is one UsageError naming it and the fix."""
    if revision is None:
        return
    shown = revision if len(revision) <= 80 else revision[:60] + "..."
    fix = "give the branch, tag or commit (40 hex digits) as the hub shows it"
    try:
        size = len(revision.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"--lac-model {hub_id}@...: revision {shown!r} is not UTF-8 text; "
                         f"{fix}") from None
    if size > NAME_BYTES:
        raise UsageError(f"--lac-model {hub_id}@...: revision {shown!r} is {size} bytes long, "
                         f"and a branch, tag or commit name is at most {NAME_BYTES}; {fix}")
    if not ref_name(revision):
        raise UsageError(f"--lac-model {hub_id}@{shown}: revision {shown!r} is neither a commit "
                         "nor a branch or tag name by git's rules (no '..', '@{', space, control "
                         "character or any of ~^:?*[\\, no empty part, none starting with '.' or "
                         "ending with '.lock', not '@', not ending with '.' or starting with '-'); "
                         f"{fix}")


def repo_path(name) -> bool:
    """A plain relative path inside a repository: no empty, '.' or '..' part, no leading '/', no
    backslash or control character, each part a file name (at most 255 bytes)."""
    if not isinstance(name, str) or not name or name.startswith("/") or _PATH_BAD.search(name):
        return False
    try:
        return all(part not in ("", ".", "..") and len(part.encode("utf-8")) <= NAME_BYTES
                   for part in name.split("/"))
    except UnicodeEncodeError:
        return False


def check_answer(hub_id: str, revision: str | None, sha, names: list) -> None:
    """The hub's commit and listing, before lac picks a file or builds a path from them: a commit
    of 40 hex digits, and names that are plain relative paths (a hub that says otherwise is not
    one lac downloads from)."""
    from huggingface_hub import constants

    where = f"--lac-model {_label(hub_id, revision)}: the hub at {constants.ENDPOINT}"
    fix = "lac builds no path from it; check HF_ENDPOINT points at a Hugging Face hub"
    if not isinstance(sha, str) or COMMIT.fullmatch(sha) is None:
        raise MissingWeightsError(f"{where} answered commit {str(sha)[:80]!r}, which is not a "
                                  f"commit id (40 hexadecimal digits); {fix}")
    bad = next((n for n in names if not repo_path(n)), None)
    if bad is not None:
        raise MissingWeightsError(f"{where} listed a file {str(bad)[:120]!r}, which is not a plain "
                                  f"relative path inside the repository; {fix}")


@dataclass(frozen=True)
class Snapshot:
    """A revision of a hub repo: its commit (None when unknown) and its complete local snapshot
    folder (None when it is not in the cache and was not downloaded)."""

    sha: str | None
    path: Path | None


def wanted(files: list[str]) -> list[str]:
    """The repo files a load reads: config, generation config, tokenizer and chat template files,
    and the weights (safetensors and their index; PyTorch .bin only when there are none): not
    the other formats a repo may also hold (ONNX, GGUF, pickles beside safetensors)."""
    def matching(patterns):
        return [f for f in files if any(fnmatch(f, p) for p in patterns)
                and ("/" not in f or f.startswith("additional_chat_templates/"))]

    weights = matching(SAFETENSORS) or matching(PICKLED)
    own = [f for f in weights if f.startswith("model")]  # transformers' names, when a repo also
    if any(f.endswith(".safetensors") for f in own):  # ships another format's copy (consolidated)
        weights = own
    return sorted(set(matching(FILES)) | set(weights))


def _label(hub_id: str, revision: str | None) -> str:
    return f"{hub_id}@{revision}" if revision else hub_id


def _download_command(hub_id: str, revision: str | None) -> str:
    return f"hf download {hub_id}" + (f" --revision {revision}" if revision else "")


def cached(hub_id: str, revision: str | None = None, files=()) -> Path | None:
    """The snapshot of a revision (branch, tag or commit) in the local cache with its weights
    (and these files), or None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    path = Path(config).parent if isinstance(config, str) else None
    if path is None or missing_weights(path) or not all((path / f).is_file() for f in files):
        return None
    return path


def refuse(hub_id: str, revision: str | None, why: str) -> MissingWeightsError:
    """Not in the local cache and not downloadable now: what to do instead."""
    from huggingface_hub import constants

    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    lacking = missing_weights(Path(config).parent) if isinstance(config, str) else None
    found = f" ({lacking})" if lacking else ""
    return MissingWeightsError(
        f"--lac-model {_label(hub_id, revision)}: the model is not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}){found} and {why}. Run once with hub access to download it, or "
        f"on a machine with hub access run `{_download_command(hub_id, revision)}` and copy the "
        "cache over (HF_HOME), or pass --lac-model with a local directory holding the weights.")


def offline_reason(offline: bool) -> str | None:
    """Why nothing may be downloaded now (lac's own switch, or the hub library's), or None."""
    from huggingface_hub import constants

    if offline:
        return "--lac-offline (or LAC_OFFLINE=1) forbids downloading it"
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1 forbids downloading it"
    return None


def snapshot(hub_id: str, revision: str | None = None, *, offline: bool = False,
             download: bool = True, known: tuple[str, ...] = ()) -> Snapshot:
    """A revision's commit and complete local snapshot, downloading the files a load reads when
    allowed. `download` False (collect-only): the commit is asked for, no file is fetched, and a
    snapshot not in the cache is no error (path None) unless offline, where a run would stop."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_revision(hub_id, revision)
    why = offline_reason(offline)
    if why:  # a run would stop here: so does collect-only
        path = cached(hub_id, revision)
        if path is None:
            raise refuse(hub_id, revision, why)
        return Snapshot(path.name, path)
    try:
        info = HfApi().model_info(hub_id, revision=revision)
    except (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled) as exc:
        return _unreachable(hub_id, revision, exc, download)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and status >= 500:
            return _unreachable(hub_id, revision, exc, download)
        raise hub_error(hub_id, revision, exc, known) from None
    names = [s.rfilename for s in info.siblings or ()]
    check_answer(hub_id, revision, info.sha, names)
    files = wanted(names)
    if not any(fnmatch(f, p) for f in files for p in SAFETENSORS + PICKLED):
        raise UnknownModelError(
            f"--lac-model {_label(hub_id, revision)}: the repo holds no safetensors or PyTorch "
            "weights that transformers loads (a GGUF repo? pass the downloaded .gguf file as "
            "--lac-model FILE)")
    path = cached(hub_id, info.sha, files)
    if path is not None or not download:
        return Snapshot(info.sha, path)
    return Snapshot(info.sha, _download(hub_id, revision, info.sha, files))


def _unreachable(hub_id, revision, exc, download) -> Snapshot:
    """The hub cannot be reached: the cached snapshot serves (as huggingface_hub's own loads do)."""
    path = cached(hub_id, revision)
    if path is None and download:
        raise refuse(hub_id, revision, f"the hub cannot be reached ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''})")
    return Snapshot(path.name if path else None, path)


def _download(hub_id: str, revision: str | None, sha: str, files: list[str]) -> Path:
    """snapshot_download of exactly these files (its cache, locks, progress bars and resume), at
    the commit checked (a ResolvedRevision: the hub is not asked for it again); the revision's
    ref is then recorded, as the hub library does, so an offline run finds the snapshot."""
    from huggingface_hub import ResolvedRevision, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    exact = [re.sub(r"([*?\[])", r"[\1]", f) for f in files]  # names, not fnmatch patterns
    try:
        path = Path(snapshot_download(hub_id, allow_patterns=exact, revision=ResolvedRevision(
            sha, revision, repo_id=hub_id)))
        _record_ref(path, revision, sha)
    except HfHubHTTPError as exc:
        raise hub_error(hub_id, revision, exc) from None
    except OSError as exc:  # a connection lost for good, a size that does not match, a full disk
        raise MissingWeightsError(
            f"--lac-model {_label(hub_id, revision)}: the download did not complete ({exc}); run "
            "again (files already downloaded are kept), or download it with "
            f"`{_download_command(hub_id, revision)}`") from None
    lacking = missing_weights(path)
    if lacking:
        raise MissingWeightsError(f"--lac-model {_label(hub_id, revision)}: after the download, "
                                  f"{lacking}; run again, or "
                                  f"`{_download_command(hub_id, revision)}`")
    return path


def _record_ref(snapshot: Path, revision: str | None, sha: str) -> None:
    """refs/<revision> beside the snapshot (both checked: a ref name, a commit), written whole."""
    if revision == sha:
        return
    ref = snapshot.parent.parent / "refs" / (revision or "main")
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f"{ref.name}.{os.getpid()}.lac-tmp")
    tmp.write_text(sha)
    os.replace(tmp, ref)


def hub_error(hub_id: str, revision: str | None, exc, known=()) -> Exception:
    """One message per answer: no access (401, 403, gated), no such repo, no such revision."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    status = exc.response.status_code if getattr(exc, "response", None) is not None else None
    page, label = f"{constants.ENDPOINT}/{hub_id}", _label(hub_id, revision)
    if isinstance(exc, GatedRepoError):
        return HubAccessError(f"--lac-model {label}: {hub_id} is a gated model the hub does not "
                              f"let this account read (HTTP {status}); accept its terms on {page}, "
                              f"then {LOGIN}")
    if status in (401, 403):
        return HubAccessError(f"--lac-model {label}: the hub refused access to {hub_id} (HTTP "
                              f"{status}: a private or gated repo, or none by that name); {LOGIN}, "
                              "and check the name")
    if isinstance(exc, RevisionNotFoundError):
        return UnknownModelError(f"--lac-model {label}: {hub_id} has no revision {revision!r} on "
                                 f"the hub; give a branch, tag or commit that exists ({page})")
    if isinstance(exc, RepositoryNotFoundError):
        close = difflib.get_close_matches(hub_id, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return UnknownModelError(f"--lac-model {label}: no model repo {hub_id} on the hub "
                                 f"({constants.ENDPOINT}){hint}; check the owner/name spelling")
    return MissingWeightsError(f"--lac-model {label}: the hub answered HTTP {status} ({exc}); "
                               "run again later")
