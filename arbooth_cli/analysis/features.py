"""Image feature extractors for distances that follow content rather than pixels.

DINO ViT-S/16 and CLIP ViT-B/32 are the usual subject-fidelity features; they are used when their
weights are on this machine (a folder given by the user, or an already-filled Hugging Face cache;
nothing is downloaded). Without them the tokenizer's own encoder features are the fallback, and
every report names the extractor it used. Weights are read from safetensors files only. CLIP's text
tower (for CLIP-T) comes from the same CLIP folder, with the tokenizer files found there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NotFoundError
from ..models.bsq_vae import BSQVAE

FeatureKind = Literal["auto", "tokenizer", "dino", "clip"]
FEATURE_KINDS: tuple[str, ...] = ("auto", "tokenizer", "dino", "clip")

#: the hub repositories looked up in the local cache, and what they are called in reports
HUB_MODELS = {
    "dino": ("facebook/dino-vits16", "DINO ViT-S/16"),
    "clip": ("openai/clip-vit-base-patch32", "CLIP ViT-B/32"),
}
_NORMALISATION = {  # used when the weights come without a preprocessor_config.json
    "dino": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


@dataclass
class FeatureExtractor:
    """``extract(img_B3HW uint8) -> feats_BD`` float32, and what it is, for reports."""

    kind: str  # "dino", "clip" or "tokenizer"
    name: str  # e.g. "DINO ViT-S/16 (facebook/dino-vits16)"
    extract: Callable[[Tensor], Tensor]

    def __call__(self, img_B3HW: Tensor) -> Tensor:
        return self.extract(img_B3HW)


def tokenizer_features(vae: BSQVAE) -> FeatureExtractor:
    """The tokenizer encoder's raw latent features of the image, flattened."""

    @torch.no_grad()
    def extract(img_B3HW: Tensor) -> Tensor:
        x = img_B3HW.float() / 127.5 - 1.0
        return vae.encode_features(x).flatten(1).float()

    return FeatureExtractor("tokenizer", "the tokenizer's encoder features", extract)


def _local_weights(kind: str, weights: str | None) -> Path | None:
    """The folder of ``kind``'s weights: ``weights`` if given, else the hub cache's snapshot, else None."""
    if weights is not None:
        kind = kind if kind in HUB_MODELS else "dino"
        p = Path(weights).expanduser()
        if not (p / "config.json").is_file():
            raise NotFoundError(f"no {HUB_MODELS[kind][1]} weights at {p} (a folder with config.json and "
                                "model.safetensors is expected)",
                                hint=f"save them there with save_pretrained, or omit --feature-weights to use "
                                     f"the Hugging Face cache ({HUB_MODELS[kind][0]})")
        return p
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(HUB_MODELS[kind][0], local_files_only=True))
    except Exception:  # not in the cache (or no hub library): the caller decides what that means
        return None
    return path if (path / "config.json").is_file() else None


def _normalisation(folder: Path, kind: str) -> tuple[Tensor, Tensor]:
    """Mean and std of the weights' preprocessor_config.json, else the usual ones of ``kind``."""
    mean, std = _NORMALISATION[kind]
    cfg_file = folder / "preprocessor_config.json"
    if cfg_file.is_file():
        try:
            pre = json.loads(cfg_file.read_text(encoding="utf-8"))
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        except (OSError, ValueError):
            pass
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def _resize_crop(img_B3HW: Tensor, size: int) -> Tensor:
    """Shorter side to ``size`` (bicubic, antialiased), then the centre ``size`` x ``size``."""
    x = img_B3HW.float() / 255.0
    H, W = x.shape[-2:]
    s = size / min(H, W)
    h, w = max(size, round(H * s)), max(size, round(W * s))
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _kind_of(folder: Path) -> str:
    """``clip`` for a CLIP checkpoint, else ``dino`` (a ViT whose CLS token is the feature)."""
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError):
        model_type = ""
    return "clip" if str(model_type).startswith("clip") else "dino"


def _check_weight_files(folder: Path) -> None:
    """CheckpointError for a damaged or hostile safetensors file, before transformers reads it
    (it would fail with the library's own error, or a traceback)."""
    from ..checkpoint_io import read_safetensors_header

    for p in sorted(Path(folder).glob("*.safetensors")):
        read_safetensors_header(p)


def hub_features(kind: str, folder: Path, device: torch.device, source: str) -> FeatureExtractor:
    """DINO (CLS token of the last layer) or CLIP (projected image embedding) from ``folder``."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModelWithProjection

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    _check_weight_files(folder)
    if kind == "clip":
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        image_size = model.config.image_size
    else:
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        image_size = getattr(config, "image_size", 224)
    model = model.to(device).eval()
    size = int(image_size)
    mean, std = _normalisation(folder, kind)
    mean, std = mean.to(device), std.to(device)

    @torch.no_grad()
    def extract(img_B3HW: Tensor) -> Tensor:
        x = (_resize_crop(img_B3HW.to(device), size) - mean) / std
        if kind == "clip":
            return model(pixel_values=x).image_embeds.float()
        return model(pixel_values=x).last_hidden_state[:, 0].float()

    return FeatureExtractor(kind, f"{HUB_MODELS[kind][1]} ({source})", extract)


def load_features(kind: str, *, weights: str | None, vae: BSQVAE | None, device: torch.device) -> FeatureExtractor:
    """The extractor for ``kind``: ``auto`` takes DINO, then CLIP, if their weights are on this
    machine, else the tokenizer's features; ``dino``/``clip`` without weights is an error."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    if kind == "tokenizer":
        return tokenizer_features(_need(vae))
    if weights is not None:
        folder = _local_weights(kind, weights)
        assert folder is not None
        return hub_features(_kind_of(folder) if kind == "auto" else kind, folder, device, str(folder))
    for k in ("dino", "clip") if kind == "auto" else (kind,):
        folder = _local_weights(k, None)
        if folder is not None:
            return hub_features(k, folder, device, HUB_MODELS[k][0])
    if kind == "auto":
        return tokenizer_features(_need(vae))
    raise _missing(kind)


@dataclass
class TextFeatureExtractor:
    """``extract(texts) -> feats_TD`` float32, one row per text, and what it is, for reports."""

    name: str
    extract: Callable[[Sequence[str]], Tensor]

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self.extract(texts)


#: what a folder needs for CLIP's tokenizer: its fast-tokenizer file, or the BPE vocabulary and merges
CLIP_TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt")


def clip_text_gap(folder: Path) -> str | None:
    """What ``folder`` lacks for CLIP text embeddings (text tower or tokenizer files), or None.

    A vision-only checkpoint (``clip_vision_model``) has no text tower; tokenizer files are read
    from the folder only, so they must be there."""
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError):
        model_type = ""
    if model_type != "clip":
        return f"no text tower (config.json model_type is {model_type!r}, a full 'clip' checkpoint is needed)"
    if not (folder / "tokenizer.json").is_file() and not all(
            (folder / f).is_file() for f in ("vocab.json", "merges.txt")):
        return f"no tokenizer files ({' or '.join(CLIP_TOKENIZER_FILES)})"
    return None


def clip_text_features(folder: Path, device: torch.device, source: str | None = None,
                       batch_size: int = 64) -> TextFeatureExtractor:
    """CLIP's projected text embedding (``text_embeds``) of each text, with the folder's own tokenizer."""
    gap = clip_text_gap(folder)
    if gap is not None:
        raise NotFoundError(f"{HUB_MODELS['clip'][1]} at {folder} has {gap}",
                            hint="use the full CLIP checkpoint folder (save_pretrained of CLIPModel and its "
                                 f"tokenizer), or fill the Hugging Face cache for {HUB_MODELS['clip'][0]}")
    from transformers import CLIPConfig, CLIPTextModelWithProjection, CLIPTokenizer

    class _TextTower(CLIPTextModelWithProjection):  # the vision half of the checkpoint is expected, not news
        _keys_to_ignore_on_load_unexpected = [r"^vision_model\.", r"^visual_projection\.", r"^logit_scale"]

    full = CLIPConfig.from_pretrained(folder, local_files_only=True)
    text_cfg = full.text_config
    text_cfg.projection_dim = full.projection_dim  # the top-level value is the one the weights have
    _check_weight_files(folder)
    model = _TextTower.from_pretrained(folder, config=text_cfg, local_files_only=True, use_safetensors=True)
    model = model.to(device).eval()
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    max_len = min(int(tok.model_max_length), int(text_cfg.max_position_embeddings))

    @torch.no_grad()
    def extract(texts: Sequence[str]) -> Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            ids = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
            out.append(model(input_ids=ids["input_ids"].to(device),
                             attention_mask=ids["attention_mask"].to(device)).text_embeds.float())
        return torch.cat(out) if out else torch.zeros(0, text_cfg.projection_dim, device=device)

    return TextFeatureExtractor(f"{HUB_MODELS['clip'][1]} text ({source or folder})", extract)


def _need(vae: BSQVAE | None) -> BSQVAE:
    if vae is None:
        raise ValueError("tokenizer features need the tokenizer")
    return vae


def _missing(kind: str) -> NotFoundError:
    repo, label = HUB_MODELS[kind]
    return NotFoundError(f"no {label} weights on this machine ({repo} is not in the Hugging Face cache)",
                         hint="pass --feature-weights FOLDER, fill the cache while online, or use --features tokenizer")


def check_features(kind: str, weights: str | None) -> None:
    """Fail before any work when the asked weights are missing (``auto`` without a folder never fails)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {', '.join(FEATURE_KINDS)}")
    if weights is not None:
        _local_weights(kind, weights)  # raises with the folder's name
    elif kind in HUB_MODELS and _local_weights(kind, None) is None:
        raise _missing(kind)
