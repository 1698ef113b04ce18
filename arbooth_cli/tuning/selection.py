"""Which transformer tensors a tuning run trains: module types and a block range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import MODULE_TYPES, parse_int_ranges

if TYPE_CHECKING:
    from torch import nn

DEFAULT_LAYERS = ("ca", "ffn")


def parse_layers(text: str) -> tuple[str, ...]:
    """``'ca,ffn'`` -> ('ca', 'ffn'); ``'all'`` -> every block module type."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if parts == ("all",):
        return tuple(MODULE_TYPES)
    bad = [p for p in parts if p not in MODULE_TYPES]
    if bad or not parts:
        raise ValueError(f"unknown layer types {bad or [text]}; choose from {', '.join(MODULE_TYPES)} or all")
    return parts


def parse_blocks(text: str, depth: int) -> tuple[int, ...]:
    """``'0-7,12'`` -> (0, 1, ..., 7, 12); ``'all'`` -> every block."""
    if text.strip() == "all":
        return tuple(range(depth))
    try:
        out = parse_int_ranges(text)
    except ValueError:
        raise ValueError(f"cannot read block range {text!r}; write e.g. 0-7,12 or all") from None
    bad = sorted(b for b in out if not 0 <= b < depth)
    if bad or not out:
        raise ValueError(f"blocks {bad or text} are outside 0..{depth - 1}")
    return tuple(sorted(out))


def select_params(model: nn.Module, blocks_list: list[nn.Module], layers: Iterable[str] = DEFAULT_LAYERS,
                  blocks: Iterable[int] | None = None) -> list[str]:
    """Full parameter names of ``model`` to train: the ``layers`` types of the chosen ``blocks``."""
    layers = tuple(layers)
    keys = tuple(k for layer in layers for k in MODULE_TYPES[layer])
    wanted = set(range(len(blocks_list))) if blocks is None else set(blocks)
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    out = []
    for i, block in enumerate(blocks_list):
        if i not in wanted:
            continue
        for local, p in block.named_parameters():
            if local.startswith(keys):
                out.append(names_by_id[id(p)])
    return out
