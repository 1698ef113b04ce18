"""The setup every job shares, written once: which subjects and which model, loading them, text
features, the output folder and the sampling settings.

A job calls these in order: :func:`pick_subjects` (from the prompts, ``--subject`` or
``--delta``), :func:`resolve` (the model, checked against the subjects' base, remembered as the
last used), then, once every input is checked, :func:`open_model` (device, dtype, components,
the "loaded" event), :func:`load_subjects`, :func:`encode` (text features with each subject's
learned vectors, then the text encoder leaves the device). :func:`sampling_settings` applies
the model's sampling defaults; :func:`prepare_out_dir` probes the output folder before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import writable_folder
from ..errors import InvalidInputError, NotFoundError
from ..loading import (ResolvedModel, load_components, pick_device, pick_dtype, remember_model, resolve_model,
                       use_cpu_threads)
from ..modelspec import ModelSpec
from ..subjects import SubjectInfo, SubjectStore, subject_info, token_in_prompt
from ..subjects.store import DamagedSubjectError

if TYPE_CHECKING:
    import torch

    from ..models.build import Components
    from ..models.text_encoder import TextCond
    from ..subjects.use import LoadedSubject

#: ``on_event(kind, data)``: a job's progress, for the CLI (or any caller) to show
EventFn = Callable[[str, dict[str, Any]], None]

#: the sampling settings a prompt, a run or the model may set
SAMPLING_KEYS = ("cfg", "tau", "top_k", "top_p")
#: prompts the text encoder encodes at once
ENCODE_CHUNK = 16


def no_events(kind: str, data: dict[str, Any]) -> None:
    """The default ``on_event``: nothing to show."""


# ---- subjects and model ------------------------------------------------------------------------


def pick_subjects(prompts: list[str], subject: str | None, delta: str | None,
                  store: SubjectStore | None = None) -> list[SubjectInfo | None]:
    """The subject of each prompt: ``delta``'s file, the stored ``subject``, or the stored subject
    whose token the prompt contains (none for ``subject == "none"``)."""
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
    known, damaged = store.scan()
    out: list[SubjectInfo | None] = []
    for prompt in prompts:
        for d in damaged:  # never draw a prompt without the subject it names
            if d.token and token_in_prompt(d.token, prompt):
                raise DamagedSubjectError(d.name, d.reason)
        hits = [s for s in known if token_in_prompt(s.token, prompt)]
        if len(hits) > 1:
            names = ", ".join(s.name for s in hits)
            raise InvalidInputError(f"prompt {prompt!r} names several subjects ({names}); one per prompt",
                                    hint="pick one with --subject NAME")
        out.append(hits[0] if hits else None)
    return out


def subject_by_reference(ref: str, store: SubjectStore | None = None, *, by_token: bool = False) -> SubjectInfo:
    """A subject file (a path, or any name ending in .safetensors), else the stored subject of that
    name, else (``by_token``) the stored subject with that token."""
    p = Path(ref)
    if p.suffix == ".safetensors" or p.is_file():
        return pick_subjects([""], None, str(p))[0]  # type: ignore[return-value]
    store = store or SubjectStore()
    if store.has(ref) or not by_token:
        return store.get(ref)
    with_token = [s for s in store.list() if s.token == ref]
    if len(with_token) > 1:
        raise InvalidInputError(f"several subjects have the token {ref!r} ({', '.join(s.name for s in with_token)})",
                                hint="name one of them")
    return with_token[0] if with_token else store.get(ref)


def check_subject_base(subject: SubjectInfo, resolved: ResolvedModel) -> None:
    """Refuse, before any work, a subject tuned on another model or on other files of it."""
    if subject.base_model != resolved.spec.name:
        raise InvalidInputError(f"subject {subject.name!r} was tuned on {subject.base_model}, not {resolved.spec.name}",
                                hint=f"use --model {subject.base_model}")
    if subject.base_model_hash != resolved.model_hash:
        raise InvalidInputError(f"subject {subject.name!r} was tuned on other weight files of {subject.base_model}",
                                hint="import the model files it was tuned on")


def subjects_model(model: str | None, subjects: Iterable[SubjectInfo | None]) -> str | None:
    """``model`` if given, else the base model of ``subjects`` (one at most), else None."""
    if model:
        return model
    bases = sorted({s.base_model for s in subjects if s is not None})
    if len(bases) > 1:
        raise InvalidInputError(f"the prompts name subjects tuned on different models ({', '.join(bases)})",
                                hint="run them separately, with --model")
    return bases[0] if bases else None


def resolve(model: str | None, subjects: Iterable[SubjectInfo | None] = (), *,
            resolved: ResolvedModel | None = None) -> ResolvedModel:
    """The job's model: ``resolved`` if given, else ``model``, else the subjects' base model, else
    the default; every subject is checked against it, and it becomes the last used model."""
    subjects = list(subjects)
    resolved = resolved or resolve_model(subjects_model(model, subjects))
    for s in subjects:
        if s is not None:
            check_subject_base(s, resolved)
    remember_model(resolved.spec.name)
    return resolved


def check_device(device: str) -> None:
    """Refuse, before any work, a device this machine does not have."""
    pick_device(device)


def open_model(resolved: ResolvedModel, device: str, dtype: str, emit: EventFn, *,
               components: Components | None = None,
               roles: tuple[str, ...] = ("transformer", "vae", "text_encoder"),
               details: Mapping[str, Any] | None = None) -> Components:
    """Build ``resolved``'s components on the device and in the dtype the options name (or take
    ``components`` already built) and announce them with a "loaded" event (plus ``details``)."""
    if components is None:
        dev = pick_device(device)
        use_cpu_threads(dev)
        components = load_components(resolved, device=dev, dtype=pick_dtype(dtype, dev), roles=roles)
    emit("loaded", {"model": resolved.spec.name, "device": str(components.device),
                    "dtype": str(components.dtype).replace("torch.", ""), **(details or {})})
    return components


def load_subject(comps: Components, resolved: ResolvedModel, info: SubjectInfo | None) -> LoadedSubject | None:
    """The subject file of ``info`` read for the model (None for no subject)."""
    from ..subjects.use import load_subject as read

    if info is None:
        return None
    try:
        loaded = read(info.path, comps.transformer, model_name=resolved.spec.name, model_hash=resolved.model_hash)
    except FileNotFoundError:
        raise NotFoundError(f"subject {info.name!r} was removed ({info.path} is gone)",
                            hint="tune it again, or run without it (--subject none)") from None
    check_hash(info, loaded.sha256)
    return loaded


def check_hash(info: SubjectInfo, sha256: str) -> None:
    """Refuse a subject file whose sha256 is not the one the store recorded for it."""
    if info.sha256 is not None and sha256 != info.sha256:
        raise DamagedSubjectError(info.name, f"{info.path} does not match the checksum the store recorded")


def verified_hash(info: SubjectInfo) -> str:
    """The sha256 of a subject's file, checked against the store's record."""
    from ..checkpoint_io import sha256_file

    try:
        sha = sha256_file(info.path)
    except FileNotFoundError:
        raise NotFoundError(f"subject {info.name!r} was removed ({info.path} is gone)") from None
    check_hash(info, sha)
    return sha


def load_subjects(comps: Components, resolved: ResolvedModel,
                  infos: Iterable[SubjectInfo | None]) -> dict[str, LoadedSubject]:
    """Each distinct subject of ``infos`` read for the model, by its file path."""
    out: dict[str, LoadedSubject] = {}
    for info in infos:
        if info is not None and str(info.path) not in out:
            out[str(info.path)] = load_subject(comps, resolved, info)  # type: ignore[assignment]
    return out


def encode(comps: Components, prompts: Iterable[tuple[str, LoadedSubject | None]], *,
           device: torch.device | None = None, keep_encoder: bool = False) -> dict[tuple[str, str | None], TextCond]:
    """Text features of each (prompt, subject) pair, keyed by :func:`text_key`, with
    the subject's learned vectors in place of its token; the text encoder then leaves the device
    (unless ``keep_encoder``). ``device``: where the features go (default: where they are made)."""
    from ..subjects.use import subject_text

    pairs = {text_key(p, s): (p, s) for p, s in prompts}
    te = comps.text_encoder
    assert te is not None, "the text encoder was already freed"
    uniq = sorted({p for p, _ in pairs.values()})
    feats = {}
    for i in range(0, len(uniq), ENCODE_CHUNK):
        chunk = uniq[i:i + ENCODE_CHUNK]
        enc = te.encode(chunk)
        for j, p in enumerate(chunk):
            feats[p] = enc.select([j]) if device is None else enc.select([j]).to(device)
    out = {key: subject_text(feats[p], te.tokenizer, p, s) for key, (p, s) in pairs.items()}
    if not keep_encoder:
        free_text_encoder(comps)
    return out


def text_key(prompt: str, subject: LoadedSubject | None) -> tuple[str, str | None]:
    """How :func:`encode` files the features of ``prompt`` with ``subject`` (its file)."""
    return prompt, None if subject is None else str(subject.path)


def free_text_encoder(comps: Components) -> None:
    """Drop the text encoder (its features are made): on a GPU its memory goes back at once."""
    comps.text_encoder = None
    if comps.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def common_word(spec: ModelSpec, token: str, tokenizer: Any = None) -> str | None:
    """Why ``token`` is a word the model already reads as something (None when it is free): a
    word of its world's vocabulary, or one whole piece of its text tokenizer's vocabulary. Such a
    token would take over every prompt that uses the word."""
    if spec.world == "toy":
        from ..toyworld.scene import VOCABULARY

        if token.lower() in VOCABULARY:
            return f"{token!r} is a word the toy model's captions use"
    if tokenizer is not None and hasattr(tokenizer, "tokenize") and type(tokenizer).__name__ != "ByT5Tokenizer":
        pieces = tokenizer.tokenize(" " + token)
        if len(pieces) == 1 and pieces[0].lstrip("\u2581 ").lower() == token.lower():
            return f"{token!r} is a whole word of the text encoder's vocabulary"
    return None


def what_it_draws(spec: ModelSpec) -> str | None:
    """One line on what ``spec``'s model can draw, when that is known (a procedural world)."""
    if spec.world == "toy":
        from ..toyworld.scene import CLASSES, COLOURS

        return (f"{spec.name} draws one or two shapes ({', '.join(CLASSES)}) in a colour ({', '.join(COLOURS)}), "
                "small or large, on the left, right, top, bottom or in the middle, on a plain or striped "
                "background, square images: e.g. 'a red star on the left, blue background'")
    return None


def drawing_problems(spec: ModelSpec, prompt: str, *, h_div_w: float = 1.0,
                     subjects: Iterable[SubjectInfo] = ()) -> list[str]:
    """What ``spec``'s model cannot draw as asked (empty when nothing is known to be wrong): for
    a model of a procedural world, words and attributes outside it; an aspect it was not trained
    on. ``subjects``: tuned subjects the prompt may name (their tokens are words it knows)."""
    out = []
    if spec.world == "toy":
        from ..toyworld.scene import prompt_problems

        out += prompt_problems(prompt, names={s.token.lower(): s.cls for s in subjects})
    if spec.aspects is not None and not any(abs(h_div_w - a) / a < 0.01 for a in spec.aspects):
        shown = ", ".join(f"{a:g}" for a in spec.aspects)
        out.append(f"aspect h/w {h_div_w:.3g}: {spec.name} was trained on h/w {shown} only")
    return out


# ---- settings and outputs ----------------------------------------------------------------------


def sampling_settings(spec: ModelSpec, *sources: Any) -> dict[str, Any]:
    """``cfg``, ``tau``, ``top_k`` and ``top_p``, each from the first of ``sources`` (a prompt's
    settings, the run's config, ...) that sets it (not None), else the model's default."""
    out = {}
    for key in SAMPLING_KEYS:
        given = (getattr(s, key, None) for s in sources)
        out[key] = next((v for v in given if v is not None), getattr(spec.sampling, key))
    return out


def speed_settings(spec: ModelSpec, fast: bool, num_scales: int, *sources: Any) -> dict[str, Any]:
    """``skip_scales``, ``cfg_until_scale`` and ``prune``, each from the first of ``sources`` that
    sets it, else (with ``fast``: `--fast`) the model's preset for a schedule of ``num_scales``,
    else off."""
    preset: dict[str, Any] = {}
    if fast:
        if spec.sampling.fast.empty:
            from ..errors import InvalidInputError

            raise InvalidInputError(f"{spec.name} has no --fast preset yet (none measured)",
                                    hint="use --cfg-until-scale, --skip-scales or --prune (docs/sampling.md)")
        preset = spec.sampling.fast.resolve(num_scales)
    out = {}
    for key, off in (("skip_scales", 0), ("cfg_until_scale", None), ("prune", ())):
        given = [getattr(s, key, None) for s in sources] + [preset.get(key)]
        out[key] = next((v for v in given if v is not None), off)
    return out


def sampling_params(spec: ModelSpec, *sources: Any) -> Any:
    """:func:`sampling_settings` as checked :class:`SamplingParams` (ConfigError for bad values)."""
    from ..errors import ConfigError
    from ..sampling.sample import SamplingParams

    params = SamplingParams(**sampling_settings(spec, *sources))
    problems = params.problems()
    if problems:
        raise ConfigError(problems)
    return params


def model_size(spec: ModelSpec, size: str | None) -> str:
    """``size`` (or the model's default) if the model has it."""
    size = size or spec.sampling.size
    if size not in spec.sizes:
        raise InvalidInputError(f"model {spec.name} has no size {size!r}; its sizes: {', '.join(spec.sizes)}")
    return size


def prepare_out_dir(out_dir: str | Path, names: Iterable[str], *, overwrite: bool, skip_existing: bool = False,
                    hint: str = "pass --overwrite to replace them, --skip-existing to keep them, or another --out"
                    ) -> Path:
    """Create ``out_dir``, check that it is writable, and refuse files of ``names`` already there
    (unless ``overwrite`` or ``skip_existing``). Called before any heavy work."""
    out = writable_folder(Path(out_dir), "the output directory", hint="choose another --out directory")
    if not (overwrite or skip_existing):
        taken = [n for n in names if (out / n).exists()]
        if taken:
            more = f" (and {len(taken) - 1} more of this job's files)" if len(taken) > 1 else ""
            raise InvalidInputError(f"{out / taken[0]} already exists{more}", hint=hint)
    return out


def prepare_report_dir(out_dir: str | Path, files: Mapping[str, str], overwrite: bool) -> dict[str, Path]:
    """The paths of a report's ``files`` (key -> file name) in a prepared ``out_dir``."""
    out = prepare_out_dir(out_dir, files.values(), overwrite=overwrite, hint="pass --overwrite, or another --out")
    return {k: out / v for k, v in files.items()}
