"""`arbooth eval`: how well a tuned subject is personalized, as numbers that can be checked.

Three questions, asked of images sampled with seeds 0..N-1 (per-image random streams, as
`arbooth gen` draws them):

* **fidelity**: do images of prompts naming the subject (``"a sks star on the left"``) show it?
* **prompt fidelity**: do they also show what the rest of the prompt asks for?
* **drift and diversity**: does the tuned model still draw the plain class, and do seeds still vary?

On a model of the toy world (``spec.world == "toy"``) every answer is exact: the world's pixel
detectors say whether an image shows the subject, where, how large and on which background, so
the numbers are counts of images. The subject is read from its own photos (its class and colour
layout: ``toyworld.reader``), so any toy subject can be scored. On real models the answers are feature similarities
(DINO, CLIP-I, CLIP-T; ``analysis.personalization``), which need local DINO and CLIP weights.

Every input is checked before the model loads: subject, base model, photos, prompts, weights and
the output folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..analysis.toy_scores import ImageResult, Metric, PromptResult, read_toy_subject, toy_scores
from ..config import EvalConfig, read_prompts_file
from ..errors import InvalidInputError, NotFoundError
from ..loading import ResolvedModel
from ..subjects import SubjectInfo, SubjectStore, token_in_prompt
from ..subjects.words import fill
from . import session
from .session import EventFn

# on_event kinds: "photos", "skipped", "loaded", "plan", "sample", "metrics"

#: DreamBooth-style prompts (Ruiz et al. 2023, object prompts) for real models
REAL_PROMPTS = (
    "a {token} {cls} on the beach",
    "a {token} {cls} in the jungle",
    "a {token} {cls} in the snow",
    "a {token} {cls} on a cobblestone street",
    "a {token} {cls} on top of a wooden floor",
    "a {token} {cls} with a city in the background",
    "a {token} {cls} with a mountain in the background",
    "a red {token} {cls}",
)
#: image sets of each mode: name -> (what it is, whether the subject is applied)
TOY_SETS = {"subject": ("subject prompts, tuned model", True),
            "class": ("class prompts, tuned model (drift)", True),
            "base": ("subject prompts, base model", False)}
REAL_SETS = {"subject": ("subject prompts, tuned model", True),
             "class": ("class prompt, tuned model (drift)", True),
             "base-class": ("class prompt, base model (drift)", False)}
REPORT_JSON = "report.json"


# ---- the report ----------------------------------------------------------------------------


@dataclass
class EvalReport:
    mode: str  # "toy" (exact detectors) or "real" (DINO / CLIP)
    subject: str
    subject_file: str
    subject_hash: str
    token: str
    cls: str  # the class word of the prompts
    model: str
    model_hash: str
    photos: str
    n_photos: int
    toy_subject: str | None  # the subject read from the photos (class and colours)
    photo_hits: dict[str, int]  # per toy subject, photos its detector fires on
    seeds: list[int]
    sets: dict[str, str]  # image set -> what it is
    metrics: dict[str, Metric]
    prompts: list[PromptResult]
    images: list[ImageResult]  # toy only
    notes: list[str]
    files: dict[str, str]
    seconds: float
    samples: int
    device: str
    config: dict[str, Any]
    real: dict[str, Any] | None = None  # RealMetrics.to_dict() (real mode)
    arbooth_version: str = __version__
    #: set -> uint8 images (prompts, seeds, H, W, 3); kept for callers, left out of JSON
    pixels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "pixels"}


def _plain(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return asdict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# ---- checks before any work ----------------------------------------------------------------


def resolve_subject(ref: str, store: SubjectStore | None = None) -> SubjectInfo:
    """A subject file, else the stored subject of that name, else the one with that token."""
    return session.subject_by_reference(ref, store, by_token=True)


def photos_folder(info: SubjectInfo, override: str | None) -> Path:
    """``--photos``, else the folder the subject was tuned on (its metadata's tune config)."""
    if override is not None:
        folder = Path(override)
        if not folder.is_dir():
            raise NotFoundError(f"--photos {folder} is not a folder")
        return folder
    recorded = info.config.get("photos")
    if not recorded:
        raise NotFoundError(f"subject {info.name!r} does not record the folder of its photos",
                            hint="pass --photos DIR")
    folder = Path(recorded)
    if not folder.is_dir():
        raise NotFoundError(f"the photos folder of subject {info.name!r}, {folder}, is gone",
                            hint="pass --photos DIR with the subject's photos")
    return folder


def load_photos(folder: Path, token: str, cls: str, height: int, width: int,
                emit: EventFn) -> list[np.ndarray]:
    """The folder's readable photos at the model's image size (as tuning crops them), uint8 HW3."""
    from ..tuning.data import load_subject_images

    images = load_subject_images(folder, token=token, cls=cls, height=height, width=width,
                                 on_skip=lambda m: emit("skipped", {"message": m}))
    return [im.pixels_HW3 for im in images]


def read_eval_prompts(path: str | Path, token: str) -> list[str]:
    """The prompts of ``--prompts FILE`` (one a line, ``#`` comments); each must name the token."""
    jobs = read_prompts_file(path)
    out: list[str] = []
    for job in jobs:
        where = f"prompts file {path} line {job.line}"
        settings = [k for k in ("seed", "num_images", "cfg", "tau", "top_k", "top_p", "size", "aspect")
                    if getattr(job, k) is not None]
        if settings:
            raise InvalidInputError(f"{where}: eval takes plain prompts, not settings ({', '.join(settings)})",
                                    hint="--seeds sets the images of every prompt")
        if not token_in_prompt(token, job.prompt):
            raise InvalidInputError(f"{where}: {job.prompt!r} does not name the subject's token {token!r}")
        if job.prompt in out:
            raise InvalidInputError(f"{where}: {job.prompt!r} is repeated")
        out.append(job.prompt)
    return out


@dataclass
class _Plan:
    """What will be sampled and how it will be measured (built before the model loads)."""

    mode: str
    cls: str
    prompts: list[str]
    class_prompts: list[str]  # toy: one per prompt; real: the one drift prompt
    sets: dict[str, list[str]]  # set -> its prompts
    with_subject: dict[str, bool]
    toy: Any = None
    photo_hits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _toy_plan(info: SubjectInfo, folder: Path, photos: list[np.ndarray], user_prompts: list[str] | None) -> _Plan:
    from ..subjects import class_prompt_of
    from ..toyworld.subjects import class_prompts, subject_prompts

    toy, hits = read_toy_subject(photos, folder, prefer_cls=info.cls)
    notes = []
    if toy.cls != info.cls:
        notes.append(f"the subject was tuned as class {info.cls!r}; the prompts use the toy class {toy.cls!r}")
    if user_prompts is None:
        try:
            prompts = subject_prompts(toy, info.token)
        except ValueError as exc:
            raise InvalidInputError(f"the built-in toy prompts cannot use this subject: {exc}",
                                    hint="pass --prompts FILE") from None
        classes = class_prompts(toy)
    else:
        prompts = user_prompts
        classes = [class_prompt_of(p, info.token, toy.cls) for p in prompts]
    sets = {"subject": prompts, "class": classes, "base": prompts}
    return _Plan("toy", toy.cls, prompts, classes, sets, {k: v[1] for k, v in TOY_SETS.items()}, toy, hits, notes)


def _real_plan(info: SubjectInfo, user_prompts: list[str] | None) -> _Plan:
    from ..analysis.personalization import DEFAULT_CLASS_PROMPT

    prompts = user_prompts or [fill(p, token=info.token, cls=info.cls) for p in REAL_PROMPTS]
    drift = fill(DEFAULT_CLASS_PROMPT, token=info.token, cls=info.cls)
    sets = {"subject": prompts, "class": [drift], "base-class": [drift]}
    return _Plan("real", info.cls, prompts, [drift], sets, {k: v[1] for k, v in REAL_SETS.items()})


def evaluate(config: EvalConfig, *, on_event: EventFn | None = None, resolved: ResolvedModel | None = None,
             components: Any = None) -> EvalReport:
    """Sample the subject's prompts (and the drift and base-model references), measure them, and
    write the grids and report.json to ``config.out_dir`` if set.

    ``resolved``/``components``: a model already resolved or built (the run frees parts of the
    components); by default the subject's base model is resolved and loaded as `arbooth gen` does.
    """
    from ..models.schedules import model_scales, pixel_size

    emit = on_event or session.no_events
    config.validate()
    info = resolve_subject(config.subject)
    resolved = session.resolve(config.model, [info], resolved=resolved)
    session.check_device(config.device)
    spec = resolved.spec
    if spec.world not in (None, "toy"):
        raise InvalidInputError(f"model {spec.name} draws the {spec.world!r} world, which eval has no detectors for")
    scales = model_scales(spec.sampling.size, num_scales=spec.num_scales or None)
    params = _sampling_params(spec, config, len(scales))  # bad values: one line before any loading
    height, width = pixel_size(scales, spec.vae.token_stride)
    folder = photos_folder(info, config.photos)
    photos = load_photos(folder, info.token, info.cls, height, width, emit)
    user_prompts = read_eval_prompts(config.prompts_file, info.token) if config.prompts_file else None
    if spec.world == "toy":
        plan = _toy_plan(info, folder, photos, user_prompts)
    else:
        from ..analysis.personalization import check_real_metric_weights

        check_real_metric_weights(config.dino, config.clip)
        plan = _real_plan(info, user_prompts)
    emit("photos", {"folder": str(folder), "photos": len(photos), "toy_subject": None if plan.toy is None
                    else plan.toy.name, "hits": plan.photo_hits})
    paths: dict[str, Path] = {}
    if config.out_dir is not None:
        files = {"json": REPORT_JSON, **{s: f"{s}.png" for s in plan.sets}}
        paths = session.prepare_report_dir(config.out_dir, files, config.overwrite)
    return _Evaluation(config, resolved, info, plan, scales, params, folder, photos, paths, emit).run(components)


def _sampling_params(spec: Any, c: EvalConfig, num_scales: int) -> Any:
    """The model's sampling settings with `gen`'s speed options of ``c``, checked."""
    params = replace(session.sampling_params(spec), **session.speed_settings(spec, c.fast, num_scales, c))
    params.per_scale(num_scales)
    return params


# ---- the run -------------------------------------------------------------------------------


class _Evaluation:
    def __init__(self, config: EvalConfig, resolved: ResolvedModel, info: SubjectInfo, plan: _Plan, scales: Any,
                 params: Any, folder: Path, photos: list[np.ndarray], paths: dict[str, Path], emit: EventFn) -> None:
        self.c, self.resolved, self.info, self.plan, self.scales = config, resolved, info, plan, scales
        self.params = params
        self.folder, self.photos, self.paths, self.emit = folder, photos, paths, emit
        self.seeds = list(range(config.seeds))

    def run(self, comps: Any = None) -> EvalReport:
        t0 = time.perf_counter()
        pixels = self._sample(comps)
        plan, info = self.plan, self.info
        self.emit("metrics", {"mode": plan.mode})
        real = None
        if plan.mode == "toy":
            metrics, rows, images = toy_scores(plan.toy, info.token, plan.prompts, plan.class_prompts, pixels,
                                               self.seeds)
        else:
            metrics, rows, real = self._real_scores(pixels)
            images = []
        sets = TOY_SETS if plan.mode == "toy" else REAL_SETS
        report = EvalReport(
            mode=plan.mode, subject=info.name, subject_file=str(info.path), subject_hash=self.subject_hash,
            token=info.token, cls=plan.cls, model=self.resolved.spec.name, model_hash=self.resolved.model_hash,
            photos=str(self.folder), n_photos=len(self.photos), toy_subject=None if plan.toy is None else plan.toy.name,
            photo_hits=plan.photo_hits, seeds=self.seeds, sets={k: v[0] for k, v in sets.items()}, metrics=metrics,
            prompts=rows, images=images, notes=plan.notes, files={k: str(p) for k, p in self.paths.items()},
            seconds=0.0, samples=self.done, device=str(self.device), config=self.c.to_dict(), real=real,
            pixels=pixels)
        report.seconds = time.perf_counter() - t0
        if self.paths:
            self._write(report)
        return report

    # -- sampling ----------------------------------------------------------------------------

    def _sample(self, comps: Any) -> dict[str, np.ndarray]:
        """Every set's images, (prompts, seeds, H, W, 3) uint8; the base model's sets first."""
        import torch

        from ..models.text_encoder import TextCond
        from ..sampling.sample import sample_images
        from ..subjects.use import SubjectSwitch

        c, plan = self.c, self.plan
        comps = session.open_model(self.resolved, c.device, c.dtype, self.emit, components=comps)
        self.device = device = comps.device
        subject = session.load_subject(comps, self.resolved, self.info)
        assert subject is not None
        self.subject_hash = subject.sha256
        switch = SubjectSwitch(comps.transformer)
        with_subject = {s: subject if plan.with_subject[s] else None for s in plan.sets}
        text = session.encode(comps, [(p, with_subject[s]) for s, ps in plan.sets.items() for p in ps])
        params = self.params
        order = sorted(plan.sets, key=lambda s: plan.with_subject[s])  # base model first: one switch
        total = sum(len(plan.sets[s]) * len(self.seeds) for s in order)
        batch = self._batch_size(comps, total)
        self.emit("plan", {"samples": total, "batch": batch, "sets": {s: len(plan.sets[s]) for s in order},
                           "seeds": len(self.seeds)})
        self.done = 0
        out: dict[str, np.ndarray] = {}
        for s in order:
            switch.use(with_subject[s])
            items = [(pi, p, seed) for pi, p in enumerate(plan.sets[s]) for seed in self.seeds]
            imgs = []
            for b in range(0, len(items), batch):
                chunk = items[b:b + batch]
                cond = TextCond.cat([text[session.text_key(p, with_subject[s])] for _, p, _ in chunk]).to(device)
                gens = [torch.Generator(device=device).manual_seed(seed) for *_, seed in chunk]
                img = sample_images(comps.transformer, comps.vae, cond, self.scales, params, gens)
                imgs.append(img.permute(0, 2, 3, 1).cpu().numpy())
                self.done += len(chunk)
                self.emit("sample", {"done": self.done, "total": total, "set": s})
            arr = np.concatenate(imgs)
            out[s] = arr.reshape(len(plan.sets[s]), len(self.seeds), *arr.shape[1:])
        switch.use(None)
        self.comps = comps
        return out

    def _batch_size(self, comps: Any, total: int) -> int:
        from ..sampling.sample import guided_images_that_fit

        if self.c.batch_size:
            return self.c.batch_size
        if self.device.type != "cuda":
            return min(total, 16)
        return max(1, min(total, 64, guided_images_that_fit(comps.transformer, self.scales, self.device, 0.5)))

    # -- real models -------------------------------------------------------------------------

    def _real_scores(self, pixels: dict[str, np.ndarray]) -> tuple[dict[str, Metric], list[PromptResult], dict]:
        import torch

        from ..analysis.personalization import (extract_batched, load_real_metric_models,
                                                real_metrics, subject_fidelity, text_alignment)
        from ..subjects import class_prompt_of

        plan, info = self.plan, self.info
        self.comps.transformer = self.comps.vae = None  # room for the feature models
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        models = load_real_metric_models(self.c.dino, self.c.clip, self.device)

        def tensor(a_NHW3: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a_NHW3)).permute(0, 3, 1, 2)

        S = len(self.seeds)
        gen = tensor(pixels["subject"].reshape(-1, *pixels["subject"].shape[2:]))
        ref = tensor(np.stack(self.photos))
        per_image_prompts = [p for p in plan.prompts for _ in self.seeds]
        bs = self.c.batch_size or 16
        m = real_metrics(models, generated_B3HW=gen, prompts=per_image_prompts, reference_N3HW=ref,
                         token=info.token, cls=info.cls, tuned_class_S3HW=tensor(pixels["class"][0]),
                         base_class_S3HW=tensor(pixels["base-class"][0]), batch_size=bs)
        # per prompt, from the same features (each prompt has S images, so their means average to the total)
        dino_gen, dino_ref = extract_batched(models.dino, gen, bs), extract_batched(models.dino, ref, bs)
        clip_gen, clip_ref = extract_batched(models.clip_image, gen, bs), extract_batched(models.clip_image, ref, bs)
        rows = []
        for pi, p in enumerate(plan.prompts):
            sl = slice(pi * S, (pi + 1) * S)
            cp = class_prompt_of(p, info.token, info.cls)
            txt = models.clip_text([cp]).detach().to("cpu", torch.float64).expand(S, -1)
            rows.append(PromptResult(pi, p, cp, S, dino=subject_fidelity(dino_gen[sl], dino_ref).mean,
                                     clip_i=subject_fidelity(clip_gen[sl], clip_ref).mean,
                                     clip_t=text_alignment(clip_gen[sl], txt).mean))

        def mean(stat: Any, unit: str, meaning: str) -> Metric:
            return Metric(stat.mean, stat.n, None, stat.std, unit, meaning)

        metrics = {
            "dino": mean(m.dino, "images", "DINO cosine of each image with each photo (subject fidelity)"),
            "clip_i": mean(m.clip_i, "images", "CLIP image cosine of each image with each photo"),
            "clip_t": mean(m.clip_t, "images", "CLIP cosine of each image with its prompt, token -> class word"),
            "diversity": (mean(m.diversity, "prompts", "mean pairwise DINO distance (1 - cos) between seeds")
                          if m.diversity is not None else Metric(None, len(rows), None, None, "prompts",
                                                                 "needs --seeds 2 or more")),
            "drift": (Metric(m.drift, m.drift_similarity.n, None, m.drift_similarity.std, "images",
                             f"1 - DINO cosine of tuned and base images of {plan.class_prompts[0]!r}, seed by seed")
                      if m.drift_similarity is not None else Metric(None, 0)),
            "pres": (mean(m.pres, "images", f"DINO cosine of the tuned model's {plan.class_prompts[0]!r} images "
                                            "with each photo (ARBooth's PRES; low: kept class)")
                     if m.pres is not None else Metric(None, 0)),
        }
        return metrics, rows, m.to_dict()

    # -- outputs -----------------------------------------------------------------------------

    def _write(self, report: EvalReport) -> None:
        from PIL import Image

        from ..analysis.plots import labelled_grid
        from ..sampling.writers import write_json, write_png

        hits = {"subject": "subject_hits", "base": "base_hits", "class": "class_hits"}
        for s, arr in report.pixels.items():
            prompts = self.plan.sets[s]
            labels = []
            for pi in range(len(prompts)):
                lab = f"prompt {pi + 1}"
                if report.mode == "toy":
                    lab += f"\n{getattr(report.prompts[pi], hits[s])}/{len(self.seeds)} show it"
                labels.append(lab)
            W = arr.shape[3]
            rows = [[Image.fromarray(arr[pi, si]) for si in range(arr.shape[1])] for pi in range(arr.shape[0])]
            grid = labelled_grid(rows, labels, [f"seed {x}" for x in self.seeds], thumb=min(256, max(128, W)),
                                 title=f"{s}: {report.sets[s]}")
            meta = {"model": report.model, "model_hash": report.model_hash, "subject": report.subject,
                    "subject_hash": report.subject_hash, "seeds": report.seeds, "prompts": prompts, "set": s,
                    "analysis": "eval", "arbooth_version": __version__}
            write_png(self.paths[s], np.asarray(grid), meta)
        write_json(self.paths["json"], report.to_dict())  # last: a report.json means the run finished


__all__ = ["EvalReport", "evaluate", "resolve_subject", "photos_folder", "read_eval_prompts", "REAL_PROMPTS"]
