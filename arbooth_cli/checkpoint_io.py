"""Checkpoint file formats: safe ``.pth`` reading, safetensors header checks, streaming writes.

* Pickled ``.pth`` files are only ever read with ``torch.load(weights_only=True)``: a pickle that
  holds anything but tensors and plain containers is refused (:class:`UnsafeCheckpointError`).
* safetensors files are validated from their header alone (a truncated file is caught before any
  tensor is read).
* :func:`write_safetensors` writes one tensor at a time, hashing as it goes, so converting a
  checkpoint that is memory-mapped from disk never holds a second full copy of it in RAM
  (``safetensors.torch.save_file`` serialises every tensor to bytes first).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .atomic import raise_if_disk_full
from .errors import CheckpointError, UnsafeCheckpointError

if TYPE_CHECKING:
    import torch

CHUNK = 16 << 20
HEADER_LIMIT = 100 << 20  # safetensors caps its header at 100 MB

_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class HashingWriter:
    """A binary file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._f.write(data)
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        self.sha.update(data)
        self.size += len(data)


# ---- safetensors ----------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, checked against the file's size.

    Returns ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > HEADER_LIMIT or 8 + n > size:
                raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header size)")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not an object)")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            numel = 1
            for d in info["shape"]:
                numel *= int(d)
            itemsize = _SAFETENSORS_DTYPES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}") from None
        if stop - start != numel * itemsize or start < 0:
            raise CheckpointError(f"{path}: tensor {name!r} has inconsistent offsets")
        end = max(end, stop)
    if end > data_len:
        raise CheckpointError(
            f"{path} is truncated: its header needs {end} data bytes but the file has {data_len}",
            hint="download or copy the file again",
        )
    return header


def tensor_shapes(header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _dtype_name(t: torch.Tensor) -> str:
    import torch

    names = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL",
    }
    for attr, name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
        if hasattr(torch, attr):
            names[getattr(torch, attr)] = name
    try:
        return names[t.dtype]
    except KeyError:
        raise CheckpointError(f"tensors of dtype {t.dtype} cannot be stored as safetensors") from None


def write_safetensors(
    path: Path,
    tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """Write ``tensors`` to ``path`` one at a time; return ``(sha256, size)`` of the file written."""
    import torch

    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"entry {name!r} is a {type(t).__name__}, not a tensor")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _dtype_name(t), "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format wants the data 8-byte aligned
    with open(path, "wb") as f:
        w = HashingWriter(f)
        w.write(struct.pack("<Q", len(blob)))
        w.write(blob)
        for _name, t in items:
            if t.numel():
                flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                w.write(memoryview(flat.numpy()))
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
    return w.sha.hexdigest(), w.size


# ---- pickled .pth ---------------------------------------------------------------------------


def load_pth_weights_only(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (memory-mapped when the file format allows).

    Never executes pickled code: a pickle that references any other class is refused.
    """
    import pickle

    import torch

    import warnings

    mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        with warnings.catch_warnings():  # legacy pickles warn about their protocol; we refuse or accept anyway
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = _unsafe_reason(str(exc))
        if reason or "weights_only" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"{path} holds pickled objects other than tensors and plain containers"
                f"{' (' + reason + ')' if reason else ''}; refusing to unpickle it",
                hint="extract the state dict with code you trust and save it as safetensors",
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: {first}") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({first})", hint="download or copy the file again"
        ) from None


def _unsafe_reason(msg: str) -> str:
    for line in msg.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not")[0].strip()[:160]
    return ""


def find_state_dict(obj: Any, key_paths: Iterable[tuple[str, ...]], path: Path) -> dict[str, torch.Tensor]:
    """The first mapping of only tensors found at one of ``key_paths`` inside a loaded pickle."""
    import torch

    tried = []
    for keys in key_paths:
        node = obj
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        tried.append("/".join(keys) or "<top level>")
        if isinstance(node, Mapping) and node and all(isinstance(v, torch.Tensor) for v in node.values()):
            return {str(k): v for k, v in node.items()}
    raise CheckpointError(
        f"{path} holds no state dict at {', '.join(tried)}: it is not a checkpoint of this model's kind"
    )
