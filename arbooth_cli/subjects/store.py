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
from dataclasses import dataclass, field
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


def lowrank_file(rank: int) -> str:
    return f"subject-r{rank}.safetensors"


class SubjectNotFoundError(NotFoundError):
    def __init__(self, name: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"no subject named {name!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
        super().__init__(msg, hint="run 'arbooth subjects list' to see the tuned subjects")


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

    def list(self) -> list[SubjectInfo]:
        out = []
        if self.dir.is_dir():
            for d in sorted(self.dir.iterdir()):
                f = d / SUBJECT_FILE
                if f.is_file():
                    try:
                        out.append(subject_info(f))
                    except (CheckpointError, OSError):
                        continue  # a damaged entry is not listed; 'subjects rm' still removes it
        return out

    def get(self, name: str) -> SubjectInfo:
        f = self.subject_dir(name) / SUBJECT_FILE
        if not f.is_file():
            raise SubjectNotFoundError(name, [s.name for s in self.list()])
        return subject_info(f)

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
