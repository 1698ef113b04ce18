"""`arbooth gen` as a library call: prompts and settings in, PNG files with provenance out.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes every WORLD_SIZE-th image of the same
plan, so K GPUs write exactly the files one GPU writes: same names, seeds and images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import GenConfig, PromptJob
from ..errors import ConfigError, InvalidInputError, NotFoundError, ResourceError
from ..loading import ResolvedModel, load_components, pick_device, pick_dtype, remember_model, resolve_model
from ..models.schedules import TEMPLATES, model_scales, nearest_template, parse_aspect
from ..registry import ModelSpec
from ..subjects import SubjectInfo, SubjectStore, subject_info, token_in_prompt
from .writers import contact_sheet, image_filename, write_png

if TYPE_CHECKING:
    from ..tuning.subject import LoadedSubject

#: ``on_event(kind, data)``: "plan" (total images), "loaded", "scale" (index, scales), "image" (record)
EventFn = Callable[[str, dict[str, Any]], None]

#: how far (relative) an asked aspect may be from a template before it is refused
ASPECT_TOLERANCE = 0.05
#: --compile auto: the first compiled call costs ~50 s (2B, H200) and saves ~0.5 s per image after
COMPILE_AUTO_MIN_IMAGES = 64


@dataclass(frozen=True)
class ImageItem:
    """One planned image."""

    index: int  # position in the whole plan
    prompt_index: int
    prompt: str
    seed: int
    size: str
    h_div_w: float
    cfg: Any
    tau: Any
    top_k: int
    top_p: float
    filename: str
    subject: SubjectInfo | None = None

    def batch_key(self) -> tuple:
        subject = None if self.subject is None else str(self.subject.path)
        return (subject, self.size, self.h_div_w, self.cfg, self.tau, self.top_k, self.top_p)


@dataclass(frozen=True)
class ImageRecord:
    path: str
    prompt: str
    seed: int
    metadata: dict[str, Any]
    skipped: bool = False


@dataclass
class GenResult:
    images: list[ImageRecord] = field(default_factory=list)
    grid: str | None = None
    model: str = ""
    device: str = ""


def _size_and_aspect(spec: ModelSpec, job: PromptJob, config: GenConfig) -> tuple[str, float]:
    size = job.size or config.size or spec.sampling.size
    if size not in spec.sizes:
        raise InvalidInputError(f"model {spec.name} has no size {size!r}; its sizes: {', '.join(spec.sizes)}")
    try:
        asked = parse_aspect(job.aspect or config.aspect)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    ratio = nearest_template(asked)
    if abs(ratio - asked) / asked > ASPECT_TOLERANCE:
        known = ", ".join(f"{r:g}" for r in TEMPLATES)
        raise InvalidInputError(f"no aspect template near h/w {asked:.3f}; templates (h/w): {known}")
    return size, ratio


def _first_set(*values: Any) -> Any:
    """The prompt's own setting, else the run's, else the model's default."""
    return next(v for v in values if v is not None)


def plan_subjects(config: GenConfig, store: SubjectStore | None = None) -> list[SubjectInfo | None]:
    """The subject of each prompt: ``--delta``'s file, ``--subject``'s, or the stored subject whose
    token the prompt contains (none for ``--subject none``)."""
    return subjects_for([job.prompt for job in config.prompts], config.subject, config.delta, store)


def subjects_for(prompts: list[str], subject: str | None, delta: str | None,
                 store: SubjectStore | None = None) -> list[SubjectInfo | None]:
    """What :func:`plan_subjects` does, for plain prompts and the two flags."""
    n = len(prompts)
    if delta is not None:
        path = Path(delta)
        if not path.is_file():
            raise NotFoundError(f"subject file {path} does not exist")
        return [subject_info(path)] * n
    if subject == "none":
        return [None] * n
    store = store or SubjectStore()
    if subject is not None:
        return [store.get(subject)] * n
    known = store.list()
    out: list[SubjectInfo | None] = []
    for prompt in prompts:
        hits = [s for s in known if token_in_prompt(s.token, prompt)]
        if len(hits) > 1:
            names = ", ".join(s.name for s in hits)
            raise InvalidInputError(f"prompt {prompt!r} names several subjects ({names}); one per prompt",
                                    hint="pick one with --subject NAME")
        out.append(hits[0] if hits else None)
    return out


def check_subject_base(subject: SubjectInfo, resolved: ResolvedModel) -> None:
    """Refuse, before any work, a subject tuned on another model or on other files of it."""
    if subject.base_model != resolved.spec.name:
        raise InvalidInputError(f"subject {subject.name!r} was tuned on {subject.base_model}, not {resolved.spec.name}",
                                hint=f"use --model {subject.base_model}")
    if subject.base_model_hash != resolved.model_hash:
        raise InvalidInputError(f"subject {subject.name!r} was tuned on other weight files of {subject.base_model}",
                                hint="import the model files it was tuned on")


def subject_model(model: str | None, subjects: list[SubjectInfo | None]) -> str | None:
    """``model`` if given, else the base model of ``subjects`` (one at most), else None."""
    if model:
        return model
    bases = sorted({s.base_model for s in subjects if s is not None})
    if len(bases) > 1:
        raise InvalidInputError(f"the prompts name subjects tuned on different models ({', '.join(bases)})",
                                hint="run them separately, with --model")
    return bases[0] if bases else None


def plan_images(spec: ModelSpec, config: GenConfig,
                subjects: list[SubjectInfo | None] | None = None) -> list[ImageItem]:
    """Every image of the run, in a fixed order; checks sizes and aspects before any work."""
    items = []
    for pi, job in enumerate(config.prompts):
        subject = subjects[pi] if subjects is not None else None
        if subject is not None and subject.base_model != spec.name:
            raise InvalidInputError(f"subject {subject.name!r} was tuned on {subject.base_model}, not {spec.name}",
                                    hint=f"use --model {subject.base_model}")
        size, ratio = _size_and_aspect(spec, job, config)
        n = job.num_images or config.num_images
        base = config.seed if job.seed is None else job.seed
        for k in range(n):
            seed = base + k
            items.append(ImageItem(
                index=len(items), prompt_index=pi, prompt=job.prompt, seed=seed, size=size, h_div_w=ratio,
                cfg=_first_set(job.cfg, config.cfg, spec.sampling.cfg),
                tau=_first_set(job.tau, config.tau, spec.sampling.tau),
                top_k=_first_set(job.top_k, config.top_k, spec.sampling.top_k),
                top_p=_first_set(job.top_p, config.top_p, spec.sampling.top_p),
                filename=image_filename(pi, job.prompt, seed), subject=subject,
            ))
    names = [it.filename for it in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidInputError(f"two images would both be named {dup}: give the repeated prompt another seed")
    return items


def _schedule(spec: ModelSpec, item: ImageItem):
    return model_scales(item.size, item.h_div_w, num_scales=spec.num_scales or None)


def _prepare_out_dir(config: GenConfig, items: list[ImageItem]) -> Path:
    out = Path(config.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".arbooth-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ResourceError(f"cannot write to the output directory {out}: {exc.strerror or exc}",
                            hint="choose another --out directory") from None
    if not (config.overwrite or config.skip_existing):
        taken = [it.filename for it in items if (out / it.filename).exists()]
        if taken:
            raise InvalidInputError(
                f"{len(taken)} output files already exist in {out}, e.g. {taken[0]}",
                hint="pass --overwrite to replace them, --skip-existing to keep them, or another --out",
            )
    return out


def _distributed() -> tuple[int, int, Any, bool]:
    """(rank, world size, torch.distributed or None, whether we started it) under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None, False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist, False
    if torch.cuda.is_available():
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dist, True


def generate(config: GenConfig, *, on_event: EventFn | None = None,
             resolved: ResolvedModel | None = None) -> GenResult:
    """Run a generation job; returns what was written (this process's share under torchrun)."""
    from .sample import SamplingParams

    emit = on_event or (lambda kind, data: None)
    config.validate()
    subjects = plan_subjects(config)
    resolved = resolved or resolve_model(subject_model(config.model, subjects))
    remember_model(resolved.spec.name)
    spec = resolved.spec
    items = plan_images(spec, config, subjects)
    for it in items:
        problems = SamplingParams(cfg=it.cfg, tau=it.tau, top_k=it.top_k, top_p=it.top_p).problems()
        if problems:
            raise ConfigError(problems)
        if isinstance(it.cfg, tuple) or isinstance(it.tau, tuple):
            SamplingParams(cfg=it.cfg, tau=it.tau).per_scale(len(_schedule(spec, it)))
    rank, world, dist, started = _distributed()
    try:
        return _run(config, spec, resolved, items, rank, world, dist, emit)
    finally:
        if started:
            dist.destroy_process_group()


def _run(config: GenConfig, spec: ModelSpec, resolved: ResolvedModel, items: list[ImageItem], rank: int,
         world: int, dist: Any, emit: EventFn) -> GenResult:
    import torch

    from ..models.text_encoder import TextCond
    from ..tuning.subject import LoadedSubject, SubjectSwitch, load_subject, subject_text
    from .sample import SamplingEngine, SamplingParams, sample_images

    out_dir = _prepare_out_dir(config, items) if rank == 0 else Path(config.out_dir)
    if dist is not None:
        dist.barrier()
    mine = items[rank::world]
    if config.skip_existing:
        mine = [it for it in mine if not (out_dir / it.filename).exists()]
    emit("plan", {"total": len(mine), "all": len(items), "rank": rank, "world": world})

    device = pick_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = pick_dtype(config.dtype, device)
    comps = load_components(resolved, device=device, dtype=dtype)
    emit("loaded", {"model": spec.name, "device": str(device), "dtype": str(dtype).replace("torch.", "")})

    loaded = {}
    for it in mine:
        if it.subject is not None and str(it.subject.path) not in loaded:
            loaded[str(it.subject.path)] = load_subject(it.subject.path, comps.transformer, model_name=spec.name,
                                                        model_hash=resolved.model_hash)
    switch = SubjectSwitch(comps.transformer)

    def subject_of(it: ImageItem) -> LoadedSubject | None:
        return None if it.subject is None else loaded[str(it.subject.path)]

    # Text features first (with a subject's learned vectors in place of its token), then the
    # text encoder leaves the device before sampling.
    prompts = sorted({it.prompt for it in mine})
    feats = {}
    for i in range(0, len(prompts), 16):
        chunk = prompts[i:i + 16]
        enc = comps.text_encoder.encode(chunk)
        for j, p in enumerate(chunk):
            feats[p] = enc.select([j])
    text_of = {}
    for it in mine:
        key = (it.prompt, None if it.subject is None else str(it.subject.path))
        if key not in text_of:
            text_of[key] = subject_text(feats[it.prompt], comps.text_encoder.tokenizer, it.prompt, subject_of(it))
    comps.text_encoder = None
    if device.type == "cuda":
        torch.cuda.empty_cache()

    use_engine = device.type == "cuda" and (
        config.compile == "on" or (config.compile == "auto" and len(mine) >= COMPILE_AUTO_MIN_IMAGES))
    engine = SamplingEngine() if use_engine else None
    result = GenResult(model=spec.name, device=str(device))
    groups: dict[tuple, list[ImageItem]] = {}
    for it in mine:
        groups.setdefault(it.batch_key(), []).append(it)
    for group in groups.values():
        for b in range(0, len(group), config.batch_size):
            batch = group[b:b + config.batch_size]
            first = batch[0]
            scales = _schedule(spec, first)
            params = SamplingParams(cfg=first.cfg, tau=first.tau, top_k=first.top_k, top_p=first.top_p)
            switch.use(subject_of(first))
            text = TextCond.cat([text_of[(it.prompt, None if it.subject is None else str(it.subject.path))]
                                 for it in batch]).to(device)
            if config.stream == "batch":
                gens = [torch.Generator(device=device).manual_seed(first.seed)]
            else:
                gens = [torch.Generator(device=device).manual_seed(it.seed) for it in batch]
            imgs = sample_images(comps.transformer, comps.vae, text, scales, params, gens, stream=config.stream,
                                 on_scale=lambda si: emit("scale", {"index": si, "scales": len(scales)}),
                                 engine=engine)
            arr = imgs.permute(0, 2, 3, 1).cpu().numpy()
            for it, img in zip(batch, arr):
                meta = _metadata(it, resolved, config, scales, img.shape, device, dtype, use_engine, subject_of(it))
                path = out_dir / it.filename
                write_png(path, img, meta)
                rec = ImageRecord(str(path), it.prompt, it.seed, meta)
                result.images.append(rec)
                emit("image", {"record": rec})
    if dist is not None:
        dist.barrier()
    if config.grid and rank == 0:
        paths = [out_dir / it.filename for it in items if (out_dir / it.filename).exists()]
        if paths:
            cols = max(1, math.ceil(math.sqrt(len(paths))))
            grid_meta = {"model": spec.name, "model_hash": resolved.model_hash, "arbooth_version": __version__,
                         "images": [p.name for p in paths]}
            result.grid = str(contact_sheet(paths, cols, out_dir / "grid.png", grid_meta))
    return result


def _metadata(it: ImageItem, resolved: ResolvedModel, config: GenConfig, scales, shape, device, dtype,
              compiled: bool, subject: LoadedSubject | None = None) -> dict:
    return {
        "prompt": it.prompt,
        "seed": it.seed,
        "model": resolved.spec.name,
        "model_hash": resolved.model_hash,
        "subject": None if subject is None else subject.name,
        "subject_hash": None if subject is None else subject.sha256,
        "subject_token": None if subject is None else subject.token,
        "arbooth_version": __version__,
        "cfg": it.cfg,
        "tau": it.tau,
        "top_k": it.top_k,
        "top_p": it.top_p,
        "size": it.size,
        "h_div_w": it.h_div_w,
        "scales": len(scales),
        "height": int(shape[0]),
        "width": int(shape[1]),
        "rng_stream": config.stream,
        "compiled": compiled,  # CUDA graphs + compiled kernels: same maths, other float rounding
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
    }
