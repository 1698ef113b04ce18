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
import re
import reprlib
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
HEADER_LIMIT = 100_000_000  # the reference loader's cap (MAX_HEADER_SIZE in safetensors' Rust core)
MAX_HEADER_DEPTH = 64  # a real header nests 3 deep; the bound keeps json.loads far from the recursion limit

_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_SIZE_LIMIT = (1 << 63) - 1  # torch holds sizes in int64 (the reference allows u64 and torch then fails)
_JSON_SPACE = " \t\r\n"
_NOT_TOKEN = bytes(sorted(set(range(256)) - set(b'[]{}"')))  # what the nesting scan drops
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist = 60, 60, 6


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
    """The header of a safetensors file, checked as the reference loader checks it.

    Returns ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``. Any file the
    ``safetensors`` library would refuse raises :class:`CheckpointError` here instead (so does a
    truncated one, before any tensor is read), and a header that passes cannot make the library
    or torch fail on its structure. The checks follow ``Metadata::validate`` in safetensors' Rust
    core, a little stricter where Python and torch need it (no repeated keys, no keys beyond the
    three, dimensions torch can hold).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > HEADER_LIMIT or 8 + n > size:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header size)")
        blob = f.read(n)
    if len(blob) < n:  # the file shrank since stat()
        raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header size)")
    header = _parse_header(path, blob)
    data_len = size - 8 - n
    ranges: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            _check_metadata(path, info)
        else:
            ranges.append((*_tensor_range(path, name, info), name))
    # The data area is the tensors' bytes back to back, in any order of names: no gap, no overlap,
    # nothing after the last one. Empty tensors sort before a tensor starting where they sit.
    ranges.sort(key=lambda r: (r[0], r[1]))
    end = 0
    for begin, stop, name in ranges:
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves {begin - end} unused bytes before it"
            raise CheckpointError(
                f"{path}: tensor {short_repr(name)} {what} (data_offsets start at {begin}, not {end})")
        end = stop
    if end > data_len:
        raise CheckpointError(
            f"{path} is truncated: its header needs {end} data bytes but the file has {data_len}",
            hint="download or copy the file again",
        )
    if end < data_len:
        raise CheckpointError(f"{path}: {data_len - end} bytes follow the last tensor's data (corrupt file?)")
    return header


def _parse_header(path: Path, blob: bytes) -> dict[str, Any]:
    try:
        text = blob.decode("utf-8")  # decoded here: json.loads(bytes) would also take UTF-16/32
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a safetensors file (its header is not UTF-8 text)") from None
    if not text.lstrip(_JSON_SPACE).startswith("{"):  # refused before parsing a huge array
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    if _nesting_depth(blob) > MAX_HEADER_DEPTH:  # json.loads recurses once per level
        raise CheckpointError(
            f"{path} is not a safetensors file (its header nests deeper than {MAX_HEADER_DEPTH} levels)")
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not a safetensors file (unreadable header: {exc.msg} at character {exc.pos})") from None
    except _RepeatedKey as exc:
        raise CheckpointError(
            f"{path} is not a safetensors file (its header repeats the key {short_repr(exc.args[0])})") from None
    except (ValueError, RecursionError):  # an integer of over 4300 digits; the depth check makes recursion moot
        raise CheckpointError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    for name in header:
        if not _is_text(name):
            raise CheckpointError(f"{path}: tensor name {short_repr(name)} is not valid Unicode")
    return header


def _check_metadata(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: __metadata__ is {_json_type(meta)}, not an object of strings")
    for k, v in meta.items():
        if not _is_text(k):
            raise CheckpointError(f"{path}: __metadata__ key {short_repr(k)} is not valid Unicode")
        if not _is_text(v):
            what = "not valid Unicode" if isinstance(v, str) else f"{_json_type(v)}, not a string"
            raise CheckpointError(f"{path}: __metadata__ entry {short_repr(k)} is {what}")


def _tensor_range(path: Path, name: str, info: Any) -> tuple[int, int]:
    """``(begin, end)`` of a tensor's bytes in the data area, after checking its header entry."""
    where = f"{path}: header entry for tensor {short_repr(name)}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} is {_json_type(info)}, not an object")
    if info.keys() != _ENTRY_KEYS:
        missing, extra = sorted(_ENTRY_KEYS - info.keys()), sorted(info.keys() - _ENTRY_KEYS)
        raise CheckpointError(f"{where} " + (f"lacks {', '.join(missing)}" if missing
                                              else f"has unknown keys {', '.join(short_repr(k) for k in extra[:3])}"))
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where} has an unknown dtype {short_repr(dtype)}")
    if not (isinstance(shape, list) and all(_is_size(d) for d in shape)):
        raise CheckpointError(f"{where} has a shape that is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)):
        raise CheckpointError(f"{where} has data_offsets that are not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise CheckpointError(f"{where} has data_offsets that end before they begin ({begin} > {end})")
    numel = 1
    for d in shape:  # checked at every step, as the reference does (no overflow hidden by a later 0)
        numel *= d
        if numel > _SIZE_LIMIT:
            raise CheckpointError(f"{where} has a shape too large to hold ({short_repr(shape)})")
    if end - begin != numel * _SAFETENSORS_DTYPES[dtype]:
        raise CheckpointError(f"{where} has data_offsets of {end - begin} bytes but its {dtype} shape "
                              f"{short_repr(shape)} needs {numel * _SAFETENSORS_DTYPES[dtype]}")
    return begin, end


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Repeated keys are refused: json.loads keeps the last, and a name must mean one tensor.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _RepeatedKey(k)
        out[k] = v
    return out


def _nesting_depth(blob: bytes, *, vector_from: int = 1 << 16) -> int:
    """The deepest ``[``/``{`` nesting in JSON text ``blob``, strings skipped: an upper bound on
    how deep json.loads recurses, whether it then succeeds or fails. Linear time; numpy counts
    when there are many brackets (a hostile header can hold 100 MB of them)."""
    # Runs of backslashes pair up left to right as the JSON lexer pairs them; with escaped
    # backslashes and quotes gone, every quote left opens or closes a string.
    tokens = blob.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_TOKEN)
    if len(tokens) >= vector_from:
        return _nesting_depth_np(tokens)
    depth = deepest = 0
    in_string = False
    for c in tokens:
        if c == 34:  # '"'
            in_string = not in_string
        elif not in_string:
            depth += 1 if c in b"[{" else -1
            deepest = max(deepest, depth)
    return deepest


def _nesting_depth_np(tokens: bytes, chunk: int = 1 << 22) -> int:
    import numpy as np

    step = np.zeros(256, np.int8)
    step[list(b"[{")], step[list(b"]}")] = 1, -1
    depth = deepest = quotes = 0
    for i in range(0, len(tokens), chunk):  # in chunks: the cumulative sums are 8 bytes a token
        t = np.frombuffer(tokens, np.uint8, count=min(chunk, len(tokens) - i), offset=i)
        is_quote = t == 34
        in_string = (np.cumsum(is_quote, dtype=np.int64) + quotes) % 2 == 1
        run = np.cumsum(np.where(in_string, 0, step[t]), dtype=np.int64) + depth
        deepest, depth, quotes = max(deepest, int(run.max())), int(run[-1]), quotes + int(is_quote.sum())
    return deepest


def _is_size(x: Any) -> bool:
    return type(x) is int and 0 <= x <= _SIZE_LIMIT  # type(): bool is an int subclass


def _is_text(x: Any) -> bool:
    # JSON escapes can spell lone surrogates; the reference (and UTF-8) refuse them
    return isinstance(x, str) and (x.isascii() or not _SURROGATE.search(x))


def _json_type(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def short_repr(x: Any) -> str:
    """``repr`` of a value from a file, cut short (one line): a hostile header can hold
    megabyte-long names, or names with line breaks."""
    return _SHORT.repr(x)


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
