"""The local model store: import, download, verify and remove model files safely.

Layout under the arbooth home (``paths.home()``)::

    models/<name>/manifest.json      written last: a model is "ready" iff its manifest exists
    models/<name>/<role>.safetensors weights, converted once from .pth where needed
    models/<name>/<role>/...         folders (a text encoder, sharded weights)
    tmp/<name>.<id>.partial/         a model being built; never listed as ready
    locks/<name>.lock                serialises writers of one model

Every model is built in a private staging folder and moved into ``models/`` with one atomic
``os.replace`` under the model's file lock, so a killed process or two concurrent ``add`` calls can
never leave a model that ``list`` shows as ready but is incomplete. Anything that fails (a corrupt
file, a full disk) removes the staging folder: the store is left exactly as it was.

No torch import at module level: ``arbooth models list`` stays fast.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from ._version import __version__
from .atomic import raise_if_disk_full, remove_partials
from .checkpoint_io import (
    CHUNK,
    HashingWriter,
    find_state_dict,
    load_pth_weights_only,
    read_safetensors_header,
    sha256_file,
    tensor_shapes,
    write_safetensors,
)
from .errors import (
    CacheBusyError,
    CacheNotWritableError,
    CheckpointError,
    HashMismatchError,
    ModelExistsError,
    ModelFilesError,
    ModelNotCachedError,
)
from .registry import FileSpec, ModelSpec

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
LOCK_TIMEOUT_S = 600.0

#: Called with ``(role, {tensor name: shape})`` of each imported weight file; raises on a mismatch.
ShapeValidator = Callable[[str, dict[str, tuple[int, ...]]], None]
#: Progress callback: ``(description, bytes_done, bytes_total)``.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CachedFile:
    role: str
    path: str  # relative to the model folder
    sha256: str
    size: int


@dataclass(frozen=True)
class CachedModel:
    """A ready model in the store, as its manifest describes it."""

    name: str
    root: Path
    files: tuple[CachedFile, ...]
    roles: dict[str, str]  # role -> relative path of the file or folder to load
    model_hash: str
    source: str  # add | pull
    created: str
    arbooth_version: str
    originals: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def path(self, role: str) -> Path:
        return self.root / self.roles[role]


@dataclass(frozen=True)
class VerifyReport:
    name: str
    checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class CacheScan:
    models: tuple[CachedModel, ...]
    broken: tuple[str, ...]  # folders under models/ without a readable manifest
    partial: tuple[Path, ...]  # leftovers in tmp/ (e.g. from a killed process)


def model_hash(files: Sequence[CachedFile]) -> str:
    """One digest for a whole model: the sha256 of its sorted ``path:sha256`` lines."""
    lines = sorted(f"{f.path}:{f.sha256}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class ModelCache:
    """The model store rooted at ``root`` (default: ``paths.home()``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.home()

    # ---- reading ---------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        return paths.store_entry(paths.models_dir(self.root), name, "model")

    def get(self, name: str) -> CachedModel:
        model = self._read_manifest(self.model_dir(name))
        if model is None:
            raise ModelNotCachedError(name)
        return model

    def has(self, name: str) -> bool:
        return (self.model_dir(name) / MANIFEST).is_file()

    def scan(self) -> CacheScan:
        models, broken = [], []
        mdir = paths.models_dir(self.root)
        if mdir.is_dir():
            for d in sorted(mdir.iterdir()):
                if not d.is_dir():
                    continue
                m = self._read_manifest(d)
                if m is None:
                    broken.append(d.name)
                else:
                    models.append(m)
        tdir = paths.staging_dir(self.root)
        partial = tuple(sorted(tdir.iterdir())) if tdir.is_dir() else ()
        return CacheScan(tuple(models), tuple(broken), partial)

    def _read_manifest(self, d: Path) -> CachedModel | None:
        try:
            data = json.loads((d / MANIFEST).read_text())
            files = tuple(CachedFile(**f) for f in data["files"])
            return CachedModel(
                name=data["name"],
                root=d,
                files=files,
                roles=dict(data["roles"]),
                model_hash=data["model_hash"],
                source=data["source"],
                created=data["created"],
                arbooth_version=data["arbooth_version"],
                originals=data.get("originals", {}),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ---- verify ----------------------------------------------------------------------------

    def verify(self, name: str, progress: ProgressFn | None = None) -> VerifyReport:
        """Re-hash every file of a cached model against its manifest."""
        model = self.get(name)
        problems = []
        for f in model.files:
            p = model.root / f.path
            if not p.is_file():
                problems.append(f"{f.path}: missing")
                continue
            if p.stat().st_size != f.size:
                problems.append(f"{f.path}: size {p.stat().st_size}, expected {f.size}")
                continue
            if progress:
                progress(f.path, 0, f.size)
            if sha256_file(p) != f.sha256:
                problems.append(f"{f.path}: sha256 differs from the one recorded when it was added")
            if progress:
                progress(f.path, f.size, f.size)
        return VerifyReport(name, len(model.files), tuple(problems))

    # ---- writing ---------------------------------------------------------------------------

    def _lock(self, name: str):  # type: ignore[no-untyped-def]
        return store_lock(self.root, name, repr(name))

    def _mkdir(self, d: Path) -> None:
        writable_dir(d)

    def _staging(self, name: str):  # type: ignore[no-untyped-def]
        return staging_folder(self.root, name)

    def _commit(self, name: str, stage: Path, files: list[CachedFile], roles: dict[str, str],
                source: str, originals: dict[str, Any], force: bool, spec: ModelSpec) -> CachedModel:
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "source": source,
            "created": created,
            "arbooth_version": __version__,
            "model_hash": model_hash(files),
            "roles": roles,
            "files": [f.__dict__ for f in files],
            "originals": originals,
            "spec": spec.to_dict(),
        }
        try:
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        with self._lock(name):
            target = self.model_dir(name)
            self._mkdir(target.parent)
            if target.exists() and not force:
                raise ModelExistsError(name)
            swap_in(stage, target, paths.staging_dir(self.root))
        model = self._read_manifest(target)
        assert model is not None
        return model

    def remove(self, name: str) -> CachedModel:
        """Remove a cached model (atomically: it is moved out of ``models/`` first)."""
        with self._lock(name):
            model = self.get(name)
            trash = move_aside(model.root, self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return model

    def prune(self) -> list[Path]:
        """Delete leftovers of interrupted runs (``tmp/``), folders without a manifest, and the
        half-written checkpoints that killed tuning runs left (of runs not running now)."""
        scan = self.scan()
        removed = self._prune_runs()
        for p in scan.partial:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
        for name in scan.broken:
            with self._lock(name):
                d = self.model_dir(name)
                if d.is_dir() and self._read_manifest(d) is None:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
        return removed

    def _prune_runs(self) -> list[Path]:
        from filelock import FileLock, Timeout

        removed: list[Path] = []
        runs = paths.runs_dir(self.root)
        if not runs.is_dir():
            return removed
        try:
            paths.locks_dir(self.root).mkdir(parents=True, exist_ok=True)
        except OSError:
            return removed  # no lock can be taken here (read-only home): leave every run alone
        for run in sorted(runs.iterdir()):
            if not run.is_dir() or not paths.valid_name(run.name):
                continue
            lock = FileLock(str(paths.run_lock(self.root, run.name)))
            try:
                lock.acquire(timeout=0)
            except (Timeout, OSError):  # that run is tuning right now: its temporaries are live
                continue
            try:
                removed += remove_partials(run)
            finally:
                lock.release()
        return removed

    # ---- add (import files the user has) ---------------------------------------------------

    def add(
        self,
        spec: ModelSpec,
        inputs: Sequence[str | Path],
        *,
        name: str | None = None,
        force: bool = False,
        validate: ShapeValidator | bool = True,
        progress: ProgressFn | None = None,
        source: str = "add",
    ) -> CachedModel:
        """Import a model's files into the store.

        ``inputs`` are paths, or ``ROLE=PATH`` to say which file is which. Pickled ``.pth`` files
        are read with ``weights_only=True`` and converted to safetensors; hashes are recorded.
        By default the tensor names and shapes of the transformer and tokenizer files must be
        exactly the spec's (``validate=False`` skips that; a callable replaces it).
        """
        name = name or spec.name
        if validate is True:
            validate = spec_validator(spec)
        elif validate is False:
            validate = None
        if not spec.files:
            raise ModelFilesError(
                f"model {spec.name!r} is built in code and needs no files; use it directly"
            )
        assignment = assign_roles(spec, inputs)
        if not force and self.has(name):
            raise ModelExistsError(name)
        with self._staging(name) as stage:
            files: list[CachedFile] = []
            roles: dict[str, str] = {}
            originals: dict[str, Any] = {}
            for fspec in spec.files:
                src = assignment[fspec.role]
                rel, written, original = _import_role(fspec, src, stage, validate, progress)
                roles[fspec.role] = rel
                files.extend(written)
                originals[fspec.role] = original
            return self._commit(name, stage, files, roles, source, originals, force, spec)

    # ---- pull (download) -------------------------------------------------------------------

    def pull(
        self,
        spec: ModelSpec,
        *,
        force: bool = False,
        validate: ShapeValidator | bool = True,
        progress: ProgressFn | None = None,
        token: str | None = None,
    ) -> CachedModel:
        """Download a model's files from the hub and import them.

        Files already in the hub cache (``HF_HOME``) are used as they are; others download into a
        resumable folder under ``tmp/``, which a repeated ``pull`` continues.
        """
        from . import hub

        if not spec.files:
            raise ModelFilesError(f"model {spec.name!r} is built in code and needs no download")
        if not force and self.has(spec.name):
            raise ModelExistsError(spec.name)
        dl_dir = paths.staging_dir(self.root) / f"{spec.name}.download"
        self._mkdir(dl_dir)
        inputs = [f"{f.role}={hub.fetch(spec, f, dl_dir, token=token)}" for f in spec.files]
        model = self.add(spec, inputs, force=force, validate=validate, progress=progress, source="pull")
        shutil.rmtree(dl_dir, ignore_errors=True)
        return model


# ---- store mechanics shared with the subject store --------------------------------------------


def writable_dir(d: Path) -> None:
    """Create ``d`` (and parents) and check it is writable; :class:`CacheNotWritableError` if not."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", str(d))
    except OSError as exc:
        raise_if_disk_full(exc)
        raise CacheNotWritableError(
            f"cannot write to the cache directory {d}: {exc.strerror or exc}",
            hint="set ARBOOTH_HOME to a writable directory",
        ) from None


@contextmanager
def store_lock(root: Path, key: str, what: str) -> Iterator[None]:
    """One writer at a time for ``key`` under ``root`` (``what`` names it in the error)."""
    from filelock import FileLock, Timeout

    ldir = paths.locks_dir(root)
    writable_dir(ldir)
    try:
        with FileLock(str(ldir / f"{key}.lock")).acquire(timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise CacheBusyError(
            f"another arbooth process has held the lock of {what} for {LOCK_TIMEOUT_S:.0f} s",
            hint="wait for it to finish, or remove a stale lock file in " + str(ldir),
        ) from None


@contextmanager
def staging_folder(root: Path, stem: str) -> Iterator[Path]:
    """A fresh folder under ``tmp/`` to build something in; deleted on exit (moved away on success)."""
    tdir = paths.staging_dir(root)
    writable_dir(tdir)
    stage = tdir / f"{stem}.{uuid.uuid4().hex[:12]}.partial"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move_aside(target: Path, root: Path) -> Path:
    """Rename ``target`` into ``tmp/`` (one atomic step: readers no longer find it); returns where
    it went, for the caller to delete outside its lock."""
    writable_dir(paths.staging_dir(root))
    trash = paths.staging_dir(root) / f"{target.name}.{uuid.uuid4().hex[:12]}.removing"
    os.replace(target, trash)
    return trash


def swap_in(stage: Path, target: Path, trash_dir: Path) -> None:
    """Rename the folder ``stage`` to ``target``; an existing ``target`` is first moved aside into
    ``trash_dir`` and then deleted, so readers see the old or the new folder, never a mix."""
    if target.exists():
        trash = trash_dir / f"{target.name}.{uuid.uuid4().hex[:12]}.removing"
        os.replace(target, trash)
        os.replace(stage, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, target)


def spec_validator(spec: ModelSpec) -> ShapeValidator:
    """Check imported transformer/tokenizer tensors against the spec, from shapes alone."""

    def check(role: str, shapes: dict[str, tuple[int, ...]]) -> None:
        if role not in ("transformer", "vae"):
            return
        import torch

        from .models.build import validate_checkpoint

        meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        validate_checkpoint(spec, role, meta)

    return check


# ---- role assignment ------------------------------------------------------------------------


def assign_roles(spec: ModelSpec, inputs: Sequence[str | Path]) -> dict[str, Path]:
    """Which input is which file of the spec; every role exactly once, nothing extra."""
    by_role = {f.role: f for f in spec.files}
    out: dict[str, Path] = {}
    unknown: list[str] = []
    for raw in inputs:
        raw = str(raw)
        role, sep, rest = raw.partition("=")
        if sep and role in by_role:
            path = Path(rest).expanduser()
        else:
            path, role = Path(raw).expanduser(), None
        if not path.exists():
            raise ModelFilesError(f"no such file or folder: {path}")
        if role is None:
            matches = [f.role for f in spec.files if _matches(f, path)]
            if len(matches) != 1:
                unknown.append(str(path))
                continue
            role = matches[0]
        if role in out:
            raise ModelFilesError(
                f"two inputs for the {role} of {spec.name!r}: {out[role]} and {path}"
            )
        out[role] = path
    if unknown:
        expect = ", ".join(f"{f.role} ({_describe(f)})" for f in spec.files)
        raise ModelFilesError(
            f"cannot tell which file of {spec.name!r} {', '.join(unknown)} is; it expects {expect}",
            hint="name each input as ROLE=PATH, e.g. vae=/data/my_vae.pth",
        )
    missing = [f for f in spec.files if f.role not in out]
    if missing:
        need = ", ".join(f"{f.role} ({_describe(f)})" for f in missing)
        raise ModelFilesError(f"missing files for {spec.name!r}: {need}")
    return out


def _describe(f: FileSpec) -> str:
    if f.kind == "hf-dir":
        return f"a {f.repo_id} folder"
    return f.filename.rsplit("/", 1)[-1]


def _matches(f: FileSpec, path: Path) -> bool:
    if (f.kind == "hf-dir") != path.is_dir() and f.kind != "safetensors-index":
        return False
    patterns = list(f.match)
    if f.filename:
        patterns.append(f.filename.rsplit("/", 1)[-1])
    return any(fnmatch.fnmatch(path.name.lower(), p.lower()) for p in patterns)


# ---- importing one role ---------------------------------------------------------------------


def _file_format(path: Path) -> str:
    """Tell a file's format from its bytes, not its name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pth"  # torch zip format, or a legacy pickle (protocol >= 2)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if path.suffix == ".json":
        return "json"
    return "unknown"


def _import_role(
    fspec: FileSpec,
    src: Path,
    stage: Path,
    validate: ShapeValidator | None,
    progress: ProgressFn | None,
) -> tuple[str, list[CachedFile], dict[str, Any]]:
    """Bring one role's file(s) into ``stage``; return (relative path, files, original info)."""
    if fspec.kind == "hf-dir":
        return _import_dir(fspec, src, stage, validate, progress)
    if src.is_dir():
        index = src / "model.safetensors.index.json"
        if fspec.kind == "safetensors-index" and index.is_file():
            src = index
        else:
            raise ModelFilesError(f"{src} is a folder, but the {fspec.role} is a single file")
    fmt = _file_format(src)
    if fspec.kind == "safetensors-index" and fmt == "json":
        return _import_index(fspec, src, stage, validate, progress)
    rel = f"{fspec.role}.safetensors"
    original = {"name": src.name, "size": src.stat().st_size}
    if fmt == "safetensors":
        header = read_safetensors_header(src)
        if validate:
            validate(fspec.role, tensor_shapes(header))
        sha, size = _copy(src, stage / rel, progress)
        original["sha256"] = sha
    elif fmt == "pth":
        original["sha256"] = _hash_with_progress(src, progress)
        obj = load_pth_weights_only(src)
        state = find_state_dict(obj, fspec.state_dict_keys, src)
        if validate:
            validate(fspec.role, {k: tuple(v.shape) for k, v in state.items()})
        meta = {"converted_from": src.name, "source_sha256": original["sha256"], "arbooth_version": __version__}
        sha, size = write_safetensors(stage / rel, state, meta)
        del obj, state
    else:
        raise CheckpointError(f"{src} is neither a PyTorch checkpoint nor a safetensors file")
    _check_known_hash(fspec, original["sha256"], src)
    return rel, [CachedFile(fspec.role, rel, sha, size)], original


def _check_known_hash(fspec: FileSpec, sha: str, src: Path) -> None:
    if fspec.sha256 and sha != fspec.sha256:
        raise HashMismatchError(str(src), fspec.sha256, sha, hint="download the file again")


def _import_index(fspec, src, stage, validate, progress):
    try:
        index = json.loads(src.read_text())
        shards = sorted(set(index["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{src} is not a safetensors index (no weight_map)") from None
    folder = fspec.role
    (stage / folder).mkdir()
    files = []
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        p = src.parent / shard
        if "/" in shard or not p.is_file():
            raise ModelFilesError(f"shard {shard} listed in {src.name} is missing beside it")
        header = read_safetensors_header(p)
        shapes.update(tensor_shapes(header))
        listed = {k for k, v in index["weight_map"].items() if v == shard}
        if listed - set(header):
            raise CheckpointError(f"{shard} lacks tensors its index lists, e.g. {sorted(listed - set(header))[0]}")
    if validate:
        validate(fspec.role, shapes)
    for shard in shards:
        sha, size = _copy(src.parent / shard, stage / folder / shard, progress)
        files.append(CachedFile(fspec.role, f"{folder}/{shard}", sha, size))
    sha, size = _copy(src, stage / folder / src.name, None)
    files.append(CachedFile(fspec.role, f"{folder}/{src.name}", sha, size))
    return f"{folder}/{src.name}", files, {"name": src.parent.name, "shards": len(shards)}


def _import_dir(fspec, src, stage, validate, progress):
    if not src.is_dir():
        raise ModelFilesError(f"the {fspec.role} must be a folder (a {fspec.repo_id} download), got {src}")
    chosen = sorted(
        p for p in src.iterdir()
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in fspec.include)
    )
    names = {p.name for p in chosen}
    problems = []
    if "config.json" not in names:
        problems.append("config.json")
    if not names & {"spiece.model", "tokenizer.json"}:
        problems.append("a tokenizer (spiece.model or tokenizer.json)")
    weights = [p for p in chosen if p.suffix == ".safetensors"]
    bins = sorted(src.glob("pytorch_model*.bin"))
    if not weights and not bins:
        problems.append("weights (model*.safetensors or pytorch_model*.bin)")
    if problems:
        raise ModelFilesError(f"{src} lacks {', '.join(problems)}: it is not a complete {fspec.repo_id} folder")
    folder = fspec.role
    (stage / folder).mkdir()
    files = []
    for p in chosen:
        if p.suffix == ".safetensors":
            read_safetensors_header(p)
        sha, size = _copy(p, stage / folder / p.name, progress)
        files.append(CachedFile(fspec.role, f"{folder}/{p.name}", sha, size))
    if not weights:  # pickled weights only: convert each shard, never unpickling code
        for i, b in enumerate(bins):
            state = find_state_dict(load_pth_weights_only(b), ((),), b)
            out = f"model-{i:05d}.safetensors" if len(bins) > 1 else "model.safetensors"
            sha, size = write_safetensors(stage / folder / out, state, {"format": "pt", "converted_from": b.name})
            files.append(CachedFile(fspec.role, f"{folder}/{out}", sha, size))
    return folder, files, {"name": src.name, "files": len(files)}


def _copy(src: Path, dst: Path, progress: ProgressFn | None) -> tuple[str, int]:
    total = src.stat().st_size
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        w = HashingWriter(fo)
        while block := fi.read(CHUNK):
            w.write(block)
            if progress:
                progress(src.name, w.size, total)
        try:
            fo.flush()
            os.fsync(fo.fileno())
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
    if w.size != total:
        raise CheckpointError(f"{src} changed while it was being copied")
    return w.sha.hexdigest(), w.size


def _hash_with_progress(src: Path, progress: ProgressFn | None) -> str:
    if progress:
        progress(f"hashing {src.name}", 0, src.stat().st_size)
    sha = sha256_file(src)
    if progress:
        progress(f"hashing {src.name}", src.stat().st_size, src.stat().st_size)
    return sha
