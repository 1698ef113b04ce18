"""`arbooth gen`: prompts in, PNG files with provenance out."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import GenConfig, PromptJob, parse_number_list, parse_prune, read_gen_file, read_prompts_file
from ._options import CfgUntilScaleOpt, DeviceOpt, DtypeOpt, FastOpt, PromptModelOpt, PruneOpt, SkipScalesOpt
from ._output import EventProgress, Output, get_output


def register(app: typer.Typer) -> None:
    app.command("gen")(gen_cmd)


def gen_cmd(
    ctx: typer.Context,
    prompt: Annotated[Optional[list[str]], typer.Argument(help="Prompts; each gets -n images.")] = None,
    model: PromptModelOpt = None,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="A tuned subject by name ('none': no subject). Default: the subject whose token the prompt contains.")] = None,
    delta: Annotated[Optional[Path], typer.Option("--delta", help="A subject file (from 'arbooth subjects export') to use instead of the store.")] = None,
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images per prompt (seeds seed, seed+1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first image of each prompt.")] = 0,
    cfg: Annotated[Optional[str], typer.Option(help="Guidance on logits: a number, or one per scale (e.g. 4,4,3,3,...). Default: the model's.")] = None,
    tau: Annotated[Optional[str], typer.Option(help="Temperature: a number or one per scale. Default: the model's.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Top-k per bit (0 keeps all).")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Top-p per bit. Default: the model's (0.97).")] = None,
    size: Annotated[Optional[str], typer.Option(help="A size of the model (its default if not given): for Infinity 1M (1024x1024 at 1:1), 0.25M or 0.06M; toy has one, 'toy' (64x64).")] = None,
    aspect: Annotated[str, typer.Option(help="Aspect as W:H (16:9) or h/w (0.5625), matched to the model's templates.")] = "1:1",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images sampled together.")] = 1,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("arbooth-out"),
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="A file of prompts: one a line, or JSON lines with per-line seed, n, cfg, tau, top_k, top_p, size, aspect, skip_scales, cfg_until_scale, prune.")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Also write grid.png, a contact sheet of all images.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files of the same name.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Keep files already there and make only the missing ones (resume).")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    rng_stream: Annotated[str, typer.Option("--rng-stream", help="per-image: an image depends only on its seed; batch: one draw per scale for the batch, as the official sampler.")] = "per-image",
    compile_: Annotated[str, typer.Option("--compile", help="CUDA graphs and compiled kernels on a GPU (about 2.5x faster after a first call of about 50 s): auto (on for 64 images or more), on, off.")] = "auto",
    skip_scales: SkipScalesOpt = None,
    cfg_until_scale: CfgUntilScaleOpt = None,
    prune: PruneOpt = None,
    fast: FastOpt = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 4) instead of warning when a prompt or setting is one the model cannot draw (e.g. words outside the toy world).")] = False,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="A TOML file of these settings (keys as the option names, e.g. seed = 3, prune = \"9:0.4,10:0.5\", prompts = \"p.txt\"); options given here win.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON line per image on stdout.")] = False,
) -> None:
    """Generate images from prompts.

    File names are deterministic (NNNN-prompt-words-SEED.png) and carry the prompt, seed, model and
    its hash and every setting in PNG text chunks. Under torchrun the work is split across GPUs and
    the same files are written.

    Examples:\n
      arbooth gen "a red star on the left, blue background" -n 4 --grid\n
      arbooth gen "sks dog on a wave"   (after arbooth tune ./photos --token sks --class dog)\n
      arbooth gen --prompts prompts.txt --out run1 --json | jq -r .path\n
      torchrun --nproc-per-node 2 -m arbooth_cli gen --prompts prompts.jsonl --out run2
    """
    from ..jobs.gen import generate

    out_ = get_output(ctx)
    settings: dict[str, Any] = dict(
        model=model, subject=subject, delta=str(delta) if delta is not None else None,
        num_images=num_images, seed=seed,
        cfg=parse_number_list(cfg, "--cfg") if cfg else None,
        tau=parse_number_list(tau, "--tau") if tau else None,
        top_k=top_k, top_p=top_p, size=size, aspect=aspect, batch_size=batch_size, out_dir=str(out),
        grid=grid, overwrite=overwrite, skip_existing=skip_existing, device=device, dtype=dtype,
        stream=rng_stream, compile=compile_, strict=strict, skip_scales=skip_scales,
        cfg_until_scale=cfg_until_scale, prune=parse_prune(prune) if prune is not None else None, fast=fast,
        prompts_file=prompts_file,
    )
    if config_file is not None:  # the file's settings where the command line gives none
        param = {"out_dir": "out", "stream": "rng_stream", "compile": "compile_"}
        for key, value in read_gen_file(config_file).items():
            # by name: typer may bring its own copy of click's ParameterSource enum
            if getattr(ctx.get_parameter_source(param.get(key, key)), "name", None) != "COMMANDLINE":
                settings[key] = value
    jobs = [PromptJob(prompt=p) for p in (prompt or [])]
    prompts_path = settings.pop("prompts_file")
    if prompts_path is not None:
        jobs += read_prompts_file(prompts_path)
    config = GenConfig(prompts=tuple(jobs), **settings).validate()
    # Each image's line goes out (flushed) as soon as its file is written, so a killed or still
    # running job has a record of every file it wrote. While the progress bar is drawn on a terminal,
    # rich sends sys.stdout to stderr (above the bar): that is right when stdout is that terminal,
    # but a piped or redirected stdout must get its lines itself.
    stdout = sys.stdout

    def show(rec: Any) -> None:
        with contextlib.redirect_stdout(sys.stdout if stdout.isatty() else stdout):
            if json_:
                out_.json({"path": rec.path, **rec.metadata})
            else:
                print(rec.path, flush=True)

    with _GenProgress(out_, show) as progress:
        result = generate(config, on_event=progress.event)
    if result.grid and not json_:
        out_.result(result.grid)


#: jobs of more images than this say how many before they start, and how long, once the first
#: ESTIMATE_AFTER images (after the first) have set the pace
PLAN_NOTE_IMAGES = 1000
ESTIMATE_AFTER = 8


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds + 0.5), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


class _GenProgress(EventProgress):
    """Each image's result as it is written (``show``); images (and, for big jobs, scales) on stderr."""

    def __init__(self, out: Output, show: Callable[[Any], None]) -> None:
        super().__init__(out)
        self.show = show
        self.total = 0
        self.written = 0
        self.first_at: float | None = None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "warning":
            self.out.warn(data["message"])
        elif kind == "subject":
            self.out.note(f"subject {data['name']!r} in {data['images']} images ({data['why']}; --subject none "
                          "draws without it)")
        if kind == "image":
            self.show(data["record"])
            self._estimate()
        elif kind == "plan":
            self.total = data["total"]
            if self.total > PLAN_NOTE_IMAGES:
                share = f" (this process's share of {data['all']})" if data["world"] > 1 else ""
                self.out.note(f"{self.total} images to draw{share}; the time they take follows the first ones")
        if self.bar is None:
            return
        if kind == "plan":
            self.images = self.bar.add_task("images", total=data["total"])
            self.scales = self.bar.add_task("scales", total=None, visible=False)
        elif kind == "loaded":
            self.out.note(f"{data['model']} on {data['device']} ({data['dtype']})")
        elif kind == "scale":
            self.bar.update(self.scales, completed=data["index"] + 1, total=data["scales"], visible=True)
        elif kind == "image":
            self.bar.advance(self.images)

    def _estimate(self) -> None:
        """For a large job, once the first images set the pace: how long the whole job will take."""
        import time

        self.written += 1
        if self.total <= PLAN_NOTE_IMAGES:
            return
        if self.first_at is None:
            self.first_at = time.monotonic()  # the first image paid for loading and warm-up
        elif self.written == 1 + ESTIMATE_AFTER:
            per_image = (time.monotonic() - self.first_at) / ESTIMATE_AFTER
            self.out.note(f"about {_duration(per_image * (self.total - self.written))} left for "
                          f"{self.total - self.written} images at {per_image:.2f} s an image")
