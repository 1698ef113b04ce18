"""Personalization metrics of real models (DreamBooth, Ruiz et al. 2023), as pure functions.

* DINO (subject fidelity) and CLIP-I: mean cosine similarity of every generated image with every
  real subject photo, in DINO ViT-S/16 and CLIP ViT-B/32 (projected image embedding) features.
* CLIP-T (prompt fidelity): cosine of each generated image's CLIP embedding with the CLIP text
  embedding of its prompt, the subject's identifier replaced by its class word (CLIP never saw
  ``sks``, so the identifier would only add noise).
* Diversity: mean pairwise DINO cosine distance among the images of one prompt (seeds), averaged
  over prompts; the LPIPS-free variant, so only the two feature models above are needed.
* Drift (language drift): DINO similarity, seed by seed, of the class prompt's images from the
  tuned and the base model; ``drift = 1 - similarity``.
* PRES (ARBooth's language-drift number): mean DINO cosine of the tuned model's class-prompt
  images ("a photo of {cls}") with the subject's photos; lower is less drift.

Images are uint8 ``(B, 3, H, W)``. Features are computed in batches on the extractors' device and
kept as float64 on the CPU, where the metrics are taken. Nothing here holds global state.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NotFoundError
from ..subjects import class_prompt_of
from .features import (HUB_MODELS, FeatureExtractor, TextFeatureExtractor, _kind_of, _local_weights,
                       clip_text_features, clip_text_gap, hub_features)
from .metrics import cosine_distance, mean_and_spread

#: the options of ``arbooth eval`` that name the weights' folders (used in error messages)
WEIGHT_FLAGS = {"dino": "--dino", "clip": "--clip"}
DEFAULT_CLASS_PROMPT = "a photo of {cls}"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and how many values they summarise."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def _stat(values_N: Tensor) -> Stat:
    mean, std = mean_and_spread([float(v) for v in values_N.flatten()])
    return Stat(mean, std, values_N.numel())


# ---- features and their comparisons --------------------------------------------------------


def extract_batched(fx: FeatureExtractor, img_B3HW: Tensor, batch_size: int = 16) -> Tensor:
    """``fx``'s features of the images, ``batch_size`` at a time (bounded device memory): float64
    ``(B, D)`` on the CPU."""
    if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(img_B3HW.shape)}")
    if img_B3HW.shape[0] == 0:
        raise ValueError("no images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = [fx(img_B3HW[i:i + batch_size]).detach().to("cpu", torch.float64)
              for i in range(0, img_B3HW.shape[0], batch_size)]
    return torch.cat(chunks)


def cosine_matrix(a_AD: Tensor, b_BD: Tensor) -> Tensor:
    """``(A, B)`` cosine similarities of every row of ``a`` with every row of ``b``, in [-1, 1]."""
    if a_AD.ndim != 2 or b_BD.ndim != 2 or a_AD.shape[1] != b_BD.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(a_AD.shape)} and {tuple(b_BD.shape)}")
    a = F.normalize(a_AD.double(), dim=1, eps=1e-12)
    b = F.normalize(b_BD.double(), dim=1, eps=1e-12)
    return (a @ b.T).clamp(-1.0, 1.0)


def subject_fidelity(gen_BD: Tensor, ref_ND: Tensor) -> Stat:
    """DINO / CLIP-I: mean cosine of every generated image with every reference photo.

    The mean is over all ``B x N`` pairs; ``std`` is the spread of the generated images' own means
    (how unevenly the subject is kept), ``n`` the number of generated images."""
    per_image_B = cosine_matrix(gen_BD, ref_ND).mean(1)
    return _stat(per_image_B)


def text_alignment(img_BD: Tensor, txt_BD: Tensor) -> Stat:
    """CLIP-T: cosine of image i's embedding with text i's embedding, over the images."""
    if img_BD.shape != txt_BD.shape:
        raise ValueError(f"one text per image is needed, got {tuple(img_BD.shape)} and {tuple(txt_BD.shape)}")
    return _stat(1.0 - cosine_distance(img_BD, txt_BD))


def diversity(feats_BD: Tensor, groups: Sequence[Hashable]) -> Stat:
    """Mean pairwise cosine distance (1 - cos) within each group (one prompt, several seeds),
    averaged over groups, each group weighing the same; ``std`` and ``n`` are over groups."""
    if len(groups) != feats_BD.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {feats_BD.shape[0]} images")
    index: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    per_group = []
    for g, rows in index.items():
        if len(rows) < 2:
            raise ValueError(f"diversity needs at least 2 images (seeds) per prompt; {g!r} has {len(rows)}")
        f_GD = feats_BD[rows]
        i, j = torch.triu_indices(len(rows), len(rows), offset=1)
        per_group.append(cosine_distance(f_GD[i], f_GD[j]).mean())
    return _stat(torch.stack(per_group))


def drift_similarity(tuned_BD: Tensor, base_BD: Tensor) -> Stat:
    """Cosine similarity of the tuned and the base model's image of the same seed, over seeds
    (1 when tuning left the class alone; ``drift = 1 - mean``)."""
    if tuned_BD.shape != base_BD.shape:
        raise ValueError(f"tuned and base images must pair up seed by seed, got {tuple(tuned_BD.shape)} "
                         f"and {tuple(base_BD.shape)}")
    return _stat(1.0 - cosine_distance(tuned_BD, base_BD))


# ---- weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealMetricWeights:
    """Where the DINO and CLIP weights are, and how reports call them (a folder or a hub repo)."""

    dino: Path
    clip: Path
    dino_source: str
    clip_source: str


def _folder_gaps(kind: str, folder: Path) -> list[str]:
    """What a found folder still lacks for these metrics."""
    gaps = []
    if not any(folder.glob("*.safetensors")):
        gaps.append("no safetensors weights (model.safetensors)")
    if kind == "dino" and _kind_of(folder) == "clip":
        gaps.append("a CLIP checkpoint, not a DINO ViT")
    if kind == "clip":
        text_gap = clip_text_gap(folder)
        if text_gap is not None:
            gaps.append(text_gap)
    return gaps


def check_real_metric_weights(dino: str | None, clip: str | None) -> RealMetricWeights:
    """Find both models' folders (given, else the Hugging Face cache) or fail before any work with
    one :class:`NotFoundError` that names every missing piece."""
    problems: list[str] = []
    found: dict[str, tuple[Path, str]] = {}
    for kind, given in (("dino", dino), ("clip", clip)):
        repo, label = HUB_MODELS[kind]
        flag = WEIGHT_FLAGS[kind]
        try:
            folder = _local_weights(kind, given)
        except NotFoundError as e:  # a given folder without config.json
            problems.append(e.message)
            continue
        if folder is None:
            problems.append(f"{label} weights not found: pass {flag} PATH or fill the hub cache for {repo}")
            continue
        gaps = _folder_gaps(kind, folder)
        if gaps:
            problems.append(f"{label} weights at {folder} have " + " and ".join(gaps))
            continue
        found[kind] = (folder, str(folder) if given is not None else repo)
    if problems:
        raise NotFoundError(
            "; ".join(problems),
            hint=f"pass {WEIGHT_FLAGS['dino']} / {WEIGHT_FLAGS['clip']} folders written by save_pretrained "
                 "(safetensors; CLIP as the full model with its tokenizer), or fill the Hugging Face cache "
                 f"for {HUB_MODELS['dino'][0]} and {HUB_MODELS['clip'][0]} while online")
    return RealMetricWeights(found["dino"][0], found["clip"][0], found["dino"][1], found["clip"][1])


@dataclass
class RealMetricModels:
    """The three feature models the metrics need, on one device."""

    dino: FeatureExtractor
    clip_image: FeatureExtractor
    clip_text: TextFeatureExtractor


def load_real_metric_models(dino: str | None, clip: str | None, device: torch.device) -> RealMetricModels:
    """Check every weight first (one error for all that is missing), then load them on ``device``."""
    w = check_real_metric_weights(dino, clip)
    return RealMetricModels(dino=hub_features("dino", w.dino, device, w.dino_source),
                            clip_image=hub_features("clip", w.clip, device, w.clip_source),
                            clip_text=clip_text_features(w.clip, device, w.clip_source))


# ---- the report ----------------------------------------------------------------------------


@dataclass
class RealMetrics:
    """The paper's personalization numbers; ``diversity`` / ``drift_similarity`` are None when
    they were not measured (one seed per prompt; no base-model images)."""

    dino: Stat
    clip_i: Stat
    clip_t: Stat
    diversity: Stat | None
    drift_similarity: Stat | None
    pres: Stat | None
    n_generated: int
    n_reference: int
    n_prompts: int
    extractors: dict[str, str] = field(default_factory=dict)

    @property
    def drift(self) -> float | None:
        return None if self.drift_similarity is None else 1.0 - self.drift_similarity.mean

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and strings, for JSON."""
        return {
            "dino": self.dino.to_dict(),
            "clip_i": self.clip_i.to_dict(),
            "clip_t": self.clip_t.to_dict(),
            "diversity": None if self.diversity is None else self.diversity.to_dict(),
            "drift": None if self.drift_similarity is None else {
                "similarity": self.drift_similarity.to_dict(), "drift": self.drift},
            "pres": None if self.pres is None else self.pres.to_dict(),
            "counts": {"generated": self.n_generated, "reference": self.n_reference, "prompts": self.n_prompts},
            "extractors": dict(self.extractors),
        }


def real_metrics(models: RealMetricModels, *, generated_B3HW: Tensor, prompts: Sequence[str],
                 reference_N3HW: Tensor, token: str, cls: str, tuned_class_S3HW: Tensor | None = None,
                 base_class_S3HW: Tensor | None = None, batch_size: int = 16) -> RealMetrics:
    """Every metric of the generated images (``prompts[i]`` made image i; the same prompt over
    several seeds gives diversity; once a prompt repeats, every prompt needs 2 seeds or more)
    against the subject's photos; drift when the class prompt's images of the tuned and the base
    model (same seeds, same order) are given."""
    if len(prompts) != generated_B3HW.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {generated_B3HW.shape[0]} generated images")
    if (tuned_class_S3HW is None) != (base_class_S3HW is None):
        raise ValueError("drift needs both the tuned and the base model's class-prompt images")
    dino_gen_BD = extract_batched(models.dino, generated_B3HW, batch_size)
    dino_ref_ND = extract_batched(models.dino, reference_N3HW, batch_size)
    clip_gen_BD = extract_batched(models.clip_image, generated_B3HW, batch_size)
    clip_ref_ND = extract_batched(models.clip_image, reference_N3HW, batch_size)

    texts = [class_prompt_of(p, token, cls) for p in prompts]
    unique = sorted(set(texts))
    txt_UD = models.clip_text(unique).detach().to("cpu", torch.float64)
    txt_BD = txt_UD[[unique.index(t) for t in texts]]

    n_prompts = len(set(prompts))
    div = diversity(dino_gen_BD, list(prompts)) if n_prompts < len(prompts) else None
    drift = pres = None
    if tuned_class_S3HW is not None and base_class_S3HW is not None:
        tuned_class_SD = extract_batched(models.dino, tuned_class_S3HW, batch_size)
        drift = drift_similarity(tuned_class_SD, extract_batched(models.dino, base_class_S3HW, batch_size))
        pres = subject_fidelity(tuned_class_SD, dino_ref_ND)
    return RealMetrics(
        dino=subject_fidelity(dino_gen_BD, dino_ref_ND),
        clip_i=subject_fidelity(clip_gen_BD, clip_ref_ND),
        clip_t=text_alignment(clip_gen_BD, txt_BD),
        diversity=div, drift_similarity=drift, pres=pres,
        n_generated=generated_B3HW.shape[0], n_reference=reference_N3HW.shape[0], n_prompts=n_prompts,
        extractors={"dino": models.dino.name, "clip_image": models.clip_image.name,
                    "clip_text": models.clip_text.name})
