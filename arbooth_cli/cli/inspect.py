"""`arbooth inspect noise|weights`: the two analyses ARBooth rests on, as tables, JSON and pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import InspectNoiseConfig, InspectWeightsConfig, parse_number_list
from ._options import DeviceOpt, DtypeOpt, PromptModelOpt, SubjectModelOpt
from ._output import EventProgress, get_output

inspect_app = typer.Typer(
    name="inspect", no_args_is_help=True,
    help="Per-scale noise injection and weight-change analyses of a model or a tuned subject.",
)


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")


@inspect_app.command("noise")
def noise_cmd(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt of every image.", show_default=False)],
    model: PromptModelOpt = None,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="A tuned subject by name ('none': none). Default: the subject whose token the prompt contains.")] = None,
    delta: Annotated[Optional[Path], typer.Option("--delta", help="A subject file instead of the store.")] = None,
    scales: Annotated[str, typer.Option("--scales", help="Scales to perturb, numbered from 1 (the 1x1 map): all, or e.g. 1,2,5-8.")] = "all",
    mode: Annotated[str, typer.Option("--mode", help="random: bits replaced by random bits; flip: bits flipped (the tokenizer's bit-flip noise); swap: tokens taken from another seed's run. Each with probability --strength.")] = "random",
    strength: Annotated[float, typer.Option("--strength", "-p", help="Probability P in [0, 1] that a bit (a token, for swap) is perturbed.")] = 1.0,
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Reference images (seeds --seed, --seed+1, ...).")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first reference image.")] = 0,
    features: Annotated[str, typer.Option("--features", help="Feature distance: auto (DINO, else CLIP, if their weights are on this machine; else the tokenizer's), tokenizer, dino, clip.")] = "auto",
    feature_weights: Annotated[Optional[Path], typer.Option("--feature-weights", help="Folder of DINO or CLIP weights (config.json + model.safetensors).")] = None,
    cfg: Annotated[Optional[str], typer.Option("--cfg", help="Guidance: a number or one per scale (default: the model's).")] = None,
    tau: Annotated[Optional[str], typer.Option("--tau", help="Temperature: a number or one per scale (default: the model's).")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Top-p per bit (default: the model's).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="A size of the model (default: the model's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images sampled together, the reference included; 0: as many as fit.")] = 0,
    thumb: Annotated[int, typer.Option("--thumb", help="Width of each picture in the grid, px.")] = 256,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for noise.json, noise-grid.png and noise-plot.png.")] = Path("arbooth-inspect"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the report files of an earlier run in --out.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    compile_: Annotated[str, typer.Option("--compile", help="CUDA graphs and compiled kernels on a GPU: auto (on from 64 images), on, off.")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Perturb one scale's token map at a time and measure how much the final image changes.

    For each seed a reference is sampled, then again for each chosen scale with the same random
    stream but that scale's bits perturbed; later scales continue from the perturbed state. The
    table gives, per scale, the mean +/- std over seeds of pixel L1, PSNR, SSIM and a feature
    distance. Writes noise.json, noise-grid.png (rows: reference, then scales; columns: seeds)
    and noise-plot.png (distance against scale). See docs/inspect.md.

    Examples:\n
      arbooth inspect noise "a photo of a dog" --seeds 4\n
      arbooth inspect noise "sks dog on a wave" --mode flip -p 0.3 --scales 1-6 --json
    """
    from ..jobs.inspect_noise import inspect_noise

    o = get_output(ctx)
    config = InspectNoiseConfig(
        prompt=prompt, model=model, subject=subject, delta=str(delta) if delta is not None else None,
        scales=scales, mode=mode, strength=strength, seeds=seeds, seed=seed, features=features,
        feature_weights=str(feature_weights) if feature_weights is not None else None,
        cfg=parse_number_list(cfg, "--cfg") if cfg else None, tau=parse_number_list(tau, "--tau") if tau else None,
        top_p=top_p, size=size, batch_size=batch_size, thumb=thumb, out_dir=str(out), overwrite=overwrite,
        device=device, dtype=dtype, compile=compile_,  # type: ignore[arg-type]
    ).validate()
    with _Progress(o) as progress:
        report = inspect_noise(config, on_event=progress.event)
    if json_:
        o.json(report.to_dict())
        return
    o.result(noise_table(report))
    o.note(f"features: {report.features}; {report.samples} images in {report.seconds:.1f} s")
    for path in report.files.values():
        o.result(path)


def _pm(s: dict[str, float], fmt: str) -> str:
    return f"{s['mean']:{fmt}}±{s['std']:{fmt}}"


def noise_table(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=f"{report.model}: {report.mode} p={report.strength:g}, {len(report.seeds)} seeds, "
                    f"\"{report.prompt}\"", box=box.SIMPLE_HEAD,
              caption="mean±std over seeds. L1: mean pixel difference (0-1); PSNR in dB; feature: 1 - cosine "
                      f"of {report.features}. The share of bits each perturbation changed is in --json.")
    for col in ("scale", "size", "tokens", "L1", "PSNR", "SSIM", "feature"):
        t.add_column(col, justify="right", no_wrap=True)
    for sc in report.scales:
        s = sc.summary()
        t.add_row(str(sc.scale), f"{sc.height}x{sc.width}", str(sc.tokens), _pm(s["l1"], ".3f"),
                  _pm(s["psnr"], ".1f"), _pm(s["ssim"], ".3f"), _pm(s["feature"], ".3f"))
    return t


@inspect_app.command("weights")
def weights_cmd(
    ctx: typer.Context,
    subject: Annotated[str, typer.Argument(help="A stored subject's name, or a subject file (.safetensors).", show_default=False)],
    model: SubjectModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for weights.json and weights-chart.png.")] = Path("arbooth-inspect"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the report files of an earlier run in --out.")] = False,
    device: DeviceOpt = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """How far tuning moved each tensor: |w' - w| / |w| per module type and per block.

    Writes weights.json (every tensor) and weights-chart.png (per type, and per block by type).

    Examples:\n
      arbooth inspect weights sks\n
      arbooth inspect weights ./sks.safetensors --json | jq '.by_type'
    """
    from ..jobs.inspect_weights import inspect_weights

    o = get_output(ctx)
    config = InspectWeightsConfig(subject=subject, model=model, out_dir=str(out), overwrite=overwrite,
                                  device=device).validate()
    report = inspect_weights(config)
    if json_:
        o.json(report.to_dict())
        return
    o.result(weights_table(report))
    for path in report.files.values():
        o.result(path)


def weights_table(report: Any) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=f"subject {report.subject!r} against {report.model}", box=box.SIMPLE_HEAD,
              caption="relative: ||w' - w|| / ||w|| over the type's tensors; per tensor: its mean over "
                      "tensors; elementwise: mean |w' - w| / |w| (the official script's measure)")
    for col in ("module type", "tensors", "weights", "relative", "per tensor", "elementwise"):
        t.add_column(col, justify="right", no_wrap=True)
    for group, g in report.by_type.items():
        t.add_row(group, str(g.tensors), f"{g.numel:,}", f"{g.relative:.2e}", f"{g.mean_relative:.2e}",
                  f"{g.elementwise:.2e}")
    return t


class _Progress(EventProgress):
    task: Any = None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if kind == "loaded":
            self.out.note(f"{data['model']} on {data['device']} ({data['dtype']})")
        elif kind == "plan":
            self.out.note(f"{data['scales']} scales x {data['seeds']} seeds, batches of {data['batch']}; "
                          f"features: {data['features']}")
            self.task = self.bar.add_task("images", total=data["samples"])
        elif kind == "sample" and self.task is not None:
            self.bar.update(self.task, completed=data["done"])
