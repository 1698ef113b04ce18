"""The local store of tuned subjects: ``<home>/subjects/<name>/subject.safetensors``.

A subject file holds only what tuning changed: the tuned transformer tensors under their
state-dict names (full values, or with ``--save-rank`` a low-rank form of their change:
``<name>.lora_up`` (out, R) and ``<name>.lora_down`` (R, in), plus ``<name>.delta`` for 1-D
tensors) and the learned subject embedding ``subject_embedding`` (S, Ct). Its safetensors header
carries the provenance under ``__metadata__``: ``format``, ``name``, ``token``, ``class``,
``base_model``, ``base_model_hash``, ``kind`` (full / lowrank), ``rank``, ``steps``, ``seed``,
``arbooth_version``, ``created`` and ``config`` (the whole tuning config as JSON). Listing reads
only headers, so it needs no torch.

Writes go to a staging folder and are renamed into place under a file lock, as the model cache
does: a reader sees a subject whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import paths
from ..atomic import write_file_atomic
from ..cache import move_aside, staging_folder, store_lock, swap_in, writable_dir
from ..checkpoint_io import read_safetensors_header
from ..errors import CheckpointError, InvalidInputError, NotFoundError
from .words import token_in_prompt

SUBJECT_FILE = "subject.safetensors"
FORMAT = "arbooth.subject/1"
#: the store's own record of a subject, beside its files: token, class and each file's sha256, so
#: a damaged subject file is recognised (by its token in a prompt, by its checksum on use)
RECORD_FILE = "record.json"


def lowrank_file(rank: int) -> str:
    return f"subject-r{rank}.safetensors"


class SubjectNotFoundError(NotFoundError):
    def __init__(self, name: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"no subject named {name!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
        super().__init__(msg, hint="run 'arbooth subjects list' to see the tuned subjects")


class DamagedSubjectError(CheckpointError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f"subject {name!r} is damaged: {reason}",
                         hint=f"remove it with 'arbooth subjects rm {name}' and tune it again")


class SubjectExistsError(InvalidInputError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a subject named {name!r} already exists",
                         hint="pass --overwrite to replace it, or choose another --name")


@dataclass(frozen=True)
class SubjectInfo:
    """What a subject file's header says about it."""

    name: str
    path: Path  # the full subject file
    token: str
    cls: str
    base_model: str
    base_model_hash: str
    kind: str
    steps: int
    created: str
    arbooth_version: str
    config: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    tensors: int = 0
    lowrank: tuple[Path, ...] = ()  # compressed forms beside it
    sha256: str | None = None  # what the store recorded for the file (None: not in a store, or made before records)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("name", "token", "cls", "base_model", "base_model_hash", "kind",
                                           "steps", "created", "arbooth_version", "size", "tensors")}
        d["path"] = str(self.path)
        d["lowrank"] = [str(p) for p in self.lowrank]
        d["config"] = self.config
        return d


def read_subject_header(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(metadata, tensor entries)`` of a subject file; :class:`CheckpointError` if it is not one."""
    header = read_safetensors_header(Path(path))
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an arbooth subject file (format {meta.get('format')!r})",
                              hint="subject files are written by 'arbooth tune'")
    return meta, {k: v for k, v in header.items() if k != "__metadata__"}


def subject_info(path: Path) -> SubjectInfo:
    meta, entries = read_subject_header(path)
    try:
        config = json.loads(meta.get("config", "{}"))
        return SubjectInfo(
            name=meta["name"], path=Path(path), token=meta["token"], cls=meta["class"],
            base_model=meta["base_model"], base_model_hash=meta["base_model_hash"], kind=meta.get("kind", "full"),
            steps=int(meta.get("steps", 0)), created=meta.get("created", ""),
            arbooth_version=meta.get("arbooth_version", ""), config=config, size=Path(path).stat().st_size,
            tensors=len(entries),
            lowrank=tuple(sorted(Path(path).parent.glob("subject-r*.safetensors"))) if Path(path).name == SUBJECT_FILE else (),
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete subject metadata ({exc})") from None


@dataclass(frozen=True)
class DamagedSubject:
    """A store entry whose subject file cannot be read."""

    name: str
    token: str | None  # from the store's record, when there is one
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "token": self.token, "damaged": self.reason}


def read_record(folder: Path) -> dict[str, Any]:
    """The store's record of the subject in ``folder`` ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    files = record.get("files")
    return {"token": record.get("token") if isinstance(record.get("token"), str) else None,
            "files": {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}}


def write_record(folder: Path) -> None:
    """Record the token, class and checksums of the subject files in ``folder`` (being staged)."""
    from ..checkpoint_io import sha256_file

    meta, _ = read_subject_header(folder / SUBJECT_FILE)
    files = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    record = {"token": meta.get("token"), "class": meta.get("class"), "files": files}
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")


class SubjectStore:
    """Subjects under ``root`` (default: ``paths.home()``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.home()

    @property
    def dir(self) -> Path:
        return self.root / "subjects"

    def subject_dir(self, name: str) -> Path:
        """The folder of subject ``name``; InvalidInputError for a name that is no store name
        or leads outside the store."""
        return paths.store_entry(self.dir, name, "subject")

    def has(self, name: str) -> bool:
        return paths.valid_name(name) and (self.subject_dir(name) / SUBJECT_FILE).is_file()

    def scan(self) -> tuple[list[SubjectInfo], list[DamagedSubject]]:
        """Every entry of the store: the readable subjects, and the damaged ones with why."""
        ok: list[SubjectInfo] = []
        damaged: list[DamagedSubject] = []
        if not self.dir.is_dir():
            return ok, damaged
        for d in sorted(self.dir.iterdir()):
            if d.is_symlink() or not d.is_dir() or not paths.valid_name(d.name):
                continue  # what 'get' and 'rm' would refuse is not used by token either
            try:
                ok.append(self._read(d))
            except (CheckpointError, OSError) as exc:
                # without a record, the name stands in for the token (the default name is the token)
                damaged.append(DamagedSubject(d.name, read_record(d).get("token") or d.name, str(exc)))
        return ok, damaged

    def list(self) -> list[SubjectInfo]:
        """The readable subjects (:meth:`scan` also lists the damaged ones)."""
        return self.scan()[0]

    def get(self, name: str) -> SubjectInfo:
        d = self.subject_dir(name)
        if not d.is_dir():
            raise SubjectNotFoundError(name, [s.name for s in self.list()])
        try:
            return self._read(d)
        except (CheckpointError, OSError) as exc:
            raise DamagedSubjectError(name, str(exc)) from None

    def _read(self, folder: Path) -> SubjectInfo:
        f = folder / SUBJECT_FILE
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        info = subject_info(f)
        sha = read_record(folder).get("files", {}).get(SUBJECT_FILE)
        return replace(info, sha256=sha) if isinstance(sha, str) else info

    def in_prompt(self, prompt: str) -> list[SubjectInfo]:
        """Subjects whose token appears in ``prompt`` as a word."""
        return [s for s in self.list() if token_in_prompt(s.token, prompt)]

    # ---- writing ---------------------------------------------------------------------------

    def _lock(self, name: str):  # type: ignore[no-untyped-def]
        return store_lock(self.root, f"subject-{paths.check_name(name, 'subject')}", f"subject {name!r}")

    def staging(self, name: str):  # type: ignore[no-untyped-def]
        """A fresh folder to write a subject's files into before :meth:`commit`."""
        return staging_folder(self.root, f"subject-{paths.check_name(name, 'subject')}")

    def commit(self, name: str, stage: Path, *, overwrite: bool) -> SubjectInfo:
        with self._lock(name):
            target = self.subject_dir(name)
            writable_dir(self.dir)
            if target.exists() and not overwrite:
                raise SubjectExistsError(name)
            write_record(stage)
            swap_in(stage, target, paths.staging_dir(self.root))
        return self.get(name)

    def remove(self, name: str) -> Path:
        with self._lock(name):
            target = self.subject_dir(name)
            if not target.is_dir():
                raise SubjectNotFoundError(name, [s.name for s in self.list()])
            trash = move_aside(target, self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return target

    def export(self, name: str, dest: Path, *, rank: int | None = None, overwrite: bool = False) -> Path:
        """Copy a subject's file (or its rank-``rank`` form) to ``dest`` (a file or a folder)."""
        info = self.get(name)
        src = info.path if rank is None else info.path.parent / lowrank_file(rank)
        if not src.is_file():
            have = ", ".join(p.stem.split("-r")[-1] for p in info.lowrank) or "none"
            raise NotFoundError(f"subject {name!r} has no rank-{rank} form (ranks saved: {have})",
                                hint="tune with --save-rank R to save one")
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / (f"{name}.safetensors" if rank is None else f"{name}-r{rank}.safetensors")
        if dest.exists() and not overwrite:
            raise InvalidInputError(f"{dest} already exists", hint="pass --overwrite or another destination")
        write_file_atomic(dest, lambda tmp: shutil.copyfile(src, tmp),
                          hint="free some disk space, or choose another destination")
        return dest
