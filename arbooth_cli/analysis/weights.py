"""`arbooth inspect weights`: how far tuning moved each tensor from the base model.

Per tuned tensor the relative change ``||w' - w|| / ||w||`` (Frobenius norms) and the official
analysis script's element-wise mean ``mean(|w' - w| / (|w| + eps))``, then both aggregated per
module type (self-attention, cross-attention, FFN, other) and per block. A group's ``relative``
is ``sqrt(sum ||dw||^2) / sqrt(sum ||w||^2)`` over its tensors, so big tensors count by size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import InspectWeightsConfig

GROUPS = ("self-attention", "cross-attention", "FFN", "other")
REPORT_FILES = {"json": "weights.json", "chart": "weights-chart.png"}
#: the official script's guard against division by zero
ELEMENTWISE_EPS = 1e-8

EventFn = Callable[[str, dict[str, Any]], None]


def module_group(local_name: str) -> str:
    """The module type of a parameter, from its name inside a block (or the full name)."""
    parts = local_name.split(".")
    if "sa" in parts:
        return "self-attention"
    if "ca" in parts or "ca_norm" in parts:
        return "cross-attention"
    if "ffn" in parts:
        return "FFN"
    return "other"


@dataclass(frozen=True)
class TensorChange:
    name: str
    block: int | None  # None: outside the blocks
    group: str
    numel: int
    base_norm: float
    delta_norm: float
    elementwise: float  # mean |w' - w| / (|w| + eps)

    @property
    def relative(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm > 0 else (0.0 if self.delta_norm == 0 else math.inf)


def tensor_change(name: str, base: Any, tuned: Any, *, block: int | None, group: str) -> TensorChange:
    """The change of one tensor; both are compared in float64 after ``base`` is cast to the tuned
    tensor's dtype (the precision the tuning started from)."""
    if tuple(base.shape) != tuple(tuned.shape):
        raise ValueError(f"{name}: base {tuple(base.shape)} and tuned {tuple(tuned.shape)} differ")
    w = base.to(tuned.dtype).double().cpu()
    d = tuned.double().cpu() - w
    return TensorChange(name, block, group, int(w.numel()), float(w.norm()), float(d.norm()),
                        float((d.abs() / (w.abs() + ELEMENTWISE_EPS)).mean()) if w.numel() else 0.0)


@dataclass
class GroupChange:
    tensors: int = 0
    numel: int = 0
    relative: float = 0.0
    mean_relative: float = 0.0  # plain mean of the tensors' relative changes
    elementwise: float = 0.0  # element-weighted mean of the official measure


def aggregate(changes: Iterable[TensorChange], key: Callable[[TensorChange], Any]) -> dict[Any, GroupChange]:
    """Changes grouped by ``key`` (e.g. the module type or the block)."""
    buckets: dict[Any, list[TensorChange]] = {}
    for ch in changes:
        buckets.setdefault(key(ch), []).append(ch)
    out = {}
    for k, chs in buckets.items():
        base2 = sum(c.base_norm**2 for c in chs)
        delta2 = sum(c.delta_norm**2 for c in chs)
        numel = sum(c.numel for c in chs)
        out[k] = GroupChange(
            tensors=len(chs), numel=numel,
            relative=math.sqrt(delta2 / base2) if base2 > 0 else 0.0,
            mean_relative=sum(c.relative for c in chs) / len(chs),
            elementwise=sum(c.elementwise * c.numel for c in chs) / numel if numel else 0.0,
        )
    return out


@dataclass
class WeightsReport:
    subject: str
    subject_hash: str
    subject_file: str
    model: str
    model_hash: str
    tensors: list[TensorChange]
    by_type: dict[str, GroupChange]
    by_block: dict[int, GroupChange]
    by_block_and_type: dict[str, dict[str, GroupChange]]  # block -> type -> change
    embedding: dict[str, Any] | None  # shape and RMS of the learned subject vectors
    files: dict[str, str]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    arbooth_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensors"] = [{**asdict(t), "relative": t.relative} for t in self.tensors]
        d["by_block"] = {str(k): v for k, v in d["by_block"].items()}
        return d


def compare(base: Mapping[str, Any], tuned: Mapping[str, Any], block_of: Mapping[str, tuple[int, str]]) -> list[TensorChange]:
    """Every tuned tensor against its base. ``block_of[name] = (block, name inside the block)``."""
    out = []
    for name in sorted(tuned):
        block, local = block_of.get(name, (None, name))
        out.append(tensor_change(name, base[name], tuned[name], block=block, group=module_group(local)))
    return out


def _subject(ref: str) -> Any:
    from ..subjects import SubjectStore, subject_info

    p = Path(ref)
    if p.suffix == ".safetensors" or p.is_file():
        if not p.is_file():
            from ..errors import NotFoundError

            raise NotFoundError(f"subject file {p} does not exist")
        return subject_info(p)
    return SubjectStore().get(ref)


def inspect_weights(config: InspectWeightsConfig, *, on_event: EventFn | None = None,
                    resolved: Any = None) -> WeightsReport:
    """Compare a subject's tensors with its base model's; writes the JSON report and the chart."""
    from ..loading import load_components, pick_device, resolve_model
    from ..sampling.job import check_subject_base

    emit = on_event or (lambda kind, data: None)
    config.validate()
    info = _subject(config.subject)
    resolved = resolved or resolve_model(config.model or info.base_model)
    check_subject_base(info, resolved)
    from ..sampling.writers import prepare_report_dir

    paths = prepare_report_dir(config.out_dir, REPORT_FILES, config.overwrite)

    import torch

    from ..checkpoint_io import sha256_file
    from ..tuning.subject import read_subject_values

    t0 = time.perf_counter()
    device = pick_device(config.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tr = load_components(resolved, device=device, dtype=dtype, roles=("transformer",)).transformer
    emit("loaded", {"model": resolved.spec.name, "device": str(device)})
    params = {n: p.detach() for n, p in tr.named_parameters()}
    block_of: dict[str, tuple[int, str]] = {}
    by_id = {id(p): n for n, p in tr.named_parameters()}
    for i, block in enumerate(tr.blocks):
        for local, p in block.named_parameters():
            block_of[by_id[id(p)]] = (i, local)
    tuned, emb = read_subject_values(info.path, params)
    changes = compare(params, tuned, block_of)
    both: dict[str, dict[str, GroupChange]] = {}
    for (blk, grp), g in aggregate([c for c in changes if c.block is not None], lambda c: (c.block, c.group)).items():
        both.setdefault(str(blk), {})[grp] = g
    report = WeightsReport(
        subject=info.name, subject_hash=sha256_file(info.path), subject_file=str(info.path),
        model=resolved.spec.name, model_hash=resolved.model_hash, tensors=changes,
        by_type={g: v for g, v in sorted(aggregate(changes, lambda c: c.group).items(), key=lambda kv: GROUPS.index(kv[0]))},
        by_block=dict(sorted(aggregate([c for c in changes if c.block is not None], lambda c: c.block).items())),
        by_block_and_type=dict(sorted(both.items(), key=lambda kv: int(kv[0]))),
        embedding=None if emb is None else {"shape": list(emb.shape), "rms": float(emb.float().pow(2).mean().sqrt())},
        files={k: str(p) for k, p in paths.items()}, seconds=0.0, config=config.to_dict(),
    )
    report.seconds = time.perf_counter() - t0
    _write(report, paths, depth=len(tr.blocks))
    return report


def _write(report: WeightsReport, paths: dict[str, Path], depth: int) -> None:
    from PIL import Image

    from ..sampling.writers import write_json, write_png
    from .plots import Series, grouped_bars

    types = [g for g in GROUPS if g in report.by_type]
    top = grouped_bars(["all blocks"], [Series(g, [report.by_type[g].relative]) for g in types],
                       title=f"Relative weight change of subject {report.subject!r} ({report.model})",
                       y_label="||w' - w|| / ||w||", x_label="module type", height=300, min_width=900)
    blocks = [str(b) for b in range(depth)]
    series = [Series(g, [report.by_block_and_type.get(b, {}).get(g, GroupChange()).relative for b in blocks])
              for g in types if g != "other" or any(g in v for v in report.by_block_and_type.values())]
    bottom = grouped_bars(blocks, series, title="per block", y_label="||w' - w|| / ||w||", x_label="block",
                          height=360, min_width=900)
    img = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    img.paste(top, (0, 0))
    img.paste(bottom, (0, top.height))
    meta = {"model": report.model, "model_hash": report.model_hash, "subject": report.subject,
            "subject_hash": report.subject_hash, "arbooth_version": __version__, "analysis": "inspect weights"}
    write_png(paths["chart"], np.asarray(img), meta)
    write_json(paths["json"], report.to_dict())
