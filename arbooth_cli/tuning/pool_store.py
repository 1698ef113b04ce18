"""Prior pools kept for later tunes of the same class: ``<home>/pools/<key>.safetensors``.

Listing and removing read only safetensors headers: no torch import (``arbooth pools list``
stays fast); reading and writing a pool goes through :mod:`tuning.prior`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import paths
from ..checkpoint_io import read_safetensors_header
from ..errors import CheckpointError, NotFoundError

if TYPE_CHECKING:
    from .prior import PriorPool


@dataclass(frozen=True)
class PoolInfo:
    key: str
    path: Path
    size: int  # bytes
    samples: int
    model: str
    class_prompts: list[str]
    created: str

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "path": str(self.path), "size": self.size, "samples": self.samples,
                "model": self.model, "class_prompts": self.class_prompts, "created": self.created}


class PoolStore:
    """Complete prior pools kept under ``<home>/pools/<key>.safetensors`` for later tunes of the
    same class: the key (:func:`pool_key`) covers everything that determines a pool, so a pool
    found under it is bit for bit the one that would be drawn."""

    def __init__(self, root: Path) -> None:
        self.dir = paths.pools_dir(Path(root))

    def path(self, key: str) -> Path:
        return paths.store_entry(self.dir, f"{key}.safetensors", "prior pool")

    def get(self, key: str) -> PriorPool | None:
        """The kept pool of ``key``; None when there is none, or it is damaged (then it is removed:
        the pool is drawn again)."""
        from .prior import load_pool

        path = self.path(key)
        try:
            pool = load_pool(path, key)
        except CheckpointError:
            path.unlink(missing_ok=True)
            return None
        return pool if pool is not None and pool.complete else None

    def put(self, key: str, pool: PriorPool, *, model: str, class_prompts: list[str], created: str) -> Path:
        from .prior import save_pool

        path = self.path(key)
        save_pool(path, pool, key, {"model": model, "class_prompts": json.dumps(class_prompts), "created": created})
        return path

    def list(self) -> list[PoolInfo]:
        out = []
        for f in sorted(self.dir.glob("*.safetensors")) if self.dir.is_dir() else ():
            try:
                header = read_safetensors_header(f)
                meta = header.get("__metadata__", {})
                out.append(PoolInfo(f.stem, f, f.stat().st_size, int(meta.get("done", 0)), meta.get("model", "?"),
                                    json.loads(meta.get("class_prompts", "[]")), meta.get("created", "")))
            except (CheckpointError, OSError, ValueError):
                continue
        return out

    def remove(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"no prior pool {key!r}", hint="run 'arbooth pools list' to see the kept pools")
        path.unlink()
        return path
