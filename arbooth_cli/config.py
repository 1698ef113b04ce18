"""Typed, frozen configs of the commands, with validation that reports every problem at once.

No torch import: the CLI builds these before anything heavy loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, InvalidInputError

Number = float | tuple[float, ...]


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
    line: int | None = None  # line in a prompts file, for messages


#: keys a JSON line of a prompts file may hold (besides "prompt")
PROMPT_FILE_KEYS = {f.name for f in fields(PromptJob)} - {"line"} | {"n"}


@dataclass(frozen=True)
class GenConfig:
    """Everything `arbooth gen` needs; the CLI flags map one to one (see `arbooth gen --help`)."""

    prompts: tuple[PromptJob, ...]
    model: str | None = None  #: --model; None: $ARBOOTH_MODEL, else the only cached model
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

    def problems(self) -> list[str]:
        out = []
        if not self.prompts:
            out.append("no prompt given: pass PROMPT arguments or --prompts FILE")
        for job in self.prompts:
            where = f"prompts file line {job.line}: " if job.line else ""
            if not job.prompt.strip():
                out.append(f"{where}empty prompt")
            if job.num_images is not None and job.num_images < 1:
                out.append(f"{where}n must be >= 1")
        if self.num_images < 1:
            out.append("-n/--num-images must be >= 1")
        if self.batch_size < 1:
            out.append("--batch-size must be >= 1")
        if self.overwrite and self.skip_existing:
            out.append("--overwrite and --skip-existing exclude each other")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            out.append("--dtype must be auto, fp32, bf16 or fp16")
        if self.stream not in ("per-image", "batch"):
            out.append("--rng-stream must be per-image or batch")
        if self.compile not in ("auto", "on", "off"):
            out.append("--compile must be auto, on or off")
        return out

    def validate(self) -> GenConfig:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **kw: Any) -> GenConfig:
        return replace(self, **kw)


def _number(value: Any, key: str, line: int) -> Number:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise InvalidInputError(f"prompts file line {line}: {key} must be a number or a list of numbers")


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
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read prompts file {p}: {exc}") from None
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
        for key in ("seed", "top_k"):
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
        if "top_p" in obj:
            kw["top_p"] = float(_number(obj["top_p"], "top_p", n))  # type: ignore[arg-type]
        for key in ("size", "aspect"):
            if key in obj:
                kw[key] = str(obj[key])
        jobs.append(PromptJob(**kw))
    if not jobs:
        raise InvalidInputError(f"prompts file {p} holds no prompts")
    return jobs


__all__ = ["GenConfig", "PromptJob", "read_prompts_file", "parse_number_list"]
