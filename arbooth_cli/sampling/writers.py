"""PNG files with their provenance, written atomically, and contact sheets."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_file_atomic, write_text_atomic

#: what to do when an output folder is full or not writable
OUT_HINT = "free some disk space, or choose another --out directory"

#: PNG text chunks every image carries (besides "parameters" and "arbooth")
CHUNK_KEYS = ("prompt", "seed", "model", "model_hash", "subject", "subject_hash", "arbooth_version")


def slug(text: str, limit: int = 48) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = "-".join(words)[:limit].strip("-")
    return out or "image"


def image_filename(prompt_index: int, prompt: str, seed: int) -> str:
    """Deterministic: the same job writes the same names, on one GPU or many."""
    return f"{prompt_index:04d}-{slug(prompt)}-{seed}.png"


def a1111_parameters(meta: Mapping[str, Any]) -> str:
    """The ``parameters`` text chunk that common image tools read."""
    fields = [
        ("Steps", meta.get("scales")),
        ("Sampler", "arbooth next-scale"),
        ("CFG scale", meta.get("cfg")),
        ("Temperature", meta.get("tau")),
        ("Top p", meta.get("top_p")),
        ("Top k", meta.get("top_k")),
        ("Seed", meta.get("seed")),
        ("Size", f"{meta.get('width')}x{meta.get('height')}"),
        ("Model", meta.get("model")),
        ("Model hash", str(meta.get("model_hash", ""))[:10]),
        ("Subject", meta.get("subject")),
        ("Version", f"arbooth {meta.get('arbooth_version')}"),
    ]
    return meta.get("prompt", "") + "\n" + ", ".join(f"{k}: {v}" for k, v in fields if v not in (None, ""))


def write_png(path: Path, img_HW3: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Write an RGB uint8 image with its metadata; a temp file renamed into place (never half-written)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key in CHUNK_KEYS:
        if meta.get(key) is not None:
            info.add_text(key, str(meta[key]))
    info.add_text("parameters", a1111_parameters(meta))
    info.add_text("arbooth", json.dumps(dict(meta), sort_keys=True, default=str))
    write_file_atomic(path, lambda tmp: Image.fromarray(img_HW3, mode="RGB").save(tmp, format="PNG", pnginfo=info),
                      hint=OUT_HINT)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temp file renamed into place."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", hint=OUT_HINT)


def read_png_metadata(path: Path) -> dict[str, Any]:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["arbooth"])


def contact_sheet(paths: Sequence[Path], columns: int, out: Path, meta: Mapping[str, Any]) -> Path:
    """Tile images into one PNG (rows of ``columns``), at the size of the first image."""
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    w, h = ims[0].size
    rows = -(-len(ims) // columns)
    sheet = Image.new("RGB", (w * min(columns, len(ims)), h * rows), "white")
    for i, im in enumerate(ims):
        sheet.paste(im.resize((w, h)), ((i % columns) * w, (i // columns) * h))
    write_png(out, np.asarray(sheet), meta)
    return out
