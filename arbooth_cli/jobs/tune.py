"""`arbooth tune` as a library call: photos in, a subject file in the local store out.

One iteration = one forward of a batch that holds ``batch_size`` subject photos (teacher-forced
on their bit labels, with bitwise self-correction noise and text dropout) and ``batch_size``
class-prompt token maps from the prior pool (``tuning.prior``: teacher-forced on the frozen
model's own samples), one backward of ``weighted CE + prior_weight * distillation``
(``tuning.losses.arbooth_loss``) and one optimizer step inside the backward pass. Checkpoints
(``tuning.checkpoints``) are written on a background thread and resume exactly.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import paths
from .._version import __version__
from ..atomic import raise_if_disk_full, remove_partials, writable_folder
from ..checkpoint_io import sha256_file, write_safetensors
from ..config import MODULE_TYPES, SCALE_SCHEDULES, TuneConfig
from ..errors import (ArboothError, CheckpointError, InvalidInputError, ResourceError, RunBusyError,
                      TrainingDivergedError)
from ..loading import ResolvedModel, pick_device
from ..models.bsq_vae import teacher_forcing
from ..models.build import Components
from ..models.offload import HostOffload
from ..models.recompute import KeptAttention, kept_attention_bytes
from ..models.schedules import SIZE_SCALES, get_schedule, model_scales, pixel_size
from ..models.text_encoder import TextCond
from ..models.transformer import EAGER_OPS, Scale, compiled_block_ops, rope_frame
from ..modelspec import ModelSpec
from ..subjects import FORMAT, SUBJECT_FILE, SubjectExistsError, SubjectInfo, SubjectStore, lowrank_file
from ..subjects.embedding import splice_subject, word_token_span
from ..subjects.words import fill, word_char_span
from ..tuning.checkpoints import (CHECKPOINT_DIR, CheckpointWriter, HostSnapshot, checkpoint_writer, find_checkpoint,
                                  read_checkpoint, read_state)
from ..tuning.data import (epoch_order, load_subject_images, moved_copies, recoloured_copies, to_tensor,
                           with_augmented_copies, zoomed_copies)
from ..tuning.losses import arbooth_loss, scale_weights, token_weights
from ..tuning.memory import activation_bytes, attention_only, plan_kept, probe_fits, recomputed_blocks
from ..tuning.lowrank import LowRankReport, compress
from ..tuning.optim import TuningAdamW
from ..tuning.plateau import plateaued
from ..tuning.pool_store import PoolStore
from ..tuning.prior import (POOL_COMPILE_MIN, POOL_FILE, PriorPool, inputs_from_bits, load_pool, pool_batch,
                            pool_key, prior_class_prompts, sample_prior_pool, save_pool)
from ..tuning.selection import parse_blocks, select_params
from . import session
from .session import EventFn

# on_event kinds: "skipped", "loaded", "trainable", "pool", "start", "step", "validation",
# "checkpoint", "lowrank", "saved"

#: settings a resumed run may change (the rest must equal the checkpoint's)
RESUMABLE_CHANGES = {"steps", "early_stop", "resume", "overwrite", "checkpoint_every", "validate_every", "validation_prompts",
                     "log_every", "device", "save_rank", "run_dir", "name", "compile", "allow_common_token",
                     "memory", "memory_limit", "grad_checkpointing"}


#: --early-stop: the subject loss is judged in means of this many steps, and must fall by this share
PLATEAU_WINDOW = 25
PLATEAU_DELTA = 0.01


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during tuning; a checkpoint was written (``checkpoint``) unless it says None.
    ``pool``: (samples kept, samples wanted) when it came while the prior pool was drawn."""

    def __init__(self, step: int, checkpoint: Path | None, *, pool: tuple[int, int] | None = None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.pool = step, checkpoint, pool


@dataclass
class TuneResult:
    name: str
    subject: str  # path of the saved subject file
    token: str
    cls: str
    model: str
    model_hash: str
    steps: int
    seconds: float
    losses: dict[str, float]  # the last logged values
    trainable_params: int
    trainable_tensors: int
    peak_gpu_bytes: int | None
    run_dir: str
    validation_images: list[str] = field(default_factory=list)
    lowrank: dict[str, Any] | None = None
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# planning helpers (no weights needed)
# ---------------------------------------------------------------------------------------------


def resolve_size(spec: ModelSpec, resolution: str | None) -> str:
    """A named size of ``spec`` from ``--resolution``: a size name (1M) or a square pixel size (1024)."""
    text = (resolution or spec.sampling.size).strip()
    if text in spec.sizes:
        return text
    side = text.lower().split("x")
    if len(side) in (1, 2) and all(s.isdigit() for s in side) and len(set(side)) == 1:
        for size in spec.sizes:
            if size in SIZE_SCALES and get_schedule(size, 1.0).pixel_hw == (int(side[0]),) * 2:
                return size
    raise InvalidInputError(f"model {spec.name} has no resolution {text!r}; sizes: {', '.join(spec.sizes)}"
                            " (1M = 1024x1024)")


def _scale_weights(config: TuneConfig, scales: tuple[Scale, ...]) -> Tensor:
    sched = config.scale_weights
    if sched in SCALE_SCHEDULES:
        return scale_weights(scales, sched)  # type: ignore[arg-type]
    try:
        return scale_weights(scales, [float(x) for x in sched.split(",")])
    except ValueError as exc:
        raise InvalidInputError(f"--scale-weights: {exc}") from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@contextmanager
def _memory_cap(device_name: str, limit_gib: float | None) -> Iterator[None]:
    """--memory-limit on a GPU: the CUDA allocator refuses to hold more than the limit for the
    length of the run (the process's previous fraction is restored after it)."""
    device = pick_device(device_name)
    if limit_gib is None or device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    before = getter(index) if getter is not None else 1.0
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gib * 2**30 / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(before, index)


def _expandable_segments() -> None:
    """Let the CUDA allocator grow segments instead of caching blocks of every size: tuning
    allocates buffers of many sizes (scales, text lengths, optimizer temporaries), which otherwise
    leaves about twice the live memory reserved. Respects a user's PYTORCH_CUDA_ALLOC_CONF."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    try:
        with warnings.catch_warnings():  # newer torch renames this setter and warns
            warnings.simplefilter("ignore", FutureWarning)
            torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError):  # older torch: keep the default allocator
        pass


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


#: TuneConfig fields that, unset (None), take the model's TuningDefaults value
_MODEL_DEFAULTED = ("lr", "validation_prompts", "augment_zoom", "zoom_in", "zoom_places", "photo_share", "drop_path", "ema",
                    "subject_vectors", "recolour")
#: what a run checkpointed before the option existed ran with (its saved config has None)
_BEFORE_OPTION = {"augment_zoom": 0.0, "zoom_in": 0.0, "zoom_places": 1, "photo_share": 0.0, "ema": 0.0, "recolour": 0}
#: the model defaults that changed after some checkpoints were written (the options above, and two
#: whose value was always recorded): a refused resume names the new default
_NEWER_DEFAULTS = (*_BEFORE_OPTION, "drop_path", "subject_vectors")


@dataclass
class _Batch:
    """Where the next photos come from: successive random permutations of the photos."""

    order: Tensor
    pos: int


class _Run:
    """State of one tuning run (kept in one object so checkpoints can save all of it)."""

    def __init__(self, config: TuneConfig, resolved: ResolvedModel, emit: EventFn,
                 components: Components | None = None) -> None:
        self.spec = resolved.spec
        self._recolour_asked = config.recolour is not None  # a model's default says nothing when it finds no view
        # the model's defaults for what is not set, recorded in checkpoints and the subject's metadata
        config = config.with_(**{k: getattr(self.spec.tuning, k) for k in _MODEL_DEFAULTED
                                 if getattr(config, k) is None and getattr(self.spec.tuning, k) is not None})
        # the photos folder as an absolute path: `arbooth eval` finds it from any folder later
        config = config.with_(photos=str(Path(config.photos).expanduser().resolve()))
        self.config, self.resolved, self.emit = config, resolved, emit
        self.components = components
        self.store = SubjectStore()
        self.name = config.subject_name
        self.run_dir = Path(config.run_dir) if config.run_dir else paths.store_entry(
            paths.runs_dir(paths.home()), self.name, "run")
        self.size = resolve_size(self.spec, config.resolution)
        self.scales = model_scales(self.size, num_scales=self.spec.num_scales or None)
        self.h, self.w = pixel_size(self.scales, self.spec.vae.token_stride)
        n = len(self.scales)
        if config.train_scales is not None and config.train_scales > n:
            raise InvalidInputError(f"--train-scales {config.train_scales}: {self.spec.name} at {self.size} has {n} "
                                    f"scales", hint=f"pass 1 to {n}, or leave it out to train on every scale")
        if config.move_places and not (self.spec.tuning.place_phrase_re and self.spec.tuning.place_phrase
                                       and self.spec.tuning.position_words):
            raise InvalidInputError(f"--move-places: {self.spec.name}'s captions say no places a photo could move to",
                                    hint="leave --move-places out (it is for models whose captions say places, as toy's)")
        if config.recolour and not (self.spec.tuning.background_colours and self.spec.tuning.background_phrase_re):
            raise InvalidInputError(f"--recolour: {self.spec.name}'s captions name no background colours to repaint in",
                                    hint="leave --recolour out (it is for models whose captions name the background, as toy's)")
        # --train-scales K: the forward and the loss stop after scale K; the attention is
        # block-causal, so the first K scales' logits are those of the whole forward
        self.train_L = sum(t * h * w for t, h, w in self.scales[: config.train_scales or n])
        self.validation_images: list[str] = []
        self.compiled = False  # set once the device is known
        self._stop = False
        self.writer = CheckpointWriter()
        self.run_peak: int | None = None  # the GPU peak before --memory auto reset the statistics
        self.snapshot = HostSnapshot()  # host buffers of checkpoint snapshots (pinned on CUDA), reused

    # ---- checks before any heavy work -----------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (one per subject name) for the whole run: a second tune of the same
        name, with or without --overwrite, fails at once instead of clobbering this one."""
        from filelock import FileLock, Timeout

        path = paths.run_lock(paths.home(), self.name)
        ldir = path.parent
        try:
            ldir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path))
            lock.acquire(timeout=0)
        except Timeout:
            raise RunBusyError(f"another arbooth tune of {self.name!r} is running (its run folder is {self.run_dir})",
                               hint="wait for it to finish, or tune under another --name") from None
        except OSError as exc:
            raise_if_disk_full(exc)
            raise ResourceError(f"cannot write to {ldir}: {exc.strerror or exc}",
                                hint="set ARBOOTH_HOME to a writable directory") from None
        try:
            yield
        finally:
            lock.release()

    def preflight(self) -> Path | None:
        """Every check that needs no weights, and the run folder made and probed; returns the
        checkpoint to resume from, if any."""
        c = self.config
        if self.store.has(self.name) and not (c.overwrite or c.resume):
            raise SubjectExistsError(self.name)
        self._check_token()
        if c.validate_every:
            for p in c.validation_prompts or ():
                word_char_span(fill(p, token=c.token, cls=c.cls), c.token)  # each must name the subject
        try:
            parse_blocks(c.blocks, self.spec.transformer.depth)
        except ValueError as exc:
            raise InvalidInputError(f"--blocks: {exc}") from None
        _scale_weights(c, self.scales)
        if self.components is None:
            session.check_device(c.device)
        self._prepare_run_dir()
        ckpt = find_checkpoint(self.run_dir)
        if c.resume:
            if ckpt is None:
                if self.store.has(self.name):
                    raise InvalidInputError(f"subject {self.name!r} is complete: its run left no checkpoint to resume",
                                            hint="pass --overwrite to tune it again, or choose another --name")
                self.emit("note", {"message": f"no checkpoint in {self.run_dir} yet: starting at step 0"})
                return None
            state = read_state(ckpt)
            saved = TuneConfig.from_dict(state["config"], where=str(ckpt / "state.json"))
            # a checkpoint written before an option existed ran as the option's "off" says
            before = {k: v for k, v in _BEFORE_OPTION.items() if getattr(saved, k) is None}
            if saved.drop_path is None and c.drop_path is not None:  # it ran at the transformer's own rate
                before["drop_path"] = self.spec.transformer.drop_path_rate
            saved = saved.with_(**before)
            diff = sorted(k for k, v in saved.to_dict().items()
                          if k not in RESUMABLE_CHANGES and v != c.to_dict()[k])
            if diff:
                hint = "use the same settings (only --steps and the logging/saving ones may change)"
                for k in diff:  # what the model-defaulted options ran with, and a default that changed since
                    if k not in _MODEL_DEFAULTED or isinstance(getattr(saved, k), tuple):
                        continue
                    ran, default = getattr(saved, k), getattr(self.spec.tuning, k)
                    hint += f"; the checkpoint ran with --{k.replace('_', '-')} {ran}"
                    if k in _NEWER_DEFAULTS and default is not None and ran != default:
                        hint += f" (the {self.spec.name} model's default is {default} in this version)"
                raise InvalidInputError(f"--resume with other settings than the checkpoint's: {', '.join(diff)}",
                                        hint=hint)
            if state["model_hash"] != self.resolved.model_hash:
                raise InvalidInputError("the checkpoint was made from another version of the model's files")
            if state["step"] > c.steps:
                raise InvalidInputError(f"the checkpoint is at step {state['step']}, past --steps {c.steps}")
            return ckpt
        if ckpt is not None and not c.overwrite:
            raise InvalidInputError(f"a run named {self.name!r} left a checkpoint in {self.run_dir}",
                                    hint="pass --resume to continue it, --overwrite to start again, "
                                         "or --name to tune under another name")
        return None

    def _check_token(self, tokenizer: Any = None) -> None:
        """Refuse a token the model already reads as a word (it would hijack every prompt using it)."""
        why = None if self.config.allow_common_token else session.common_word(self.spec, self.config.token, tokenizer)
        if why:
            raise InvalidInputError(f"--token {self.config.token}: {why}, so every prompt with that word would "
                                    "draw the subject", hint="pick a rare word (e.g. sks), or pass --allow-common-token")

    def _prepare_run_dir(self) -> None:
        """Make the run folder, check that it takes files, and clear what a killed run left half-written."""
        writable_folder(self.run_dir, "the run folder",
                        hint="pass --run-dir DIR, or set ARBOOTH_HOME to a writable directory")
        for leftover in remove_partials(self.run_dir):
            self.emit("note", {"message": f"removed {leftover.name}, left half-written by an earlier run"})

    # ---- setup -----------------------------------------------------------------------------

    def load(self) -> None:
        c = self.config
        self.images = load_subject_images(c.photos, token=c.token, cls=c.cls, height=self.h, width=self.w,
                                          caption=c.caption, on_skip=lambda m: self.emit("skipped", {"message": m}))
        for im in self.images:
            word_char_span(im.caption, c.token)  # every caption must name the subject
        device = pick_device(c.device)
        if device.type == "cuda":
            _expandable_segments()
        comps = session.open_model(self.resolved, str(device), c.dtype, self.emit, components=self.components,
                                   details={"photos": len(self.images), "resolution": f"{self.w}x{self.h}",
                                            "scales": len(self.scales)})
        self.components = None  # the run owns (and frees parts of) them from here
        self.device, self.dtype = comps.device, comps.dtype
        self.compiled = c.compile == "on" or (c.compile == "auto" and self.device.type == "cuda")
        assert comps.transformer is not None and comps.vae is not None and comps.text_encoder is not None
        self.transformer, self.vae = comps.transformer, comps.vae

        # Text features and photo features once; then the text encoder and the tokenizer's
        # encoder leave the device.
        tokenizer = comps.text_encoder.tokenizer
        self._check_token(tokenizer)
        train = with_augmented_copies(self.images, c.augment, shift=c.augment_shift, scale=c.augment_scale,
                                      seed=c.seed) if c.augment else list(self.images)
        t = self.spec.tuning
        # the views --recolour repaints: the photos and their shrunk and moved copies, whose blends
        # with the background are one pixel wide (not the enlarged or --augment copies: wider)
        repaintable = list(self.images)
        for factor in (c.augment_zoom, c.zoom_in):  # of the photos themselves, not of their --augment copies
            if factor:
                zoomed = zoomed_copies(self.images, factor, t.size_words, t.position_words, places=c.zoom_places or 1,
                                       place_phrase_re=t.place_phrase_re, place_phrase=t.place_phrase,
                                       place_aliases=t.place_aliases)
                train += zoomed
                repaintable += zoomed if factor < 1 else []
        if c.move_places:
            moved = moved_copies(self.images, t.position_words, places=c.move_places, place_phrase_re=t.place_phrase_re,
                                 place_phrase=t.place_phrase, place_aliases=t.place_aliases)
            if not moved:
                self.emit("note", {"message": "--move-places: no photo could move (a photo moves when its background "
                                              "is one colour and its caption says one place)"})
            train += moved
            repaintable += moved
        if c.recolour:
            recoloured = recoloured_copies(repaintable, t.background_colours, t.background_phrase_re,
                                           copies=c.recolour, seed=c.seed)
            if not recoloured and self._recolour_asked:
                self.emit("note", {"message": "--recolour: no view could be repainted (a view is repainted when its "
                                              "background is one colour its caption names, in a named colour no photo "
                                              "shows as its background, that neither the subject nor the view shows and no blend of the "
                                              "subject's colours looks like)"})
            train += recoloured
        self.n_train, self.n_photos = len(train), len(self.images)
        captions = [im.caption for im in train]
        if c.flip:
            captions = captions + captions
        self.class_prompts = prior_class_prompts(c, captions)
        vprompts = [fill(p, token=c.token, cls=c.cls) for p in c.validation_prompts] if c.validate_every else []
        feats = session.encode(comps, [(p, None) for p in [*captions, *self.class_prompts, *vprompts]],
                               device=self.device)
        self.caption_text = [feats[(p, None)] for p in captions]
        self.caption_span = [word_token_span(tokenizer, p, c.token) for p in captions]
        self.class_word_C = self._class_word_features(tokenizer, captions) if c.subject_init == "class" else None
        self.class_texts = [feats[(p, None)] for p in self.class_prompts]
        self.val_prompts = [(p, feats[(p, None)], word_token_span(tokenizer, p, c.token)) for p in vprompts]
        with torch.no_grad():
            x = to_tensor(train, flip=c.flip)
            self.raw = [self.vae.encode_features(x[i:i + 1].to(self.device)) for i in range(x.shape[0])]
        self.vae.encoder.to("meta")  # the photos are encoded: free its memory
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _class_word_features(self, tokenizer: Any, captions: list[str]) -> Tensor:
        """--subject-init class: the mean text feature of the class word's tokens over the
        captions that say it (the subject starts as the class reads)."""
        c = self.config
        rows = []
        for prompt, feats in zip(captions, self.caption_text):
            try:
                a, b = word_token_span(tokenizer, prompt, c.cls)
            except InvalidInputError:
                continue
            rows.append(feats.feats_BTC[0, a:b].float())
        if not rows:
            raise InvalidInputError(f"--subject-init class: no caption says the class word {c.cls!r}",
                                    hint="use --subject-init zero, or captions with the class word")
        return torch.cat(rows).mean(0)

    def build_pool(self) -> PriorPool | None:
        """The prior pool: one kept from an earlier tune with the same settings (model files, class
        prompts, seed, size, sampling), else drawn; Ctrl-C keeps what was drawn in the run folder,
        and --resume goes on from there. A complete pool is kept for later tunes."""
        c = self.config
        if not c.prior:
            return None
        n = c.prior_pool or c.steps * c.batch_size
        compiled = self.compiled and n >= POOL_COMPILE_MIN
        batch = pool_batch(self.transformer, self.scales, c.memory,
                           free=self._gpu_room()[0] if self.device.type == "cuda" else None)
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        numerics = (f"{where}/{str(self.dtype).replace('torch.', '')}/{'compiled' if compiled else 'eager'}/"
                    f"batch {batch}/arbooth {__version__}/torch {torch.__version__}/cuda {torch.version.cuda}")
        key = pool_key(c, self.resolved.model_hash, self.scales, n, self.class_prompts, numerics)
        store = PoolStore(paths.home())
        pool = store.get(key)
        if pool is not None:
            self.emit("pool", {"done": n, "total": n, "cached": True})
            self.emit("note", {"message": f"reused the prior pool {key} of {', '.join(map(repr, self.class_prompts))}"
                                          f" ({n} samples; 'arbooth pools' lists and removes kept pools)"})
            return pool
        partial = self.run_dir / POOL_FILE
        pool = load_pool(partial, key)
        # compiled stages cost ~20 s once and save ~30% per sample (infinity-2b, H200)
        pool = sample_prior_pool(self.transformer, self.vae, self.class_texts, self.scales, n, seed=c.seed + 10_000_019,
                                 tau=c.prior_tau, top_p=c.prior_top_p, batch=batch,
                                 compile=compiled, start_from=pool,
                                 stop=lambda: self._stop,
                                 on_progress=lambda done, total: self.emit("pool", {"done": done, "total": total}))
        if not pool.complete:
            save_pool(partial, pool, key)
            raise TuneInterrupted(0, None, pool=(pool.done, n))
        try:  # keeping the pool for later tunes is a bonus: a failure to keep it does not stop the run
            store.put(key, pool, model=self.spec.name, class_prompts=self.class_prompts, created=_now())
            partial.unlink(missing_ok=True)
        except ResourceError as exc:
            self.emit("note", {"message": f"the prior pool could not be kept for later tunes: {exc}"})
        return pool

    def setup_training(self) -> None:
        c = self.config
        tr = self.transformer
        if not c.validate_every:  # the decoder only draws validation images
            self.vae.decoder.to("meta")
        if c.drop_path is not None:
            tr.cfg = replace(tr.cfg, drop_path_rate=c.drop_path)
        blocks = parse_blocks(c.blocks, tr.cfg.depth)
        self.tuned_names = select_params(tr, tr.blocks, c.layers, blocks)
        params = dict(tr.named_parameters())
        self.tuned = {n: params[n] for n in self.tuned_names}
        for p in self.tuned.values():
            p.requires_grad_(True)
        S = c.subject_vectors
        start_SC = torch.zeros(S, tr.cfg.text_channels, device=self.device)
        if self.class_word_C is not None:
            start_SC[:] = self.class_word_C.to(self.device, start_SC.dtype)
        self.subject_SC = torch.nn.Parameter(start_SC) if S else None
        trainable = list(self.tuned.values()) + ([self.subject_SC] if self.subject_SC is not None else [])
        by_type = {}
        for layer in c.layers:
            keys = MODULE_TYPES[layer]
            by_type[layer] = sum(p.numel() for n, p in self.tuned.items() if any(f".{k}" in n for k in keys))
        by_type["subject_embedding"] = self.subject_SC.numel() if self.subject_SC is not None else 0
        self.trainable_params = sum(p.numel() for p in trainable)
        # --ema: float32 moving sums of what trains, from zero, updated after every step; the subject
        # is saved from them divided by 1 - K^steps (an average of the steps' weights only: without
        # it a run stopped early, at step t, would keep K^t of the starting weights)
        self.ema = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.weights().items()} if c.ema else None
        self.base_values = ({n: p.detach().to("cpu", copy=True) for n, p in self.tuned.items()}
                            if c.save_rank else None)
        kind = c.optimizer_state
        if kind == "auto":
            kind = "fp8" if self.device.type == "cuda" and self.trainable_params > 200_000_000 else "fp32"
        self.noise_gen = torch.Generator(device=self.device).manual_seed(c.seed + 1)
        self.data_gen = torch.Generator().manual_seed(c.seed)
        self.opt = TuningAdamW(trainable, lr=c.lr, betas=tuple(c.betas), eps=c.eps,  # type: ignore[arg-type]
                               weight_decay=c.weight_decay, state=kind, seed=c.seed,
                               compile=self.compiled)
        self.opt_kind = kind
        self.remove_hooks = self.opt.step_in_backward()
        self.ckpt_blocks = self._recomputed_blocks()
        # --memory low or auto on a GPU: the recomputed blocks' inputs wait in pinned host memory
        self.offload = (HostOffload(self.device) if c.memory in ("low", "auto") and c.grad_checkpointing == "auto"
                        and self.device.type == "cuda" else None)
        # --memory auto on a GPU: the recomputed blocks that keep their self-attention outputs
        self.kept = KeptAttention() if self.offload is not None and c.memory == "auto" else None
        # --memory auto on a GPU (where it keeps attention outputs) measures one block's activations
        # in its first two steps, where keeping one fits
        self.probe_peak = 0  # the peak of its first step
        self.probe: list[int] | None = [] if self.kept is not None else None
        if self.probe is not None:  # the peak the probe reads is the training steps', not the pool's
            self.run_peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.train_ops = compiled_block_ops() if self.compiled else EAGER_OPS
        self.w_L = token_weights(self.scales, _scale_weights(c, self.scales)).to(self.device)
        self.batch = _Batch(self._epoch_order(), 0)
        self.step = 0
        self.history: list[Tensor] = []  # (3,) loss, ce, prior per step, on the device, not yet read
        self.ce_read: list[float] = []  # the subject loss of every step read so far (--early-stop)
        self.last_logged: dict[str, float] = {}
        tr.train()
        self.emit("trainable", {"tensors": len(self.tuned), "params": self.trainable_params, "by_type": by_type,
                                "optimizer_state": kind, "optimizer_bytes": self.opt.state_bytes(),
                                "grad_checkpointing": self.ckpt_blocks > 0, "recomputed_blocks": self.ckpt_blocks,
                                "blocks": tr.cfg.depth})

    @property
    def step_rows(self) -> int:
        """Images in a training step's forward: the batch, and as many prior samples with the prior."""
        return self.config.batch_size * (2 if self.config.prior else 1)

    def _gpu_room(self) -> tuple[int, int]:
        """(free, total) bytes of GPU memory this run may use: the device's, within --memory-limit."""
        free, total = torch.cuda.mem_get_info(self.device)
        if self.config.memory_limit is None:
            return free, total
        cap = int(self.config.memory_limit * 2**30)
        return min(free, max(cap - torch.cuda.memory_reserved(self.device), 0)), min(total, cap)

    def _recomputed_blocks(self) -> int:
        """``--memory``: how many blocks recompute their activations (see tuning.memory)."""
        c, tr = self.config, self.transformer
        on_gpu = self.device.type == "cuda"
        if c.memory == "auto" and c.grad_checkpointing == "auto" and on_gpu:
            return tr.cfg.depth  # measured in the first steps (train_step) before any block keeps more
        free = total = 0
        if on_gpu:
            torch.cuda.empty_cache()
            free, total = self._gpu_room()
        L = sum(math.prod(s) for s in self.scales)
        return recomputed_blocks(c.memory, c.grad_checkpointing, tr.cfg.depth, on_gpu=on_gpu,
                                 per_block=activation_bytes(self.step_rows, L, tr.cfg.embed_dim), free=free, total=total)

    # ---- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, *, wait: bool = False) -> Path:
        """Snapshot the run and write it to the run folder in the background (``wait``: before
        returning). The snapshot is taken here, so the checkpoint is of this step even though the
        loop goes on while it is written."""
        self.check_finite()
        # the previous write still reads the pinned buffers: let it finish before refilling them
        self.finish_checkpoint()
        target = self.run_dir / CHECKPOINT_DIR
        host_weights = self.snapshot.take(self.weights(), self.device)
        extra = self.snapshot.take({f"opt.{k}": v for k, v in self.opt.state_tensors().items()}, self.device)
        if self.ema is not None:
            extra |= self.snapshot.take({f"ema.{k}": v for k, v in self.ema.items()}, self.device)
        extra["rng.data"] = self.data_gen.get_state().clone()
        extra["rng.noise"] = self.noise_gen.get_state().clone()
        extra["order"] = self.batch.order.clone()
        state = {"step": self.step, "pos": self.batch.pos, "opt_steps": self.opt.steps,
                 "optimizer_state": self.opt_kind, "config": self.config.to_dict(),
                 "model_hash": self.resolved.model_hash, "arbooth_version": __version__, "saved": _now(),
                 "losses": dict(self.last_logged)}
        write = checkpoint_writer(host_weights, extra, state)  # runs on the writer thread: reads the snapshot only
        self.writer.submit(target, write, self.step)
        if wait:
            self.finish_checkpoint()
        return target

    def finish_checkpoint(self) -> Path | None:
        """Wait for the checkpoint being written, if any, and emit its "checkpoint" event; returns
        its folder. The event is emitted once the folder is complete on disk, always from the main
        thread (here), at the first step boundary or wait point after the write ended. A failed
        write raises its error (a ResourceError) here."""
        done = self.writer.wait()
        if done is None:
            return None
        self.emit("checkpoint", {"step": done[1], "path": str(done[0])})
        return done[0]

    def load_checkpoint(self, ckpt: Path) -> None:
        state, weights, extra = read_checkpoint(ckpt, self.device)
        expected = set(self.tuned) | ({"subject_embedding"} if self.subject_SC is not None else set())
        if set(weights) != expected:
            raise CheckpointError(f"the checkpoint in {ckpt} holds other tensors than this run tunes")
        with torch.no_grad():
            for n, p in self.tuned.items():
                p.copy_(weights[n])
            if self.subject_SC is not None:
                self.subject_SC.copy_(weights["subject_embedding"])
        opt = {k[4:]: v.to(self.device) for k, v in extra.items() if k.startswith("opt.")}
        try:
            self.opt.load_state_tensors(opt, state["opt_steps"])
        except ValueError as exc:
            raise CheckpointError(f"{ckpt}: {exc}") from None
        if self.ema is not None:
            if set(self.ema) != {k[4:] for k in extra if k.startswith("ema.")}:
                raise CheckpointError(f"the checkpoint in {ckpt} holds no moving average of every tuned tensor")
            for n, avg in self.ema.items():
                avg.copy_(extra[f"ema.{n}"])
        self.data_gen.set_state(extra["rng.data"])
        self.noise_gen.set_state(extra["rng.noise"])
        self.batch = _Batch(extra["order"], state["pos"])
        self.step = state["step"]
        self.last_logged = state.get("losses", {})

    # ---- the loop -------------------------------------------------------------------------

    def _epoch_order(self) -> Tensor:
        return epoch_order(self.n_train, self.n_photos, self.config.photo_share or 0.0, self.data_gen,
                           flip=self.config.flip)

    def next_indices(self) -> list[int]:
        out = []
        for _ in range(self.config.batch_size):
            if self.batch.pos >= len(self.batch.order):
                self.batch = _Batch(self._epoch_order(), 0)
            out.append(int(self.batch.order[self.batch.pos]))
            self.batch.pos += 1
        return out

    def subject_text(self, texts: list[TextCond], spans: list[tuple[int, int]]) -> TextCond:
        text = TextCond.cat(texts)
        if self.subject_SC is not None:
            text = splice_subject(text, spans, self.subject_SC)
        return text

    def objective(self, idx: list[int], pool: PriorPool | None, rows: list[int], *,
                  train: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, ce, prior)`` of the photos ``idx`` and the pool samples ``rows`` in one batch.
        ``train``: with the training noise (bitwise self-correction, text dropout, drop path)."""
        c, tr, dev = self.config, self.transformer, self.device
        raw = torch.cat([self.raw[i] for i in idx])
        noise = dict(noise_layers=c.bsc_scales if c.bsc_scales is not None else len(self.scales),
                     noise_strength=c.bsc_strength, requant=True, generator=self.noise_gen) if train else {}
        tf = teacher_forcing(raw, self.vae.vae_scales(self.scales), patchify=self.vae.cfg.spatial_patchify, **noise)
        text = self.subject_text([self.caption_text[i] for i in idx], [self.caption_span[i] for i in idx])
        if train:
            text = tr.drop_text(text, torch.rand(len(idx), generator=self.data_gen) < c.text_dropout)
        inputs, teacher_BLV = tf.inputs_BLd, None
        if pool is not None:
            bits = pool.bits_NLd[rows].to(dev, non_blocking=True)
            teacher_BLV = pool.logits_NLV[rows].to(dev, non_blocking=True)
            text = TextCond.cat([text] + [self.class_texts[int(pool.prompt_N[r])] for r in rows])
            inputs = torch.cat([inputs, inputs_from_bits(self.vae, bits, self.scales)])
        forward = dict(checkpoint_blocks=self.ckpt_blocks, drop_path_generator=self.noise_gen,
                       prefix_attention=dev.type == "cuda", ops=self.train_ops, offload=self.offload,
                       kept=self.kept) if train else {}
        if train and self.offload is not None:
            self.offload.start_step()
        L = self.train_L
        scales = self.scales[: c.train_scales or len(self.scales)]
        logits = tr(text, inputs[:, : L - 1], scales, frame_hw=rope_frame(self.scales), **forward)
        teacher_BLV = None if teacher_BLV is None else teacher_BLV[:, :L]
        return arbooth_loss(logits, tf.bits_BLd[:, :L].to(dev), self.w_L[:L], teacher_BLV,
                            prior_weight=c.prior_weight, prior_mode=c.prior_mode, per_bit=c.prior_kl == "bit")

    def train_step(self, pool: PriorPool | None) -> None:
        c = self.config
        idx = self.next_indices()
        rows = [(self.step * c.batch_size + k) % len(pool) for k in range(c.batch_size)] if pool is not None else []
        loss, ce, prior = self.objective(idx, pool, rows, train=True)
        if self.probe is not None:  # --memory auto: what this forward left allocated for the backward
            self.probe.append(torch.cuda.memory_allocated(self.device))
        # the optimizer updates each tensor inside the backward pass, as its gradient completes
        self.opt.begin_step()
        loss.backward()
        if self.offload is not None:
            self.offload.finish_step()
        if self.kept is not None:  # what a block whose backward never ran kept is not needed either
            self.kept.start_step()
        self.history.append(torch.stack([loss.detach(), ce.detach(), prior.detach()]).float())
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        if self.probe is not None:
            self._memory_probe_step()

    def weights(self) -> dict[str, Tensor]:
        """What trains, by the names checkpoints and subjects use."""
        out = dict(self.tuned)
        if self.subject_SC is not None:
            out["subject_embedding"] = self.subject_SC
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None and self.config.ema
        for n, p in self.weights().items():
            self.ema[n].lerp_(p.float(), 1 - self.config.ema)

    @torch.no_grad()
    def use_ema(self) -> None:
        """--ema: the average of the steps' weights becomes the weights (after the last step, before saving)."""
        if self.ema is None or self.step == 0:
            return
        total = 1 - self.config.ema ** self.step
        for n, p in self.weights().items():
            p.copy_(self.ema[n] / total)

    def _memory_probe_step(self) -> None:
        """--memory auto: step 1 recomputes every block, step 2 keeps one (if the room beside step 1's
        peak allows); then choose."""
        assert self.probe is not None and self.kept is not None
        tr = self.transformer
        depth = tr.cfg.depth
        attention = kept_attention_bytes(self.step_rows, self.train_L, tr.cfg.embed_dim, tr.cfg.num_heads,
                                         tr.compute_dtype.itemsize)
        free, _ = self._gpu_room()
        usable = free + torch.cuda.memory_reserved(self.device)  # what other processes hold is not ours
        if len(self.probe) == 1:
            # step 1's own peak (compilation and first allocations included), apart from step 2's
            self.probe_peak = torch.cuda.max_memory_allocated(self.device)
            self.run_peak = max(self.run_peak or 0, self.probe_peak)
            torch.cuda.reset_peak_memory_stats(self.device)
            estimate = activation_bytes(self.step_rows, self.train_L, tr.cfg.embed_dim)
            if probe_fits(estimate=estimate, peak=self.probe_peak, total=usable):
                self.ckpt_blocks = depth - 1
                return
            # a 16 GB card: too little room beside step 1's peak to keep a block safely (probe_fits)
            self.kept.blocks = attention_only(depth, attention=attention, peak=self.probe_peak, total=usable)
            self.probe = None
            self.emit("note", {"message": f"--memory auto: too little GPU memory beside the step's peak to keep a "
                                          f"block's activations; all {depth} blocks recompute them ({self.kept.blocks} "
                                          f"keep their self-attention outputs, {attention / 2**30:.2f} GiB each)"})
            return
        per_block = max(self.probe[1] - self.probe[0], 1)
        # step 2's peak includes the block it kept: the plan places every kept block anew
        peak = max(self.probe_peak, torch.cuda.max_memory_allocated(self.device) - per_block)
        keep, self.kept.blocks = plan_kept(depth, per_block=per_block, attention=attention, peak=peak, total=usable)
        self.ckpt_blocks, self.probe = depth - keep, None
        self.emit("note", {"message": f"--memory auto: one block's activations take {per_block / 2**30:.2f} GiB, its "
                                      f"self-attention outputs {attention / 2**30:.2f} GiB; {keep} of {depth} blocks "
                                      f"keep their activations, {depth - keep} recompute them "
                                      f"({self.kept.blocks} of those keep their self-attention outputs)"})

    def check_finite(self) -> dict[str, float]:
        """Read the losses since the last read (one device sync); stop on a NaN or inf."""
        if not self.history:
            return self.last_logged
        values = torch.stack(self.history).cpu()
        first = self.step - len(self.history) + 1
        self.history.clear()
        bad = (~torch.isfinite(values)).any(dim=1).nonzero()
        if len(bad):
            at = first + int(bad[0, 0])
            # the last good checkpoint may still be on its way to the disk: the message must name a
            # complete one. If its write failed, the divergence is still the error raised (the
            # write error is chained and named), and the previous checkpoint is the one kept.
            failed: ArboothError | None = None
            try:
                self.finish_checkpoint()
            except ArboothError as exc:
                failed = exc
            ckpt = find_checkpoint(self.run_dir)
            where = f"; the last good checkpoint is in {ckpt} (resume with --resume)" if ckpt else ""
            if failed is not None:
                where += f" (the last checkpoint could not be written: {failed})"
            raise TrainingDivergedError(f"the loss became {values[int(bad[0, 0]), 0].item()} at step {at}{where}",
                                        hint="lower --lr, or use --optimizer-state fp32") from failed
        self.ce_read += values[:, 1].tolist()
        loss, ce, prior = values[-1].tolist()
        self.last_logged = {"loss": loss, "ce": ce, "prior": prior}
        return self.last_logged

    @torch.no_grad()
    def validate(self) -> list[str]:
        from ..sampling.sample import sample_images
        from ..sampling.writers import write_png

        c, tr = self.config, self.transformer
        out_dir = self.run_dir / "validation"
        out_dir.mkdir(parents=True, exist_ok=True)
        sp = self.spec.sampling
        params = session.sampling_params(self.spec)  # the model's defaults
        written = []
        tr.eval()
        try:
            for k, (prompt, text, span) in enumerate(self.val_prompts):
                if self.subject_SC is not None:
                    text = splice_subject(text, [span], self.subject_SC.detach())
                gen = torch.Generator(device=self.device).manual_seed(c.seed)
                img = sample_images(tr, self.vae, text, self.scales, params, [gen])
                path = out_dir / f"step-{self.step:06d}-{k}.png"
                meta = {"prompt": prompt, "seed": c.seed, "step": self.step, "subject": self.name,
                        "model": self.spec.name, "model_hash": self.resolved.model_hash,
                        "arbooth_version": __version__, "cfg": sp.cfg, "tau": sp.tau, "top_p": sp.top_p}
                write_png(path, img[0].permute(1, 2, 0).cpu().numpy(), meta)
                written.append(str(path))
        finally:
            tr.train()
        self.validation_images += written
        self.emit("validation", {"step": self.step, "paths": written})
        return written

    def loop(self, pool: PriorPool | None) -> None:
        c = self.config
        self.emit("start", {"step": self.step, "steps": c.steps})
        t0, s0 = time.perf_counter(), self.step
        while self.step < c.steps:
            self.train_step(pool)
            if self.writer.finished:  # report a finished checkpoint (or its error) at the next step
                self.finish_checkpoint()
            at_end = self.step == c.steps
            if self.step % c.log_every == 0 or at_end:
                losses = self.check_finite()
                now = time.perf_counter()
                peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
                self.emit("step", {"step": self.step, "steps": c.steps, **losses,
                                   "it_per_s": (self.step - s0) / max(now - t0, 1e-9), "gpu_peak_bytes": peak})
            if c.validate_every and self.step % c.validate_every == 0:
                self.validate()
            saved = bool(c.checkpoint_every) and self.step % c.checkpoint_every == 0 and not at_end
            if saved:
                self.save_checkpoint()
            if (c.early_stop and not at_end and self.step % c.log_every == 0
                    and plateaued(self.ce_read, window=PLATEAU_WINDOW, patience=c.early_stop,
                                  min_delta=PLATEAU_DELTA)):
                self.emit("note", {"message": f"early stop at step {self.step}: the subject loss has not fallen by "
                                              f"{PLATEAU_DELTA:.0%} for {c.early_stop} windows of {PLATEAU_WINDOW} steps"})
                break
            if self._stop:
                # Ctrl-C: the checkpoint is on disk before the run stops (this step's, if just submitted)
                ckpt = self.finish_checkpoint() if saved else self.save_checkpoint(wait=True)
                raise TuneInterrupted(self.step, ckpt)
        self.check_finite()
        self.finish_checkpoint()
        self.snapshot.release()  # no write is in flight: give the pinned host memory back

    # ---- saving the subject ----------------------------------------------------------------

    def metadata(self, kind: str, rank: int) -> dict[str, str]:
        c = self.config
        return {
            "format": FORMAT, "name": self.name, "token": c.token, "class": c.cls, "kind": kind, "rank": str(rank),
            "base_model": self.spec.name, "base_model_hash": self.resolved.model_hash, "steps": str(self.step),
            "seed": str(c.seed), "arbooth_version": __version__, "created": _now(),
            "resolution": f"{self.w}x{self.h}", "config": json.dumps(c.to_dict(), sort_keys=True),
            "photos": json.dumps([im.path.name for im in self.images]),
            "photo_sha256": json.dumps({im.path.name: sha256_file(im.path) for im in self.images}, sort_keys=True),
        }

    def save_subject(self) -> tuple[SubjectInfo, dict[str, Tensor] | None, LowRankReport | None]:
        """Write the subject (and its rank-R form); returns the low-rank entries for
        :meth:`lowrank_loss_cost`."""
        c = self.config
        self.finish_checkpoint()  # no checkpoint write may race the subject's (loop() already waited)
        entries = {n: p.detach() for n, p in self.tuned.items()}
        if self.subject_SC is not None:
            entries["subject_embedding"] = self.subject_SC.detach().float()
        report = low = None
        with self.store.staging(self.name) as stage:
            try:
                write_safetensors(stage / SUBJECT_FILE, entries, self.metadata("full", 0))
                if c.save_rank:
                    assert self.base_values is not None
                    low, report = compress({n: p.detach() for n, p in self.tuned.items()}, self.base_values,
                                           c.save_rank)
                    if self.subject_SC is not None:
                        low["subject_embedding"] = entries["subject_embedding"]
                    write_safetensors(stage / lowrank_file(c.save_rank), low, self.metadata("lowrank", c.save_rank))
            except OSError as exc:
                raise_if_disk_full(exc)
                raise
            info = self.store.commit(self.name, stage, overwrite=c.overwrite or c.resume)
        return info, low, report

    def lowrank_loss_cost(self, pool: PriorPool | None, low: dict[str, Tensor]) -> dict[str, float]:
        """The subject and prior losses of one fixed batch with the full and the rank-R weights
        (``low``: the entries of the rank-R subject file)."""
        from ..subjects.use import tuned_values

        assert self.base_values is not None
        c, tr, dev = self.config, self.transformer, self.device
        idx = list(range(min(c.batch_size, len(self.raw))))
        rows = list(range(min(c.batch_size, len(pool)))) if pool is not None else []

        def losses() -> tuple[float, float]:
            _, ce, prior = self.objective(idx, pool, rows, train=False)
            return float(ce), float(prior)

        tr.eval()
        with torch.no_grad():
            full = losses()
            # one tensor at a time, the tuned values kept on the host: the pass adds no more than
            # one tensor's worth to the GPU (all at once it took three copies, 9.6 GB at infinity-2b)
            saved = {n: p.detach().to("cpu", copy=True) for n, p in self.tuned.items()}
            for n, p in self.tuned.items():
                mine = {k: v for k in (f"{n}.lora_up", f"{n}.lora_down", f"{n}.delta") if (v := low.get(k)) is not None}
                p.copy_(tuned_values(mine, {n: self.base_values[n].to(dev)})[n])
            approx = losses()
            for n, p in self.tuned.items():
                p.copy_(saved[n])
        return {"ce_full": full[0], "ce_lowrank": approx[0], "prior_full": full[1], "prior_lowrank": approx[1]}

    # ---- Ctrl-C --------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop = True


def _drain_checkpoints(run: _Run, pending: BaseException | None) -> None:
    """No checkpoint write outlives :func:`tune`. With no error on its way, a failed write is
    raised; otherwise that error wins and the failed write is noted on it (Python 3.11+)."""
    if pending is None:
        run.finish_checkpoint()
        return
    try:
        run.finish_checkpoint()
    except Exception as exc:
        if hasattr(pending, "add_note"):
            pending.add_note(f"the last checkpoint could not be written either: {exc}")


def tune(config: TuneConfig, *, on_event: EventFn | None = None, resolved: ResolvedModel | None = None,
         components: Components | None = None) -> TuneResult:
    """Tune a subject; see the module docstring. Ctrl-C (SIGINT) finishes the current step, writes
    a checkpoint and raises :class:`TuneInterrupted`.

    ``components``: already built parts of ``resolved``'s model (on ``config.device``, blocks in
    ``config.dtype``) instead of loading them; the run changes and frees parts of them."""
    emit = on_event or session.no_events
    config.validate()
    resolved = session.resolve(config.model, resolved=resolved)
    run = _Run(config, resolved, emit, components)
    with run.locked(), _memory_cap(config.device, config.memory_limit):
        try:
            return _tune(run, config, resolved, emit)
        except torch.OutOfMemoryError as exc:
            within = f" within --memory-limit {config.memory_limit:g} GiB" if config.memory_limit else ""
            raise ResourceError(f"the GPU ran out of memory{within} ({str(exc).splitlines()[0]})",
                                hint="use --memory low (the least memory), a smaller --batch-size"
                                     + (" or a larger --memory-limit" if within else "")) from None


def _tune(run: _Run, config: TuneConfig, resolved: ResolvedModel, emit: EventFn) -> TuneResult:
    ckpt = run.preflight()
    t0 = time.perf_counter()
    run.load()
    if config.memory == "high":  # refused before the prior pool is drawn if it cannot fit
        run._recomputed_blocks()
    # Ctrl-C from here on stops at the next pool batch or step boundary and keeps the work done
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, run.request_stop) if main else None
    try:
        try:
            pool = run.build_pool()
            run.setup_training()
            resumed = None
            if ckpt is not None:
                run.load_checkpoint(ckpt)
                resumed = run.step
            elif config.overwrite:
                shutil.rmtree(run.run_dir / CHECKPOINT_DIR, ignore_errors=True)
                shutil.rmtree(run.run_dir / (CHECKPOINT_DIR + ".old"), ignore_errors=True)
            run.loop(pool)
            run.use_ema()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        info, low, report = run.save_subject()
    finally:
        _drain_checkpoints(run, sys.exc_info()[1])
    lowrank = None
    if report is not None:
        assert low is not None
        cost = run.lowrank_loss_cost(pool, low)
        lowrank = {**asdict(report), **cost, "path": str(info.path.parent / lowrank_file(report.rank))}
        emit("lowrank", lowrank)
    # the run is complete: its checkpoint and prior pool are no longer needed
    for leftover in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", POOL_FILE):
        p = run.run_dir / leftover
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    peak = torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None
    if peak is not None and run.run_peak is not None:
        peak = max(peak, run.run_peak)  # --memory auto reset the peak statistics before its probe
    result = TuneResult(
        name=run.name, subject=str(info.path), token=config.token, cls=config.cls, model=run.spec.name,
        model_hash=resolved.model_hash, steps=run.step, seconds=time.perf_counter() - t0, losses=run.last_logged,
        trainable_params=run.trainable_params, trainable_tensors=len(run.tuned), peak_gpu_bytes=peak,
        run_dir=str(run.run_dir), validation_images=run.validation_images, lowrank=lowrank, resumed_from=resumed,
    )
    emit("saved", {"path": str(info.path), "name": run.name})
    return result
