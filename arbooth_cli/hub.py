"""Downloads from the Hugging Face hub, for users who are online.

Uses ``huggingface_hub``, so ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and
``HF_ENDPOINT`` behave as in every other hub tool. A file already in the hub cache is used where it
lies; a missing one downloads into a folder that a repeated ``pull`` resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DownloadError, OfflineError
from .registry import FileSpec, ModelSpec


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch(spec: ModelSpec, f: FileSpec, dest: Path, *, token: str | None = None) -> Path:
    """Local path of one file (or folder) of ``spec``: from the hub cache, else downloaded."""
    try:
        return _fetch(f, dest, token)
    except DownloadError:
        raise
    except Exception as exc:  # huggingface_hub and its HTTP stack raise many types
        raise _translate(spec, f, exc) from None


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def _fetch(f: FileSpec, dest: Path, token: str | None) -> Path:
    import huggingface_hub as hf

    offline = _offline()
    if f.kind == "hf-dir":
        try:
            return Path(
                hf.snapshot_download(
                    f.repo_id, allow_patterns=list(f.include), local_files_only=True, cache_dir=hub_cache_dir()
                )
            )
        except Exception:
            if offline:
                raise
        return Path(
            hf.snapshot_download(
                f.repo_id, allow_patterns=list(f.include), local_dir=dest / f.role, token=token
            )
        )
    first = _one(hf, f.repo_id, f.filename, dest, token, offline)
    if f.kind == "safetensors-index":
        import json

        shards = sorted(set(json.loads(first.read_text())["weight_map"].values()))
        folder = f.filename.rsplit("/", 1)[0] + "/" if "/" in f.filename else ""
        for shard in shards:
            got = _one(hf, f.repo_id, folder + shard, dest, token, offline)
            if got.parent != first.parent:  # keep shards beside their index
                raise DownloadError(f"shard {shard} landed outside the folder of its index")
    return first


def _one(hf, repo_id: str, filename: str, dest: Path, token: str | None, offline: bool) -> Path:
    cached = hf.try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if offline:
        raise hf.errors.OfflineModeIsEnabled(f"{repo_id}/{filename} is not in the hub cache")
    return Path(hf.hf_hub_download(repo_id, filename, local_dir=dest, token=token))


def _translate(spec: ModelSpec, f: FileSpec, exc: Exception) -> DownloadError:
    from huggingface_hub import errors as e

    where = f"{f.repo_id}/{f.filename}" if f.filename else f.repo_id
    if isinstance(exc, (e.GatedRepoError, e.RepositoryNotFoundError)):
        return DownloadError(
            f"the hub refused {where}: {type(exc).__name__}",
            hint="log in (set HF_TOKEN) and accept the model's license on its hub page",
        )
    if isinstance(exc, (e.EntryNotFoundError, e.RemoteEntryNotFoundError)) and not isinstance(
        exc, e.LocalEntryNotFoundError
    ):
        return DownloadError(f"{where} does not exist on the hub")
    if _offline() or isinstance(exc, (e.OfflineModeIsEnabled, e.LocalEntryNotFoundError)):
        reason = "offline mode is on (HF_HUB_OFFLINE) and it is not in the hub cache" if _offline() else \
            "the hub cannot be reached"
        return OfflineError(spec.name, f"{where}: {reason}")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return OfflineError(spec.name, f"{where}: {first}")
