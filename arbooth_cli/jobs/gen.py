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

from .._version import __version__
from ..config import GenConfig, PromptJob
from ..errors import InvalidInputError
from ..loading import ResolvedModel
from ..modelspec import ModelSpec
from ..models.schedules import TEMPLATES, model_scales, nearest_template, parse_aspect
from ..sampling.writers import contact_sheet, image_filename, write_png
from ..subjects import SubjectInfo, SubjectStore
from . import session
from .session import EventFn

if TYPE_CHECKING:
    from ..models.build import Components
    from ..models.text_encoder import TextCond
    from ..subjects.use import LoadedSubject

# on_event kinds: "plan" (total images), "loaded", "scale" (index, scales), "image" (record)

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
    skip_scales: int = 0
    cfg_until_scale: int | None = None
    prune: tuple[tuple[int, float], ...] = ()
    subject: SubjectInfo | None = None

    def params(self) -> Any:
        """This image's :class:`SamplingParams`."""
        from ..sampling.sample import SamplingParams

        return SamplingParams(cfg=self.cfg, tau=self.tau, top_k=self.top_k, top_p=self.top_p,
                              skip_scales=self.skip_scales, cfg_until_scale=self.cfg_until_scale, prune=self.prune)

    def batch_key(self) -> tuple:
        subject = None if self.subject is None else str(self.subject.path)
        return (subject, self.size, self.h_div_w, self.cfg, self.tau, self.top_k, self.top_p, self.skip_scales,
                self.cfg_until_scale, self.prune)


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
    size = session.model_size(spec, job.size or config.size)
    try:
        asked = parse_aspect(job.aspect or config.aspect)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    ratio = nearest_template(asked)
    if abs(ratio - asked) / asked > ASPECT_TOLERANCE:
        known = ", ".join(f"{r:g}" for r in TEMPLATES)
        raise InvalidInputError(f"no aspect template near h/w {asked:.3f}; templates (h/w): {known}")
    return size, ratio


def plan_subjects(config: GenConfig, store: SubjectStore | None = None) -> list[SubjectInfo | None]:
    """The subject of each prompt: ``--delta``'s file, ``--subject``'s, or the stored subject whose
    token the prompt contains (none for ``--subject none``)."""
    return session.pick_subjects([job.prompt for job in config.prompts], config.subject, config.delta, store)


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
        settings = session.sampling_settings(spec, job, config)
        num_scales = len(model_scales(size, ratio, num_scales=spec.num_scales or None))
        speed = session.speed_settings(spec, config.fast, num_scales, job, config)  # skip, cfg-until, prune
        for k in range(n):
            seed = base + k
            items.append(ImageItem(
                index=len(items), prompt_index=pi, prompt=job.prompt, seed=seed, size=size, h_div_w=ratio,
                **settings, **speed, filename=image_filename(pi, job.prompt, seed), subject=subject,
            ))
    names = [it.filename for it in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidInputError(f"two images would both be named {dup}: give the repeated prompt another seed")
    return items


def _drawing_warning(spec: ModelSpec, items: list[ImageItem], strict: bool) -> str | None:
    """Prompts or aspects the model cannot draw: one warning for the job (an error with --strict)."""
    problems: dict[str, list[str]] = {}
    for it in items:
        key = f"{it.prompt!r}" + (f" at h/w {it.h_div_w:.3g}" if it.h_div_w != 1.0 else "")
        if key not in problems:
            found = session.drawing_problems(spec, it.prompt, h_div_w=it.h_div_w,
                                             subjects=[it.subject] if it.subject is not None else [])
            if found:
                problems[key] = found
    if not problems:
        return None
    first, what = next(iter(problems.items()))
    more = f" (and {len(problems) - 1} more prompts)" if len(problems) > 1 else ""
    message = f"{spec.name} cannot draw {first} as asked: {'; '.join(what)}{more}"
    known = session.what_it_draws(spec)
    if strict:
        raise InvalidInputError(message, hint=known)
    return message + (f". {known}" if known else "")


def _announce_subjects(config: GenConfig, items: list[ImageItem], emit: EventFn) -> None:
    """Which subject each prompt gets, and why: no prompt uses a tuned subject unawares."""
    used: dict[str, tuple[SubjectInfo, int]] = {}
    for it in items:
        if it.subject is not None:
            info, n = used.get(it.subject.name, (it.subject, 0))
            used[it.subject.name] = (info, n + 1)
    for name, (info, n) in used.items():
        why = ("--delta" if config.delta else "--subject") if config.delta or config.subject else \
            f"the prompt names its token {info.token!r}"
        emit("subject", {"name": name, "token": info.token, "images": n, "why": why})


def _schedule(spec: ModelSpec, item: ImageItem):
    return model_scales(item.size, item.h_div_w, num_scales=spec.num_scales or None)


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
    emit = on_event or session.no_events
    config.validate()
    subjects = plan_subjects(config)
    resolved = session.resolve(config.model, subjects, resolved=resolved)
    spec = resolved.spec
    items = plan_images(spec, config, subjects)
    session.check_device(config.device)
    for it in items:
        session.sampling_params(spec, it)  # refuses values no sampler takes
        it.params().per_scale(len(_schedule(spec, it)))
    warning = _drawing_warning(spec, items, config.strict)  # with --strict, an error before any work
    rank, world, dist, started = _distributed()
    try:
        return _run(config, spec, resolved, items, rank, world, dist, emit, warning)
    finally:
        if started:
            dist.destroy_process_group()


def _run(config: GenConfig, spec: ModelSpec, resolved: ResolvedModel, items: list[ImageItem], rank: int,
         world: int, dist: Any, emit: EventFn, warning: str | None = None) -> GenResult:
    import torch

    from ..loading import pick_device
    from ..sampling.sample import SamplingEngine, sample_images
    from ..subjects.use import SubjectSwitch

    if rank == 0:
        out_dir = session.prepare_out_dir(config.out_dir, [it.filename for it in items], overwrite=config.overwrite,
                                          skip_existing=config.skip_existing)
    else:
        out_dir = Path(config.out_dir)
    if dist is not None:
        dist.barrier()
    if rank == 0:  # every input is checked: now what the user should know before the work
        if warning:
            emit("warning", {"message": warning})
        _announce_subjects(config, items, emit)
    mine = items[rank::world]
    if config.skip_existing:
        mine = [it for it in mine if not (out_dir / it.filename).exists()]
    emit("plan", {"total": len(mine), "all": len(items), "rank": rank, "world": world})

    device_name = config.device
    if world > 1 and pick_device(config.device).type == "cuda":
        device_name = f"cuda:{torch.cuda.current_device()}"
    comps = session.open_model(resolved, device_name, config.dtype, emit)
    device, dtype = comps.device, comps.dtype
    loaded = session.load_subjects(comps, resolved, [it.subject for it in mine])
    switch = SubjectSwitch(comps.transformer)

    def subject_of(it: ImageItem) -> LoadedSubject | None:
        return None if it.subject is None else loaded[str(it.subject.path)]

    use_engine = device.type == "cuda" and (
        config.compile == "on" or (config.compile == "auto" and len(mine) >= COMPILE_AUTO_MIN_IMAGES))
    engine = SamplingEngine() if use_engine else None
    result = GenResult(model=spec.name, device=str(device))
    groups: dict[tuple, list[ImageItem]] = {}
    for it in mine:
        groups.setdefault(it.batch_key(), []).append(it)
    # Text features batch by batch, the text encoder loaded for the whole job: a batch's features
    # live only until it is sampled, so host and GPU memory stay flat from the first image to the
    # 10,000th (bench/gen_memory.py). Encoding every prompt up front, then freeing the encoder, kept
    # the features of all prompts: about 0.2 MB of RSS a prompt on toy, far more with flan-t5-xl's
    # 2048 channels, and on the GPU. The encoder's own memory is fixed, and the official pipeline
    # keeps it loaded too. Images do not change: a prompt's features do not depend on the prompts
    # sharing its encode call (padded to max_length; bit for bit on toy and tiny-infinity, on the
    # CPU and in fp16 on an H100).
    batch_text = _BatchText(comps, subject_of)
    for group in groups.values():
        for b in range(0, len(group), config.batch_size):
            batch = group[b:b + config.batch_size]
            first = batch[0]
            scales = _schedule(spec, first)
            params = first.params()
            switch.use(subject_of(first))
            text = batch_text(batch).to(device)
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
    batch_text.close()
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


class _BatchText:
    """The text features of one batch at a time, the text encoder kept loaded: a batch's prompts
    that the previous batch had (a prompt's images are consecutive in a group) keep their features,
    the others are encoded, and every other prompt's features are let go first, so at most one
    batch's prompts have features alive at once."""

    def __init__(self, comps: Components, subject_of: Callable[[ImageItem], LoadedSubject | None]) -> None:
        self.comps = comps
        self.subject_of = subject_of
        self.feats: dict[tuple[str, str | None], TextCond] = {}

    def __call__(self, batch: list[ImageItem]) -> TextCond:
        from ..models.text_encoder import TextCond

        pairs = {session.text_key(it.prompt, self.subject_of(it)): (it.prompt, self.subject_of(it)) for it in batch}
        self.feats = {key: self.feats[key] for key in pairs if key in self.feats}
        missing = [pair for key, pair in pairs.items() if key not in self.feats]
        if missing:
            self.feats.update(session.encode(self.comps, missing, keep_encoder=True))
        return TextCond.cat([self.feats[session.text_key(it.prompt, self.subject_of(it))] for it in batch])

    def close(self) -> None:
        """Drop the last features and the text encoder (on a GPU its memory goes back at once)."""
        self.feats = {}
        session.free_text_encoder(self.comps)


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
        "skip_scales": it.skip_scales,  # the last N scales not sampled (0: exact)
        "cfg_until_scale": it.cfg_until_scale,  # guidance on the first K scales only (None: every scale)
        "prune": ",".join(f"{si}:{r:g}" for si, r in it.prune) or None,  # FastVAR pruning (None: every token)
        "fast": config.fast,  # --fast: the three above from the model's preset where not given
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
