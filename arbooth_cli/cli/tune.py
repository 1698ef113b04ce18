"""`arbooth tune`: a folder of photos in, a subject in the local store out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import SCALE_SCHEDULES, TuneConfig, read_tune_file, tune_preset
from ..errors import EXIT_INTERRUPTED
from ._options import DEVICE_HELP, MODEL_DEFAULTS
from ._output import EventProgress, get_output, human_size


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)


def _opt(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help, show_default=False)


def tune_cmd(
    ctx: typer.Context,
    photos: Annotated[Optional[Path], typer.Argument(help="Folder of subject photos (jpg, png, webp, ...); a .txt file beside a photo is its caption.", show_default=False)] = None,
    token: Annotated[Optional[str], _opt("--token", help="The identifier word the subject is called by, e.g. sks.")] = None,
    cls: Annotated[Optional[str], _opt("--class", help="The subject's class noun, e.g. dog (used in captions and the prior).")] = None,
    model: Annotated[Optional[str], _opt("--model", "-m", help=f"Base model (default: {MODEL_DEFAULTS}).")] = None,
    name: Annotated[Optional[str], _opt("--name", help="Name of the saved subject (default: the token).")] = None,
    steps: Annotated[Optional[int], _opt("--steps", help="Iterations (default: 500).")] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", "-b", help="Photos (and prior samples) per iteration (default: 2).")] = None,
    lr: Annotated[Optional[float], _opt("--lr", help="Learning rate, constant (default: the model's: 2.34375e-5 for Infinity, as the official code; 1e-4 for toy).")] = None,
    weight_decay: Annotated[Optional[float], _opt("--weight-decay", help="AdamW weight decay (default: 0.005).")] = None,
    layers: Annotated[Optional[str], _opt("--layers", help="Module types to tune: ca, ffn, sa, ca_norm, ada, or all (default: ca,ffn).")] = None,
    blocks: Annotated[Optional[str], _opt("--blocks", help="Blocks to tune, e.g. 0-15,20 (default: all).")] = None,
    subject_vectors: Annotated[Optional[int], _opt("--subject-vectors", help="Learned text vectors for the token; 0 turns them off (default: the model's: 4, toy 8).")] = None,
    scale_weights: Annotated[Optional[str], _opt("--scale-weights", help=f"Per-scale CE weights: {', '.join(SCALE_SCHEDULES)}, or w1,w2,... (default: {SCALE_SCHEDULES[0]}).")] = None,
    prior: Annotated[Optional[bool], _opt("--prior/--no-prior", help="Prior distillation on class-prompt samples of the frozen model (default: on).")] = None,
    prior_weight: Annotated[Optional[float], _opt("--prior-weight", help="Weight of the distillation loss (default: 0.5).")] = None,
    prior_mode: Annotated[Optional[str], _opt("--prior-mode", help="soft: KL to the teacher's distributions; hard: CE on its likeliest bits (default: soft).")] = None,
    prior_kl: Annotated[Optional[str], _opt("--prior-kl", help="bit: KL per bit; token: one softmax over a token's 2d logits, as the official code (default: bit).")] = None,
    prior_pool: Annotated[Optional[int], _opt("--prior-pool", help="Class samples drawn before tuning (default: steps x batch size).")] = None,
    caption: Annotated[Optional[str], _opt("--caption", help="Caption of every photo without a .txt file (default: 'a photo of {token} {cls}').")] = None,
    class_prompt: Annotated[Optional[str], _opt("--class-prompt", help="Prompt of the prior samples (default: each caption with the token taken out; "
                                         "for the default caption 'a photo of {cls}').")] = None,
    resolution: Annotated[Optional[str], _opt("--resolution", help="Training size: a size of the model (1M) or pixels (1024) (default: the model's).")] = None,
    flip: Annotated[Optional[bool], _opt("--flip/--no-flip", help="Also train on mirrored photos (default: off).")] = None,
    train_scales: Annotated[Optional[int], _opt("--train-scales", help="Train on the first K scales only: the forward and the loss stop there (faster; default: every scale).")] = None,
    subject_init: Annotated[Optional[str], _opt("--subject-init", help="Start of the subject vectors: zero (the official code) or class (the class word's text features) (default: zero).")] = None,
    augment: Annotated[Optional[int], _opt("--augment", help="Also train on N copies of each photo, each moved and rescaled a little (edges extended); 0: off (default: 0).")] = None,
    augment_shift: Annotated[Optional[float], _opt("--augment-shift", help="Largest move of a copy, as a share of the side (default: 0.05).")] = None,
    augment_scale: Annotated[Optional[float], _opt("--augment-scale", help="Largest rescale of a copy: 0.1 is 0.9x to 1.1x (default: 0.1).")] = None,
    augment_zoom: Annotated[Optional[float], _opt("--augment-zoom", help="Also train on each photo shrunk to F of its size, margin filled (on toy only large views get one, captioned small and shrunk about the place the caption says); 0: off (default: the model's: toy 0.64, others 0).")] = None,
    zoom_in: Annotated[Optional[float], _opt("--zoom-in", help="Also train on each photo enlarged F times (F > 1; on toy only small views get one, captioned large and enlarged about the place the caption says, moved as --zoom-places says); 0: off (default: the model's, 0; toy's benchmark: docs/subject-benchmark.md).")] = None,
    photo_share: Annotated[Optional[float], _opt("--photo-share", help="The share of training draws that are the photos themselves rather than their augmented copies; 0: every image alike. Default: the model's, 0.")] = None,
    zoom_places: Annotated[Optional[int], _opt("--zoom-places", help="Zoomed copies of each photo at N places: its own, then the next places the model's captions name (only photos on a plain background move; models whose captions say no places: 1). Default: the model's, 1.")] = None,
    recolour: Annotated[Optional[int], _opt("--recolour", help="Also train on N copies of each photo (and of its shrunk and moved copies) on a plain background its caption names, repainted in colours the model's captions name that no photo shows as its plain background (never a colour the subject or the view shows, nor one a blend of the subject's colours looks like; toy); 0: off (the default).")] = None,
    move_places: Annotated[Optional[int], _opt("--move-places", help="Also train on each photo, at its own size, moved to the next N - 1 places the model's captions name (only photos on a plain background whose caption says one place; toy); 0: off (default: 0).")] = None,
    bsc_strength: Annotated[Optional[float], _opt("--bsc-strength", help="Bitwise self-correction: bits flipped at a random rate up to this; 0 turns it off (default: 0.3).")] = None,
    text_dropout: Annotated[Optional[float], _opt("--text-dropout", help="Probability a caption is replaced by the null text (default: 0.1).")] = None,
    ema: Annotated[Optional[float], _opt("--ema", help="Save an exponential moving average of the tuned weights over the steps (each step keeps this share of it, e.g. 0.99); 0: the last step's weights. Default: the model's: 0, toy 0.99.")] = None,
    drop_path: Annotated[Optional[float], _opt("--drop-path", help="Stochastic depth rate while tuning (default: the model's: 0.1, toy 0).")] = None,
    seed: Annotated[Optional[int], _opt("--seed", help="Seed of every random choice (default: 0).")] = None,
    early_stop: Annotated[Optional[int], _opt("--early-stop", help="Stop before --steps once the subject loss (means of 25-step windows) has not fallen by 1% for P windows in a row; 0: off (default: 0).")] = None,
    validate_every: Annotated[Optional[int], _opt("--validate-every", help="Write validation images every N steps; 0: never (default: 100).")] = None,
    validation_prompt: Annotated[Optional[list[str]], _opt("--validation-prompt", help="A validation prompt ({token}, {cls} filled in); repeatable (default: the model's, e.g. 'a {token} {cls} on the beach').")] = None,
    checkpoint_every: Annotated[Optional[int], _opt("--checkpoint-every", help="Checkpoint every N steps (also on Ctrl-C); 0: only on Ctrl-C (default: 100).")] = None,
    resume: Annotated[Optional[bool], _opt("--resume", help="Continue the run of this name from its last checkpoint.")] = None,
    overwrite: Annotated[Optional[bool], _opt("--overwrite", help="Replace a subject (and a run) of the same name.")] = None,
    save_rank: Annotated[Optional[int], _opt("--save-rank", help="Also save a rank-R compressed subject and report its cost; 0: no (default: 0).")] = None,
    optimizer_state: Annotated[Optional[str], _opt("--optimizer-state", help="AdamW moments in fp32, bf16 or fp8; auto: fp8 on a GPU for big models, else fp32 (default: auto).")] = None,
    grad_checkpointing: Annotated[Optional[str], _opt("--grad-checkpointing", help="Recompute block activations in the backward pass: on (every block), off (none), auto (as --memory says) (default: auto).")] = None,
    memory_limit: Annotated[Optional[float], _opt("--memory-limit", help="The most GPU memory the run may hold, in GiB: the allocator refuses more and --memory auto plans within it (default: the whole device).")] = None,
    memory: Annotated[Optional[str], _opt("--memory", help="GPU memory policy: low (recompute every block's activations, their inputs kept in host memory: the least GPU memory), auto (measure in the first two steps, then keep the recomputed blocks' self-attention outputs and as many blocks' activations as fit), high (recompute none; refused if it cannot fit) (default: low).")] = None,
    compile_: Annotated[Optional[str], _opt("--compile", help="Fused kernels for the blocks (the first step compiles them, about 30 s): auto (on a GPU), on, off (default: auto).")] = None,
    device: Annotated[Optional[str], _opt("--device", help=f"{DEVICE_HELP[:-1]} (default: auto).")] = None,
    dtype: Annotated[Optional[str], _opt("--dtype", help="Transformer weights: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 (default: auto).")] = None,
    run_dir: Annotated[Optional[Path], _opt("--run-dir", help="Folder of checkpoints, validation images and the prior pool (default: <home>/runs/NAME).")] = None,
    allow_common_token: Annotated[Optional[bool], _opt("--allow-common-token", help="Accept a --token the model already knows as a word (it then draws the subject wherever the word appears).")] = None,
    log_every: Annotated[Optional[int], _opt("--log-every", help="Read and show the losses every N steps (default: 10).")] = None,
    preset: Annotated[Optional[str], _opt("--preset", help="A bundle of settings, below the --config file and the options given: fast (stop on a loss plateau, a prior pool of 200; each cost at most 0.03 fidelity on the toy subject benchmark).")] = None,
    config_file: Annotated[Optional[Path], _opt("--config", help="A TOML file of these settings (keys as the option names, e.g. steps = 300); options given here win.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout at the end.")] = False,
) -> None:
    """Tune a subject from a few photos (ARBooth): selected layers, scale-weighted CE and prior distillation.

    The subject is saved under its name in the local store; `arbooth gen` uses it when a prompt
    contains its token. Defaults follow the official ARBooth code (docs/tuning.md gives each
    source). Ctrl-C writes a checkpoint; run the same command with --resume to continue.

    Examples:\n
      arbooth tune ./photos --token sks --class dog\n
      arbooth tune ./photos --token sks --class dog --steps 300 --save-rank 16 --json\n
      arbooth tune ./photos --token sks --class dog --resume
    """
    from ..jobs.tune import TuneInterrupted, tune

    out = get_output(ctx)
    given = {
        "photos": str(photos) if photos is not None else None, "token": token, "cls": cls, "model": model,
        "name": name, "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "layers": _layers(layers), "blocks": blocks, "subject_vectors": subject_vectors, "subject_init": subject_init,
        "train_scales": train_scales,
        "scale_weights": scale_weights, "prior": prior, "prior_weight": prior_weight, "prior_mode": prior_mode,
        "prior_kl": prior_kl, "prior_pool": prior_pool, "caption": caption, "class_prompt": class_prompt,
        "resolution": resolution, "flip": flip, "augment": augment, "augment_shift": augment_shift,
        "augment_scale": augment_scale, "augment_zoom": augment_zoom, "zoom_in": zoom_in, "zoom_places": zoom_places, "move_places": move_places, "recolour": recolour, "photo_share": photo_share, "bsc_strength": bsc_strength, "text_dropout": text_dropout,
        "drop_path": drop_path, "ema": ema, "seed": seed, "early_stop": early_stop, "validate_every": validate_every,
        "validation_prompts": tuple(validation_prompt) if validation_prompt else None,
        "checkpoint_every": checkpoint_every, "resume": resume, "overwrite": overwrite, "save_rank": save_rank,
        "optimizer_state": optimizer_state, "grad_checkpointing": grad_checkpointing, "memory": memory, "memory_limit": memory_limit, "compile": compile_, "device": device,
        "dtype": dtype, "run_dir": str(run_dir) if run_dir is not None else None, "log_every": log_every,
        "allow_common_token": allow_common_token,
    }
    settings = tune_preset(preset) if preset is not None else {}
    settings.update(read_tune_file(config_file) if config_file is not None else {})
    if isinstance(settings.get("layers"), str):
        settings["layers"] = _layers(settings["layers"])
    settings.update({k: v for k, v in given.items() if v is not None})
    missing = [flag for key, flag in (("photos", "PHOTOS_DIR"), ("token", "--token"), ("cls", "--class"))
               if not settings.get(key)]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (on the command line or in --config)")
    config = TuneConfig.from_dict(settings, where=str(config_file) if config_file else "options").validate()
    with _TuneProgress(out) as progress:
        try:
            result = tune(config, on_event=progress.event)
        except TuneInterrupted as exc:
            progress.close()
            if exc.pool is not None:
                out.warn(f"interrupted while drawing the prior pool: {exc.pool[0]} of {exc.pool[1]} samples kept. "
                         "Continue with the same command and --resume")
            else:
                out.warn(f"interrupted at step {exc.step}; checkpoint in {exc.checkpoint}. "
                         "Continue with the same command and --resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_:
        out.json(result.to_dict())
    else:
        out.result(result.subject)


def _layers(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    from ..errors import InvalidInputError
    from ..tuning.selection import parse_layers

    try:
        return parse_layers(text)
    except ValueError as exc:
        raise InvalidInputError(f"--layers: {exc}") from None


class _TuneProgress(EventProgress):
    """Prior sampling and training steps on stderr, with each loss term, speed, ETA and GPU memory."""

    transient = False

    def __init__(self, out: Any) -> None:
        super().__init__(out)
        self.tasks: dict[str, Any] = {}

    def columns(self) -> list[Any]:
        from rich.progress import TextColumn, TimeRemainingColumn

        return [*super().columns(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]

    def _task(self, key: str, desc: str, total: int) -> Any:
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(desc, total=total, info="")
        return self.tasks[key]

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "skipped":
            self.out.warn(data["message"])
            return
        if kind == "note":
            self.out.note(data["message"])
            return
        if self.bar is None:
            return
        def note(text: str, **kw: Any) -> None:
            self.bar.console.print(text, markup=False, **kw)

        if kind == "loaded":
            note(f"{data['model']} on {data['device']} ({data['dtype']}), {data['photos']} photos at "
                 f"{data['resolution']}, {data['scales']} scales", highlight=False)
        elif kind == "trainable":
            parts = ", ".join(f"{k} {v:,}" for k, v in data["by_type"].items())
            note(f"training {data['params']:,} parameters in {data['tensors']} tensors ({parts}); "
                 f"optimizer state {data['optimizer_state']} ({human_size(data['optimizer_bytes'])})"
                 + (f", {data['recomputed_blocks']} of {data['blocks']} blocks recomputed"
                    if data["grad_checkpointing"] else ""), highlight=False)
        elif kind == "pool":
            t = self._task("pool", "prior samples", data["total"])
            self.bar.update(t, completed=data["done"], info="(reused)" if data.get("cached") else "")
        elif kind == "start":
            t = self._task("steps", "tuning", data["steps"])
            self.bar.update(t, completed=data["step"])
        elif kind == "step":
            t = self._task("steps", "tuning", data["steps"])
            info = f"loss {data['loss']:.4f} ce {data['ce']:.4f} prior {data['prior']:.4f} {data['it_per_s']:.2f} it/s"
            if data.get("gpu_peak_bytes"):
                info += f" peak {data['gpu_peak_bytes'] / 2**30:.1f} GiB"
            self.bar.update(t, completed=data["step"], info=info)
        elif kind == "validation":
            note(f"step {data['step']}: " + ", ".join(data["paths"]), highlight=False)
        elif kind == "checkpoint":
            note(f"step {data['step']}: checkpoint {data['path']}", highlight=False)
        elif kind == "lowrank":
            note(f"rank {data['rank']}: {human_size(data['bytes_lowrank'])} instead of {human_size(data['bytes_full'])}, "
                 f"relative change error {data['relative_error']:.3f}, subject CE {data['ce_full']:.4f} -> "
                 f"{data['ce_lowrank']:.4f}, prior KL {data['prior_full']:.5f} -> {data['prior_lowrank']:.5f}",
                 highlight=False)
