"""`arbooth eval`: how well a tuned subject is personalized, as a table or one JSON document."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import EvalConfig, parse_prune
from ._options import CfgUntilScaleOpt, DeviceOpt, DtypeOpt, FastOpt, PruneOpt, SkipScalesOpt, SubjectModelOpt
from ._output import EventProgress, get_output


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def eval_cmd(
    ctx: typer.Context,
    subject: Annotated[str, typer.Argument(help="A stored subject's name or token, or a subject file (.safetensors).", show_default=False)],
    model: SubjectModelOpt = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="Prompts naming the subject's token, one a line (# comments); they replace the built-in ones.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Images per prompt: seeds 0 .. N-1.")] = 8,
    photos: Annotated[Optional[Path], typer.Option("--photos", help="The subject's photos (default: the folder it was tuned on).")] = None,
    dino: Annotated[Optional[Path], typer.Option("--dino", help="Real models: DINO ViT-S/16 weights folder (default: the Hugging Face cache).")] = None,
    clip: Annotated[Optional[Path], typer.Option("--clip", help="Real models: CLIP ViT-B/32 weights folder with its tokenizer (default: the Hugging Face cache).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write a grid PNG per image set and report.json here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the report files of an earlier run in --out.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images sampled together; 0: automatic.")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    fast: FastOpt = False,
    skip_scales: SkipScalesOpt = None,
    cfg_until_scale: CfgUntilScaleOpt = None,
    prune: PruneOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document on stdout.")] = False,
) -> None:
    """Measure how well a tuned subject is personalized.

    Samples the subject's prompts with the tuned model (seeds 0..N-1), the class prompts with the
    tuned model (drift) and references with the base model, then measures them. On the toy model
    every number is an exact count from the toy world's detectors: subject fidelity, text
    fidelity, base fidelity, drift, diversity. On real models: DINO, CLIP-I, CLIP-T, diversity and
    drift, with DINO and CLIP weights already on this machine. See docs/eval.md.

    Examples:\n
      arbooth eval sks\n
      arbooth eval sks --prompts my-prompts.txt --seeds 4 --out eval-sks\n
      arbooth eval sks --fast            # what the subject keeps with gen --fast\n
      arbooth eval ./dog.safetensors -m infinity-2b --dino ./dino-vits16 --clip ./clip-vit-b32 --json
    """
    from ..jobs.evaluate import evaluate

    o = get_output(ctx)
    config = EvalConfig(
        subject=subject, model=model, photos=_s(photos), prompts_file=_s(prompts_file), seeds=seeds, dino=_s(dino),
        clip=_s(clip), out_dir=_s(out), overwrite=overwrite, batch_size=batch_size, device=device, dtype=dtype,
        fast=fast, skip_scales=skip_scales, cfg_until_scale=cfg_until_scale,
        prune=parse_prune(prune) if prune is not None else None,
    ).validate()
    with _Progress(o) as progress:
        report = evaluate(config, on_event=progress.event)
    if json_:
        o.json(report.to_dict())
        return
    o.result(metrics_table(report))
    o.result(prompts_table(report))
    for row in report.prompts:
        if row.unchecked:
            o.note(f"prompt {row.index + 1}: could not check: {', '.join(row.unchecked)}")
    for note in report.notes:
        o.note(note)
    o.note(f"{report.samples} images in {report.seconds:.1f} s on {report.device}")
    for path in report.files.values():
        o.result(path)


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


LABELS = {"subject_fidelity": "subject fidelity", "text_fidelity": "text fidelity", "base_fidelity": "base fidelity",
          "drift": "drift", "diversity": "diversity", "distinct": "distinct", "dino": "DINO", "clip_i": "CLIP-I",
          "clip_t": "CLIP-T", "pres": "PRES"}


def metrics_table(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    what = (f"a {report.toy_subject}, read from its photos (found again in {report.photo_hits[report.toy_subject]} "
            f"of {report.n_photos})" if report.mode == "toy" else f"{report.n_photos} photos")
    t = Table(title=f"subject {report.subject!r} on {report.model}: {what}, {len(report.seeds)} seeds",
              box=box.SIMPLE_HEAD,
              caption="toy: exact counts from the toy world's detectors; real: DINO / CLIP cosines (docs/eval.md)")
    for col, justify in (("metric", "left"), ("value", "right"), ("of", "right"), ("what it measures", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for key, m in report.metrics.items():
        if m.value is None:
            value = "-"
        elif m.std is not None:
            value = f"{m.value:.3f}±{m.std:.3f}"
        else:
            value = f"{m.value:.3f}"
        count = f"{m.hits}/{m.n}" if m.hits is not None else f"{m.n} {m.unit}"
        t.add_row(LABELS.get(key, key), value, count, m.meaning)
    return t


def prompts_table(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    S = len(report.seeds)
    t = Table(title="per prompt", box=box.SIMPLE_HEAD)
    t.add_column("#", justify="right")
    t.add_column("prompt")
    if report.mode == "toy":
        t.caption = (f"hits of {S} seeds. subject / text: tuned model; base: base model; drift: the class "
                     "prompt (tuned model) shows the subject")
        for col in ("subject", "text", "base", "drift", "could not check"):
            t.add_column(col, justify="left" if col == "could not check" else "right")
        for r in report.prompts:
            t.add_row(str(r.index + 1), r.prompt, f"{r.subject_hits}/{S}", f"{r.text_hits}/{S}",
                      f"{r.base_hits}/{S}", f"{r.class_hits}/{S}", ", ".join(r.unchecked) or "-")
    else:
        t.caption = f"means over {S} seeds"
        for col in ("DINO", "CLIP-I", "CLIP-T"):
            t.add_column(col, justify="right")
        for r in report.prompts:
            t.add_row(str(r.index + 1), r.prompt, f"{r.dino:.3f}", f"{r.clip_i:.3f}", f"{r.clip_t:.3f}")
    return t


class _Progress(EventProgress):
    task: Any = None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "skipped":
            self.out.warn(data["message"])
        if self.bar is None:
            return
        if kind == "photos" and data["toy_subject"]:
            self.out.note(f"the photos in {data['folder']} show a {data['toy_subject']} "
                          f"(found again in {data['hits'][data['toy_subject']]} of {data['photos']})")
        elif kind == "loaded":
            self.out.note(f"{data['model']} on {data['device']} ({data['dtype']})")
        elif kind == "plan":
            self.task = self.bar.add_task("images", total=data["samples"])
        elif kind == "sample" and self.task is not None:
            self.bar.update(self.task, completed=data["done"])
        elif kind == "metrics" and data["mode"] == "real":
            self.out.note("measuring with DINO and CLIP")
