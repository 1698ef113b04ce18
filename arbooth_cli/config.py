"""Typed, frozen configs of the commands, with validation that reports every problem at once.

No torch import: the CLI builds these before anything heavy loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ConfigError, InvalidInputError
from .paths import NAME_RULE, valid_name

Number = float | tuple[float, ...]

#: module types `arbooth tune --layers` can select, and the parameter-name parts inside a block
#: that belong to each (tuning.selection picks the tensors)
MODULE_TYPES: dict[str, tuple[str, ...]] = {
    "sa": ("sa.",),  # self-attention (qkv, biases, QK-norm temperature, proj)
    "ca": ("ca.",),  # cross-attention to the text (q, kv, v bias, proj)
    "ca_norm": ("ca_norm.",),  # the LayerNorm before cross-attention
    "ffn": ("ffn.",),  # fc1, fc2
    "ada": ("ada_gss",),  # the per-block AdaLN offsets
}
#: perturbations of `arbooth inspect noise --mode` (analysis.perturb implements them)
NOISE_MODES: tuple[str, ...] = ("random", "flip", "swap")


@dataclass(frozen=True)
class PromptJob:
    """One prompt and the settings that may differ per prompt (None: use the run's)."""

    prompt: str
    seed: int | None = None
    num_images: int | None = None
    cfg: Number | None = None
    tau: Number | None = None
    top_k: int | None = None
    top_p: float | None = None
    size: str | None = None
    aspect: str | None = None
    skip_scales: int | None = None
    cfg_until_scale: int | None = None
    prune: tuple[tuple[int, float], ...] | None = None
    line: int | None = None  # line in a prompts file, for messages


#: keys a JSON line of a prompts file may hold (besides "prompt")
PROMPT_FILE_KEYS = {f.name for f in fields(PromptJob)} - {"line"} | {"n"}


_C = TypeVar("_C", bound="_Checked")


class _Checked:
    """What every command config offers: ``problems()`` (all of them at once), ``validate()``,
    ``to_dict()`` and ``with_(**changes)``."""

    def problems(self) -> list[str]:
        raise NotImplementedError

    def validate(self: _C) -> _C:
        # the types first (a config built in Python may hold anything); then the values
        problems = field_type_problems(type(self), {f.name: getattr(self, f.name) for f in fields(self)},  # type: ignore[arg-type]
                                       "config", literals=False) or self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def with_(self: _C, **kw: Any) -> _C:
        return replace(self, **kw)  # type: ignore[type-var]


#: seeds are 64-bit signed generator seeds
SEED_LIMIT = 2**63
#: longer prompts are refused: the text encoders read at most 512 tokens, and every image
#: carries its prompt in its metadata
MAX_PROMPT_CHARS = 4096


def prompt_problem(prompt: str, where: str = "") -> str | None:
    if not prompt.strip():
        return f"{where}empty prompt"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"{where}a prompt of {len(prompt)} characters: at most {MAX_PROMPT_CHARS} (the text encoder reads 512 tokens)"
    return None


def seed_problem(seed: int, flag: str) -> str | None:
    return None if 0 <= seed < SEED_LIMIT else f"{flag} must be in [0, 2^63), got {seed}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    import math

    try:
        return all(math.isfinite(x) for x in (v if isinstance(v, tuple) else (v,)))
    except OverflowError:  # an integer too large for a float
        return False


def _type_problem(value: Any, hint: Any, literals: bool = True) -> str | None:
    """What is wrong with ``value`` for the field type ``hint`` (None: nothing); ``literals=False``
    leaves choices among names to the config's own ``problems()`` (which names the option)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        problems = [_type_problem(value, a, literals) for a in arms]
        if any(p is None for p in problems):
            return None
        # say what is wrong inside the arm of the value's own kind ("item must be finite", not "must be a number")
        same_kind = [p for a, p in zip(arms, problems)
                     if (typing.get_origin(a) is tuple) == isinstance(value, (list, tuple))]
        return (same_kind or problems)[0]
    if origin is typing.Literal:
        return None if value in args or not literals else f"must be one of {', '.join(map(str, args))}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        if len(args) == 2 and args[1] is Ellipsis:
            bad = [_type_problem(v, args[0], literals) for v in value]
        elif len(value) != len(args):
            return f"must be a list of {len(args)} values"
        else:
            bad = [_type_problem(v, a, literals) for v, a in zip(value, args)]
        return next((f"item {b}" for b in bad if b), None)
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        if not _is_number(value):
            return "must be a number"
        return None if _finite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be text"
    return None


def field_type_problems(cls: type, data: dict[str, Any], where: str, *, literals: bool = True) -> list[str]:
    """Every value of ``data`` whose type does not fit its field of the dataclass ``cls``."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for key, value in data.items():
        problem = _type_problem(value, hints[key], literals) if key in hints else None
        if problem:
            out.append(f"{where}: {key} {problem}, got {value!r}")
    return out


@dataclass(frozen=True)
class GenConfig(_Checked):
    """Everything `arbooth gen` needs; the CLI flags map one to one (see `arbooth gen --help`)."""

    prompts: tuple[PromptJob, ...]
    #: --model; None: the base of the prompts' subject, else $ARBOOTH_MODEL, the last used, the only cached model, else toy
    model: str | None = None
    #: --subject NAME from the store ("none": no subject); None: the subject whose token a prompt contains
    subject: str | None = None
    delta: str | None = None  #: --delta PATH: a subject file outside the store
    num_images: int = 1  #: -n: images per prompt (seeds seed, seed+1, ...)
    seed: int = 0  #: --seed
    cfg: Number | None = None  #: --cfg: guidance on logits; None: the model's default
    tau: Number | None = None  #: --tau: temperature; None: the model's default
    top_k: int | None = None  #: --top-k (0 keeps all)
    top_p: float | None = None  #: --top-p
    size: str | None = None  #: --size: a named size of the model ('1M', '0.25M', ...)
    aspect: str = "1:1"  #: --aspect: W:H or h/w, matched to the model's templates
    batch_size: int = 1  #: --batch-size: images sampled together
    out_dir: str = "arbooth-out"  #: --out
    grid: bool = False  #: --grid: also write a contact sheet
    overwrite: bool = False  #: --overwrite existing files of the same name
    skip_existing: bool = False  #: --skip-existing: leave files already there (resume a batch job)
    device: str = "auto"  #: --device: auto, cpu, cuda, cuda:N
    dtype: str = "auto"  #: --dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16
    stream: Literal["per-image", "batch"] = "per-image"  #: --rng-stream
    #: --compile: CUDA graphs + compiled kernels on a GPU; auto: on for jobs of >= 64 images
    compile: Literal["auto", "on", "off"] = "auto"
    #: --strict: a prompt or setting the model cannot draw is an error, not a warning
    strict: bool = False
    #: --skip-scales N: the last N scales are not sampled (faster; 0: exact sampling; None: not
    #: given, 0 unless --fast's preset says otherwise)
    skip_scales: int | None = None
    #: --cfg-until-scale K: guidance on the first K scales only; the later ones skip the
    #: unconditional branch (faster; None: every scale, exact sampling)
    cfg_until_scale: int | None = None
    #: --prune S:R,...: at scale S, remove the share R of the tokens in the middle blocks and refill
    #: them from a coarser scale (FastVAR; empty: every token)
    prune: tuple[tuple[int, float], ...] | None = None
    #: --fast: the model's measured preset of the three above (options given win)
    fast: bool = False

    def problems(self) -> list[str]:
        out = []
        if not self.prompts:
            out.append("no prompt given: pass PROMPT arguments or --prompts FILE")
        for job in self.prompts:
            where = f"prompts file line {job.line}: " if job.line else ""
            problem = prompt_problem(job.prompt, where)
            if problem:
                out.append(problem)
            if job.num_images is not None and job.num_images < 1:
                out.append(f"{where}n must be >= 1")
        if self.num_images < 1:
            out.append("-n/--num-images must be >= 1")
        for job in self.prompts:  # the last image of a prompt has seed + n - 1
            n = job.num_images or self.num_images
            flag = f"prompts file line {job.line}: seed" if job.seed is not None else "--seed"
            seed = self.seed if job.seed is None else job.seed
            problem = seed_problem(seed, flag) or seed_problem(seed + max(n, 1) - 1, f"{flag} + n - 1")
            if problem and problem not in out:
                out.append(problem)
        for where, src in [("--", self)] + [(f"prompts file line {j.line}: ", j) for j in self.prompts]:
            for key in ("cfg", "tau", "top_p"):
                v = getattr(src, key)
                if v is not None and not _finite(v):
                    name = key.replace("_", "-") if where == "--" else key
                    out.append(f"{where}{name} must be finite, got {v}")
        if self.batch_size < 1:
            out.append("--batch-size must be >= 1")
        if (self.skip_scales or 0) < 0 or any(j.skip_scales is not None and j.skip_scales < 0 for j in self.prompts):
            out.append("--skip-scales must be >= 0")
        if any(v is not None and v < 1 for v in [self.cfg_until_scale, *(j.cfg_until_scale for j in self.prompts)]):
            out.append("--cfg-until-scale must be >= 1 (the first scale is always guided)")
        for where, src in [("--", self)] + [(f"prompts file line {j.line}: ", j) for j in self.prompts]:
            out += prune_problems(src.prune or (), where=where)
        if self.overwrite and self.skip_existing:
            out.append("--overwrite and --skip-existing exclude each other")
        if self.subject is not None and self.delta is not None:
            out.append("--subject and --delta exclude each other")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            out.append("--dtype must be auto, fp32, bf16 or fp16")
        if self.stream not in ("per-image", "batch"):
            out.append("--rng-stream must be per-image or batch")
        if self.compile not in ("auto", "on", "off"):
            out.append("--compile must be auto, on or off")
        return out



def parse_int_ranges(text: str) -> set[int]:
    """``'0-7,12'`` -> {0, ..., 7, 12}; ValueError for anything else (callers check the bounds)."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _number(value: Any, key: str, line: int) -> Number:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise InvalidInputError(f"prompts file line {line}: {key} must be a number or a list of numbers")


def prune_problems(ratios: Sequence[tuple[int, float]], num_scales: int | None = None, where: str = "--") -> list[str]:
    """What is wrong with ``--prune`` pairs (scale index, share removed); with ``num_scales``, also
    against a schedule of that many scales."""
    out = []
    seen: set[int] = set()
    for si, ratio in ratios:
        if si in seen:
            out.append(f"{where}prune names scale {si} twice")
        seen.add(si)
        if num_scales is not None and not 1 <= si < num_scales:
            out.append(f"{where}prune scale {si}: the schedule has {num_scales} scales, so it must be in "
                       f"1..{num_scales - 1}")
        elif si < 1:
            out.append(f"{where}prune {si}:{ratio:g}: SCALE must be >= 1 (the first scale is one token)")
        if not 0 <= ratio < 1:
            out.append(f"{where}prune {si}:{ratio:g}: the ratio is the share of tokens removed, in [0, 1)")
    return out


def parse_prune(text: str, flag: str = "--prune") -> tuple[tuple[int, float], ...]:
    """``'9:0.4,10:0.5'`` -> ((9, 0.4), (10, 0.5)): scale index and share of its tokens removed;
    ``'none'`` -> () (no pruning, also under ``--fast``)."""
    if text.strip().lower() == "none":
        return ()
    out = []
    for part in text.split(","):
        si, sep, ratio = part.strip().partition(":")
        try:
            out.append((int(si), float(ratio)))
        except ValueError:
            raise InvalidInputError(f"{flag} takes SCALE:RATIO pairs separated by commas (e.g. 9:0.4,10:0.5), "
                                    f"got {text!r}") from None
        if not sep:
            raise InvalidInputError(f"{flag} takes SCALE:RATIO pairs (e.g. 9:0.4,10:0.5), got {text!r}")
    return tuple(out)


def parse_number_list(text: str, flag: str) -> Number:
    """``'3'`` -> 3.0; ``'4,4,3,3,2'`` -> a per-scale tuple."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"{flag} takes a number or comma-separated numbers, got {text!r}") from None
    return parts[0] if len(parts) == 1 else tuple(parts)


def read_prompts_file(path: str | Path) -> list[PromptJob]:
    """One prompt a line, or JSON objects (``{"prompt": ..., "seed": 3, "n": 2, "cfg": 4}``) a line.

    Blank lines and lines starting with ``#`` are skipped. A malformed line is an error naming it.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first line
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"prompts file {p} is not UTF-8 text (byte {exc.start})", hint="save it as UTF-8") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read prompts file {p}: {exc.strerror or exc}") from None
    jobs = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            jobs.append(PromptJob(prompt=line, line=n))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"prompts file {p} line {n}: not valid JSON ({exc.msg})") from None
        unknown = set(obj) - PROMPT_FILE_KEYS
        if unknown:
            raise InvalidInputError(
                f"prompts file {p} line {n}: unknown keys {sorted(unknown)}; "
                f"known: {', '.join(sorted(PROMPT_FILE_KEYS))}"
            )
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompts file {p} line {n}: \"prompt\" must be a string")
        kw: dict[str, Any] = {"prompt": prompt, "line": n}
        for key in ("seed", "top_k", "skip_scales", "cfg_until_scale"):
            if key in obj:
                if not isinstance(obj[key], int) or isinstance(obj[key], bool):
                    raise InvalidInputError(f"prompts file {p} line {n}: {key} must be an integer")
                kw[key] = obj[key]
        if "n" in obj or "num_images" in obj:
            v = obj.get("n", obj.get("num_images"))
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidInputError(f"prompts file {p} line {n}: n must be an integer")
            kw["num_images"] = v
        for key in ("cfg", "tau"):
            if key in obj:
                kw[key] = _number(obj[key], key, n)
        if "prune" in obj:
            if not isinstance(obj["prune"], str):
                raise InvalidInputError(f"prompts file {p} line {n}: prune must be a string like \"9:0.4,10:0.5\"")
            kw["prune"] = parse_prune(obj["prune"], f"prompts file {p} line {n}: prune")
        if "top_p" in obj:
            if not _is_number(obj["top_p"]):
                raise InvalidInputError(f"prompts file {p} line {n}: top_p must be a number")
            kw["top_p"] = float(obj["top_p"])
        for key in ("size", "aspect"):
            if key in obj:
                if not isinstance(obj[key], str):
                    raise InvalidInputError(f"prompts file {p} line {n}: {key} must be text")
                kw[key] = obj[key]
        jobs.append(PromptJob(**kw))
    if not jobs:
        raise InvalidInputError(f"prompts file {p} holds no prompts")
    return jobs


# ---------------------------------------------------------------------------------------------
# arbooth tune
# ---------------------------------------------------------------------------------------------

#: named per-scale CE weight schedules (tuning.losses.scale_weights); the first is the default
SCALE_SCHEDULES = ("official-step", "uniform", "linear", "exp", "infinity")


@dataclass(frozen=True)
class TuneConfig(_Checked):
    """Everything `arbooth tune` needs. Defaults are what the official ARBooth code effectively
    runs (sources in docs/tuning.md); the CLI flags map one to one, and a TOML file given with
    ``--config`` may set any field by its name."""

    photos: str  #: PHOTOS_DIR
    token: str  #: --token: the identifier word, e.g. sks
    cls: str  #: --class: the subject's class noun, e.g. dog
    model: str | None = None  #: --model (default: $ARBOOTH_MODEL, the last used, the only cached model, else toy)
    name: str | None = None  #: --name of the saved subject (default: the token)
    steps: int = 500  #: --steps: iterations (one optimizer step each)
    batch_size: int = 2  #: --batch-size: subject photos per step (and prior samples per step)
    #: --lr: constant learning rate; None: the model's (the official 2.34375e-5 for Infinity, 1e-4 for toy)
    lr: float | None = None
    weight_decay: float = 0.005  #: --weight-decay (AdamW, on every tuned tensor)
    betas: tuple[float, float] = (0.9, 0.999)  #: --betas
    eps: float = 1e-8  #: --eps of AdamW
    layers: tuple[str, ...] = ("ca", "ffn")  #: --layers: module types to tune
    blocks: str = "all"  #: --blocks: block range, e.g. 0-15,20
    subject_vectors: int | None = None  #: --subject-vectors: learned vectors for the token (0: off; None: the model's)
    #: --subject-init: the vectors' start: zero (the official code), or the class word's text features
    subject_init: Literal["zero", "class"] = "zero"
    scale_weights: str = SCALE_SCHEDULES[0]  #: --scale-weights: a schedule name or w1,w2,...
    prior: bool = True  #: --prior/--no-prior: prior distillation on class-prompt token maps
    prior_weight: float = 0.5  #: --prior-weight (lambda)
    prior_mode: Literal["soft", "hard"] = "soft"  #: --prior-mode
    prior_kl: Literal["bit", "token"] = "bit"  #: --prior-kl: per-bit KL, or the official 2d-way softmax
    prior_pool: int | None = None  #: --prior-pool: class samples drawn up front (default: steps x batch)
    prior_tau: float = 0.5  #: temperature of the teacher's class samples
    prior_top_p: float = 0.97  #: top-p of the teacher's class samples
    caption: str = "a photo of {token} {cls}"  #: --caption (a photo's .txt file overrides it)
    #: --class-prompt of the prior samples; None: each caption without the token (the default
    #: caption gives the official "a photo of {cls}")
    class_prompt: str | None = None
    resolution: str | None = None  #: --resolution: a size of the model (1M = 1024x1024); default: the model's
    flip: bool = False  #: --flip: also train on mirrored photos
    #: --train-scales K: the loss, and the forward, on the first K scales only (None: all)
    train_scales: int | None = None
    augment: int = 0  #: --augment N: N shifted and rescaled copies of each photo (0: off)
    augment_shift: float = 0.05  #: --augment-shift: largest move of a copy, a share of the side
    augment_scale: float = 0.1  #: --augment-scale: largest rescale of a copy (0.1: 0.9x to 1.1x)
    #: --augment-zoom F: also train on each photo shrunk to F of its size (0: off; None: the model's,
    #: toy 0.64, others 0); on a model whose captions say sizes and places (toy) only photos of the
    #: larger size get a copy, captioned smaller and shrunk about the place the caption says
    augment_zoom: float | None = None
    #: --zoom-in F: also train on each photo enlarged F times (1 < F <= 4; 0: off; None: the model's,
    #: 0); on a model whose captions say sizes (toy) only photos of the smaller
    #: size get one, captioned larger, enlarged about the place the caption says and moved as
    #: --zoom-places says
    zoom_in: float | None = None
    #: --zoom-places N: zoomed copies of each photo at N places, its own first, then the next ones
    #: the model's captions name (a copy moves only on a plain background; None: the model's, 1
    #: where captions say no places)
    zoom_places: int | None = None
    #: --move-places N: each photo on a plain background, at its own size, also moved to the next
    #: N - 1 places the model's captions name (0: off; needs a model whose captions say places)
    move_places: int = 0
    #: --recolour N: N copies of each photo (and its shrunk and moved copies) on a plain background the caption names,
    #: repainted in colours the model's captions name that no photo shows as its plain background
    #: (not one the subject or the view shows, nor one a blend of the subject's colours looks like); 0: off; None:
    #: the model's (needs a model whose captions name background colours)
    recolour: int | None = None
    #: --photo-share F: the share of training draws that are the photos themselves rather than their
    #: augmented copies (0: every image alike; None: the model's)
    photo_share: float | None = None
    bsc_strength: float = 0.3  #: --bsc-strength: bitwise self-correction flip rate bound (0: off)
    bsc_scales: int | None = None  #: --bsc-scales: scales that get bit flips (default: all)
    text_dropout: float = 0.1  #: --text-dropout: caption replaced by the null text
    drop_path: float | None = None  #: --drop-path: stochastic depth (default: the model's, 0.1)
    #: --ema DECAY: the subject is an exponential moving average of the tuned weights over the steps
    #: (each step keeps DECAY of the average); 0: the last step's weights. None: the model's (0)
    ema: float | None = None
    seed: int = 0  #: --seed
    #: --early-stop P: stop before --steps once the subject loss (means of 25-step windows) has not
    #: fallen by 1% for P windows in a row (0: off, run every step)
    early_stop: int = 0
    validate_every: int = 100  #: --validate-every N steps (0: never)
    #: --validation-prompt (repeatable); None: the model's (prompts it can draw)
    validation_prompts: tuple[str, ...] | None = None
    checkpoint_every: int = 100  #: --checkpoint-every N steps (0: only on Ctrl-C and at the end)
    resume: bool = False  #: --resume the run of this name from its last checkpoint
    overwrite: bool = False  #: --overwrite a subject (and run) of the same name
    save_rank: int = 0  #: --save-rank R: also save a rank-R compressed subject
    optimizer_state: Literal["auto", "fp32", "bf16", "fp8"] = "auto"  #: --optimizer-state
    #: --grad-checkpointing of the blocks: on (every block), off (none), auto (as --memory decides)
    grad_checkpointing: Literal["auto", "on", "off"] = "auto"
    #: --memory: low (recompute every block, inputs in host memory: the least memory), auto (measure
    #: one block's activations in the first two steps, then keep the recomputed blocks' self-attention
    #: outputs and as many blocks' activations as fit), high (recompute none; refused if it cannot
    #: fit). low is the default: it fits 16 GB cards (docs/tuning.md).
    memory: Literal["auto", "low", "high"] = "low"
    #: --memory-limit GIB: the most GPU memory the run may hold (the allocator refuses more, and
    #: auto plans within it); None: the whole device
    memory_limit: float | None = None
    #: --compile: fused kernels for the blocks' element-wise stages (training and prior sampling); auto: on a GPU
    compile: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"  #: --device
    dtype: str = "auto"  #: --dtype of the transformer blocks (auto: bf16 on GPU, fp32 on CPU)
    run_dir: str | None = None  #: --run-dir for checkpoints, validation images and the prior pool
    #: --allow-common-token: accept a token the model already reads as a word (it then means the subject everywhere)
    allow_common_token: bool = False
    log_every: int = 10  #: --log-every N steps (the loss is read from the GPU this often)

    @property
    def subject_name(self) -> str:
        return self.name or self.token

    def problems(self) -> list[str]:
        import re

        out = []
        if not self.token or any(c.isspace() for c in self.token):
            out.append(f"--token must be one word without spaces, got {self.token!r}")
        elif not re.fullmatch(r"[\w-]+", self.token):
            out.append(f"--token must be letters, digits, - or _, got {self.token!r}")
        if not self.cls.strip():
            out.append("--class must name the subject's class, e.g. --class dog")
        if not valid_name(self.subject_name):
            flag = "--name" if self.name else "--token (the default name; or pass --name)"
            out.append(f"{flag} {self.subject_name!r}: a subject name is {NAME_RULE}")
        for flag, v in (("--steps", self.steps), ("--batch-size", self.batch_size)):
            if v < 1:
                out.append(f"{flag} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            out.append("--lr must be > 0")
        if self.weight_decay < 0:
            out.append("--weight-decay must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append("--betas must be two numbers in [0, 1)")
        bad = [layer for layer in self.layers if layer not in MODULE_TYPES]
        if bad or not self.layers:
            out.append(f"--layers: unknown {bad or 'empty'}; choose from {', '.join(MODULE_TYPES)} or all")
        if self.subject_vectors is not None and self.subject_vectors < 0:
            out.append("--subject-vectors must be >= 0")
        if self.scale_weights not in SCALE_SCHEDULES:
            try:
                ws = [float(x) for x in self.scale_weights.split(",")]
                if any(w < 0 for w in ws):
                    out.append("--scale-weights must be >= 0")
            except ValueError:
                out.append(f"--scale-weights: {', '.join(SCALE_SCHEDULES)} or comma-separated numbers")
        if self.prior_weight < 0:
            out.append("--prior-weight must be >= 0")
        if self.prior_mode not in ("soft", "hard"):
            out.append("--prior-mode must be soft or hard")
        if self.prior_kl not in ("bit", "token"):
            out.append("--prior-kl must be bit or token")
        if self.prior_pool is not None and self.prior_pool < 1:
            out.append("--prior-pool must be >= 1")
        if not self.prior_tau > 0 or not 0 < self.prior_top_p <= 1:
            out.append("prior_tau must be > 0 and prior_top_p in (0, 1]")
        if "{token}" not in self.caption:
            out.append("--caption must contain {token} (where the subject's word goes)")
        if self.class_prompt is not None and not self.class_prompt.strip():
            out.append("--class-prompt must not be empty (leave it out for each caption without the token)")
        if not 0 <= self.bsc_strength <= 1:
            out.append("--bsc-strength must be in [0, 1]")
        if not 0 <= self.text_dropout < 1:
            out.append("--text-dropout must be in [0, 1)")
        if self.train_scales is not None and self.train_scales < 1:
            out.append("--train-scales must be >= 1")
        if not 0 <= self.augment <= 64:
            out.append("--augment must be from 0 to 64 copies a photo")
        if not 0 <= self.augment_shift <= 0.25 or not 0 <= self.augment_scale <= 0.5:
            out.append("--augment-shift must be in [0, 0.25] and --augment-scale in [0, 0.5]")
        if self.ema is not None and not 0 <= self.ema < 1:
            out.append("--ema must be in [0, 1) (0: off; 0.99 averages over about the last 100 steps)")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            out.append("--drop-path must be in [0, 1)")
        for flag, v in (("--validate-every", self.validate_every), ("--checkpoint-every", self.checkpoint_every),
                        ("--save-rank", self.save_rank)):
            if v < 0:
                out.append(f"{flag} must be >= 0")
        if self.log_every < 1:
            out.append("--log-every must be >= 1")
        problem = seed_problem(self.seed, "--seed")
        if problem:
            out.append(problem)
        if self.resume and self.overwrite:
            out.append("--resume and --overwrite exclude each other")
        if self.subject_init not in ("zero", "class"):
            out.append("--subject-init must be zero or class")
        if self.optimizer_state not in ("auto", "fp32", "bf16", "fp8"):
            out.append("--optimizer-state must be auto, fp32, bf16 or fp8")
        if self.grad_checkpointing not in ("auto", "on", "off"):
            out.append("--grad-checkpointing must be auto, on or off")
        if self.augment_zoom is not None and not 0 <= self.augment_zoom < 1:
            out.append("--augment-zoom must be in [0, 1) (0: off; 0.64 shrinks the photo to 64%)")
        if self.zoom_in is not None and not (self.zoom_in == 0 or 1 < self.zoom_in <= 4):
            out.append("--zoom-in must be 0 (off) or above 1 and at most 4 (1.5 enlarges the photo to 150%)")
        if self.zoom_places is not None and self.zoom_places < 1:
            out.append("--zoom-places must be >= 1 (1: each copy at its photo's own place)")
        if self.move_places < 0 or self.move_places == 1:
            out.append("--move-places must be 0 (off) or at least 2 (its own place and the next)")
        if self.recolour is not None and not 0 <= self.recolour <= 8:
            out.append("--recolour must be from 0 (off) to 8 copies an image")
        if self.photo_share is not None and not 0 <= self.photo_share < 1:
            out.append("--photo-share must be in [0, 1) (0: photos and copies drawn alike)")
        if self.early_stop < 0:
            out.append("--early-stop must be >= 0 (0: off)")
        if self.memory not in ("auto", "low", "high"):
            out.append("--memory must be auto, low or high")
        if self.memory_limit is not None and not self.memory_limit > 0:
            out.append("--memory-limit must be a positive number of GiB")
        if self.compile not in ("auto", "on", "off"):
            out.append("--compile must be auto, on or off")
        if self.dtype not in ("auto", "fp32", "bf16"):
            out.append("--dtype must be auto, fp32 or bf16")
        return out


    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"{where}: unknown keys {unknown}; see 'arbooth tune --help' for the names")
        problems = field_type_problems(cls, data, where)
        if problems:
            raise ConfigError(problems)
        kw = dict(data)
        for key in ("betas", "layers", "validation_prompts"):
            if key in kw and isinstance(kw[key], list):
                kw[key] = tuple(kw[key])
        for key in ("lr", "weight_decay", "eps", "prior_weight", "prior_tau", "prior_top_p", "bsc_strength",
                    "text_dropout", "drop_path", "augment_shift", "augment_scale", "augment_zoom", "zoom_in", "photo_share", "memory_limit", "ema"):
            if _is_number(kw.get(key)):
                kw[key] = float(kw[key])  # finite and in range: checked above
        if "betas" in kw:
            kw["betas"] = tuple(float(b) for b in kw["betas"])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None


#: `tune --preset NAME`: TuneConfig fields it sets where neither an option nor the --config file
#: does. Each part of "fast" cost at most 0.03 subject fidelity on the toy subject benchmark
#: (docs/subject-benchmark.md): an early stop on a plateau, and a prior pool of 200 samples.
TUNE_PRESETS: dict[str, dict[str, Any]] = {"fast": {"early_stop": 2, "prior_pool": 200}}


def tune_preset(name: str) -> dict[str, Any]:
    """The fields of a `tune --preset` (InvalidInputError for an unknown name)."""
    if name not in TUNE_PRESETS:
        raise InvalidInputError(f"unknown --preset {name!r}; choose from {', '.join(TUNE_PRESETS)}")
    return dict(TUNE_PRESETS[name])


def read_tune_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file for ``arbooth tune --config`` (keys: :class:`TuneConfig` fields;
    ``class`` is accepted for ``cls``)."""
    data = _read_toml(path, "tune")
    if "class" in data:
        data["cls"] = data.pop("class")
    return data


#: `gen --config` keys that are named after the option rather than the GenConfig field
GEN_FILE_ALIASES = {"out": "out_dir", "n": "num_images", "rng_stream": "stream", "prompts": "prompts_file"}


def read_gen_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file for ``arbooth gen --config``: GenConfig fields by their option
    names (``out``, ``n`` or ``num_images``, ``rng_stream``, ``prune = "9:0.4,10:0.5"``, and
    ``prompts``: a prompts file), checked; keys may sit under a ``[gen]`` table."""
    where = f"config file {path}"
    data = {GEN_FILE_ALIASES.get(k, k): v for k, v in _read_toml(path, "gen").items()}
    known = {f.name for f in fields(GenConfig)} - {"prompts"} | {"prompts_file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}; see 'arbooth gen --help' for the names")
    if "prune" in data:
        if not isinstance(data["prune"], str):
            raise InvalidInputError(f"{where}: prune must be a string like \"9:0.4,10:0.5\" (or \"none\")")
        data["prune"] = parse_prune(data["prune"], f"{where}: prune")
    if isinstance(data.get("prompts_file"), str):
        data["prompts_file"] = str(Path(path).parent / data["prompts_file"])  # relative to the file
    elif "prompts_file" in data:
        raise InvalidInputError(f"{where}: prompts must be the path of a prompts file")
    for key in ("cfg", "tau"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    problems = field_type_problems(GenConfig, {k: v for k, v in data.items() if k != "prompts_file"}, where)
    if problems:
        raise ConfigError(problems)
    return data


def _read_toml(path: str | Path, table: str) -> dict[str, Any]:
    """A TOML file's keys (those of its ``[table]`` if it has one), dashes read as underscores."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"config file {p} is not valid TOML: {exc}") from None
    data = data.get(table, data)
    return {k.replace("-", "_"): v for k, v in data.items()}


# ---------------------------------------------------------------------------------------------
# arbooth inspect
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InspectNoiseConfig(_Checked):
    """`arbooth inspect noise`: perturb one scale's token map at a time and measure the change."""

    prompt: str
    model: str | None = None  #: --model (default: as `arbooth gen`)
    subject: str | None = None  #: --subject NAME ('none': no subject; default: by the prompt's token)
    delta: str | None = None  #: --delta PATH: a subject file
    scales: str = "all"  #: --scales: 'all' or 1-based scale numbers, e.g. 1,2,5-8
    mode: str = "random"  #: --mode: random, flip or swap
    strength: float = 1.0  #: --strength P in [0, 1]
    seeds: int = 4  #: --seeds N: reference images (seeds seed .. seed+N-1)
    seed: int = 0  #: --seed of the first reference
    features: str = "auto"  #: --features: auto, tokenizer, dino or clip
    feature_weights: str | None = None  #: --feature-weights FOLDER of DINO or CLIP weights
    cfg: Number | None = None  #: --cfg (default: the model's)
    tau: Number | None = None  #: --tau (default: the model's)
    top_p: float | None = None  #: --top-p (default: the model's)
    size: str | None = None  #: --size (default: the model's)
    batch_size: int = 0  #: --batch-size: images sampled together (0: as many as fit, at most one seed's)
    thumb: int = 256  #: --thumb: width of each picture in the grid, px
    out_dir: str = "arbooth-inspect"  #: --out
    overwrite: bool = False  #: --overwrite the report files of an earlier run in --out
    device: str = "auto"  #: --device
    dtype: str = "auto"  #: --dtype
    compile: Literal["auto", "on", "off"] = "auto"  #: --compile (as `arbooth gen`)

    def problems(self) -> list[str]:
        out = []
        problem = prompt_problem(self.prompt)
        if problem:
            out.append(problem)
        if self.mode not in NOISE_MODES:
            out.append(f"--mode must be one of {', '.join(NOISE_MODES)}")
        if not 0.0 <= self.strength <= 1.0:
            out.append(f"--strength must be in [0, 1], got {self.strength:g}")
        if self.seeds < 1:
            out.append("--seeds must be >= 1")
        problem = seed_problem(self.seed, "--seed") or seed_problem(self.seed + max(self.seeds, 1) - 1, "--seed + --seeds - 1")
        if problem:
            out.append(problem)
        for key in ("cfg", "tau", "top_p"):
            v = getattr(self, key)
            if v is not None and not _finite(v):
                out.append(f"--{key.replace('_', '-')} must be finite, got {v}")
        if self.subject is not None and self.delta is not None:
            out.append("--subject and --delta exclude each other")
        if self.features not in ("auto", "tokenizer", "dino", "clip"):
            out.append("--features must be auto, tokenizer, dino or clip")
        if self.features == "tokenizer" and self.feature_weights is not None:
            out.append("--feature-weights goes with --features dino, clip or auto")
        if self.batch_size < 0:
            out.append("--batch-size must be >= 0 (0: automatic)")
        if self.thumb < 16:
            out.append("--thumb must be >= 16")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            out.append("--dtype must be auto, fp32, bf16 or fp16")
        if self.compile not in ("auto", "on", "off"):
            out.append("--compile must be auto, on or off")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            out.append("--top-p must be in (0, 1]")
        return out


@dataclass(frozen=True)
class InspectWeightsConfig(_Checked):
    """`arbooth inspect weights`: how far a subject moved each tuned tensor from its base."""

    subject: str  #: SUBJECT: a stored subject's name, or a subject file's path
    model: str | None = None  #: --model (default: the subject's base model)
    out_dir: str = "arbooth-inspect"  #: --out
    overwrite: bool = False  #: --overwrite the report files of an earlier run in --out
    device: str = "auto"  #: --device

    def problems(self) -> list[str]:
        return [] if self.subject.strip() else ["name a subject, or a subject file"]


__all__ = ["GenConfig", "InspectNoiseConfig", "InspectWeightsConfig", "PromptJob", "TuneConfig", "read_prompts_file", "read_tune_file", "parse_number_list"]


# ---------------------------------------------------------------------------------------------
# arbooth eval
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig(_Checked):
    """`arbooth eval`: how well a tuned subject is personalized (fidelity, text, drift, diversity)."""

    subject: str  #: SUBJECT: a stored subject's name or token, or a subject file (.safetensors)
    model: str | None = None  #: --model (default: the subject's base model)
    photos: str | None = None  #: --photos DIR (default: the folder the subject was tuned on)
    prompts_file: str | None = None  #: --prompts FILE: one prompt a line, naming the token (default: built in)
    seeds: int = 8  #: --seeds N: images per prompt, seeds 0 .. N-1
    dino: str | None = None  #: --dino PATH: DINO ViT-S/16 weights (real models)
    clip: str | None = None  #: --clip PATH: CLIP ViT-B/32 weights (real models)
    out_dir: str | None = None  #: --out DIR for the grids and report.json (None: write nothing)
    overwrite: bool = False  #: --overwrite the report files of an earlier run in --out
    batch_size: int = 0  #: --batch-size: images sampled together (0: automatic)
    device: str = "auto"  #: --device
    dtype: str = "auto"  #: --dtype
    #: sample as `gen` would with these (what a subject costs with them; default: exact sampling)
    fast: bool = False  #: --fast: the model's preset of the three below where not given
    skip_scales: int | None = None  #: --skip-scales
    cfg_until_scale: int | None = None  #: --cfg-until-scale
    prune: tuple[tuple[int, float], ...] | None = None  #: --prune

    def problems(self) -> list[str]:
        out = []
        if not self.subject.strip():
            out.append("name a subject, or a subject file")
        if self.seeds < 1:
            out.append("--seeds must be >= 1")
        if self.batch_size < 0:
            out.append("--batch-size must be >= 0 (0: automatic)")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            out.append("--dtype must be auto, fp32, bf16 or fp16")
        return out


__all__ += ["EvalConfig"]
