"""Hub ids: a model repo's snapshot in the Hugging Face cache, downloaded when the run allows it."""
# huggingface_hub does the work (its cache, file locks, progress bars, resume within a download,
# HF_TOKEN, HF_ENDPOINT, HF_HUB_CACHE); lac picks the files a load reads, resolves the revision to
# a commit before any experiment, and turns the hub's answers into one message each. The hub
# library is imported inside the functions: the plugin stays light at import time.
from __future__ import annotations

import difflib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..errors import HubAccessError, MissingWeightsError, UnknownModelError
from .inspect import PROMPT_FILES, missing_weights

FILES = ("config.json", "generation_config.json", *PROMPT_FILES)
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PICKLED = ("pytorch_model*.bin", "pytorch_model.bin.index.json")  # only where no safetensors
LOGIN = "log in with `hf auth login` (or set HF_TOKEN to a token that can read it)"


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
    files = wanted([s.rfilename for s in info.siblings or ()])
    if not any(fnmatch(f, p) for f in files for p in SAFETENSORS + PICKLED):
        raise UnknownModelError(
            f"--lac-model {_label(hub_id, revision)}: the repo holds no safetensors or PyTorch "
            "weights that transformers loads (a GGUF repo? pass the downloaded .gguf file as "
            "--lac-model FILE)")
    path = cached(hub_id, info.sha, files)
    if path is not None or not download:
        return Snapshot(info.sha, path)
    return Snapshot(info.sha, _download(hub_id, revision, files))


def _unreachable(hub_id, revision, exc, download) -> Snapshot:
    """The hub cannot be reached: the cached snapshot serves (as huggingface_hub's own loads do)."""
    path = cached(hub_id, revision)
    if path is None and download:
        raise refuse(hub_id, revision, f"the hub cannot be reached ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''})")
    return Snapshot(path.name if path else None, path)


def _download(hub_id: str, revision: str | None, files: list[str]) -> Path:
    """snapshot_download of exactly these files (its cache, locks, progress bars and resume)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = Path(snapshot_download(hub_id, revision=revision, allow_patterns=files))
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
