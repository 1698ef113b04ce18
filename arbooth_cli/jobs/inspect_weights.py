"""`arbooth inspect weights`: compare a subject's tensors with its base model's; writes the JSON
report and the chart (the measures are in ``analysis.weights``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._version import __version__
from ..analysis.weights import GROUPS, GroupChange, WeightsReport, aggregate, compare
from ..config import InspectWeightsConfig
from ..loading import ResolvedModel
from . import session
from .session import EventFn

REPORT_FILES = {"json": "weights.json", "chart": "weights-chart.png"}


def inspect_weights(config: InspectWeightsConfig, *, on_event: EventFn | None = None,
                    resolved: ResolvedModel | None = None) -> WeightsReport:
    """Compare a subject's tensors with its base model's; writes the JSON report and the chart."""
    emit = on_event or session.no_events
    config.validate()
    info = session.subject_by_reference(config.subject)
    resolved = session.resolve(config.model, [info], resolved=resolved)
    session.check_device(config.device)
    paths = session.prepare_report_dir(config.out_dir, REPORT_FILES, config.overwrite)

    from ..subjects.use import read_subject_values

    t0 = time.perf_counter()
    tr = session.open_model(resolved, config.device, "auto", emit, roles=("transformer",)).transformer
    params = {n: p.detach() for n, p in tr.named_parameters()}
    block_of: dict[str, tuple[int, str]] = {}
    by_id = {id(p): n for n, p in tr.named_parameters()}
    for i, block in enumerate(tr.blocks):
        for local, p in block.named_parameters():
            block_of[by_id[id(p)]] = (i, local)
    subject_hash = session.verified_hash(info)  # a damaged subject is refused here as gen refuses it
    tuned, emb = read_subject_values(info.path, params)
    changes = compare(params, tuned, block_of)
    both: dict[str, dict[str, GroupChange]] = {}
    for (blk, grp), g in aggregate([c for c in changes if c.block is not None], lambda c: (c.block, c.group)).items():
        both.setdefault(str(blk), {})[grp] = g
    report = WeightsReport(
        subject=info.name, subject_hash=subject_hash, subject_file=str(info.path),
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
    from ..analysis.plots import Series, grouped_bars

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
