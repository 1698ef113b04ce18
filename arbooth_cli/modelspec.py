"""Model specs as data: typed, frozen descriptions of every model arbooth knows.

A :class:`ModelSpec` says how to build a model (architecture hyper-parameters of each component),
which files it needs (hub repository, file name, format, size and sha256 where known), its text
encoder, default sampling settings, license and source. The built-in tables
(``arbooth_cli.specs``) and plugins create them; :mod:`arbooth_cli.registry` collects them.

No torch import here: ``arbooth models list`` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

FileKind = Literal["pth", "safetensors", "safetensors-index", "hf-dir"]
#: the components of a model, in the order their seeded inits are numbered
ROLES = ("transformer", "vae", "text_encoder")


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of an Infinity-style next-scale transformer."""

    depth: int
    embed_dim: int  # C
    num_heads: int  # H
    mlp_ratio: float = 4.0
    text_channels: int = 2048  # Ct5: width of the text features
    text_maxlen: int = 512  # rows of the learned null-text embedding
    block_chunks: int = 8  # only shapes the parameter names: block_chunks.{c}.module.{j}
    bits: int = 32  # d: bits per token as the transformer sees them (2 logits each)
    num_levels: int = 15  # rows of the scale (level) embedding
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1  # text dropout used in training
    drop_path_rate: float = 0.1
    rope_theta: float = 10000.0
    pad_to_multiplier: int = 128
    pool_head_width: int = 128  # text width per head of the attentive pool: Ct5 // this = pool heads

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        # Infinity rounds C * mlp_ratio to a multiple of 256 (8192 for 2B, 14336 for 8B).
        return max(256, round(self.embed_dim * self.mlp_ratio / 256) * 256)

    @property
    def pool_heads(self) -> int:
        return self.text_channels // self.pool_head_width

    @property
    def vocab(self) -> int:
        return 2 * self.bits

    def problems(self) -> list[str]:
        out = []
        if self.embed_dim % self.num_heads:
            out.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            out.append(f"head_dim {self.head_dim} must be a multiple of 4 for 2D RoPE")
        if self.depth % self.block_chunks:
            out.append(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.text_channels % self.pool_head_width or self.embed_dim % self.pool_heads:
            out.append("text_channels / pool_head_width must divide embed_dim")
        return out


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of a bitwise (BSQ) multi-scale tokenizer with a conv encoder/decoder."""

    bits: int  # codebook_dim of the quantiser (32 for d32; 14 for the 8B tokenizer)
    base_channels: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    encoder_blocks: int = 2  # ResNet blocks per level
    decoder_blocks: int = 3
    spatial_patchify: bool = False  # 2x2 pixel-unshuffle of the latent before the transformer
    norm_groups: int = 32

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def transformer_bits(self) -> int:
        return self.bits * (4 if self.spatial_patchify else 1)

    @property
    def token_stride(self) -> int:
        return self.stride * (2 if self.spatial_patchify else 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """The text encoder: a T5 encoder from the hub, or a tiny one built from a config in code."""

    repo_id: str | None  # e.g. google/flan-t5-xl; None for a built-in tiny encoder
    width: int  # output feature width (Ct5)
    max_length: int = 512
    tokenizer: Literal["t5", "byt5"] = "t5"
    #: T5Config keyword arguments for a tiny encoder built in code (tests, demos); None for hub models.
    tiny_config: tuple[tuple[str, int | float | str], ...] | None = None


@dataclass(frozen=True)
class FileSpec:
    """One file (or folder) a model needs, and where it can be downloaded from."""

    role: str  # transformer | vae | text_encoder
    kind: FileKind
    repo_id: str  # hub repository holding it
    filename: str  # path in that repository (for hf-dir: the repository itself, "")
    size_hint: int | None = None  # bytes as listed by the hub, informative only
    sha256: str | None = None  # verified on add/pull when known
    #: for .pth: the key path to the state dict inside the pickle, tried in order
    state_dict_keys: tuple[tuple[str, ...], ...] = ((),)
    #: file-name patterns that identify this file when the user imports it with `models add`
    match: tuple[str, ...] = ()
    #: for hf-dir: files to download/import (glob patterns)
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class FastPreset:
    """What `gen --fast` turns on for a model, counted from the end of the schedule so that it
    fits every size; chosen by measurement (docs/sampling.md). Empty: the model has none yet."""

    skip_last: int = 0  #: --skip-scales
    #: (k, ratio): --prune of the k-th scale from the end (1: the last)
    prune_from_end: tuple[tuple[int, float], ...] = ()
    #: --cfg-until-scale K = scales - this (None: guidance on every scale)
    cfg_stops_before_end: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.skip_last or self.prune_from_end or self.cfg_stops_before_end)

    def resolve(self, num_scales: int) -> dict[str, object]:
        """``skip_scales``, ``prune`` and ``cfg_until_scale`` for a schedule of ``num_scales``."""
        stop = None if self.cfg_stops_before_end is None else num_scales - self.cfg_stops_before_end
        return {"skip_scales": self.skip_last, "cfg_until_scale": stop,
                "prune": tuple((num_scales - k, r) for k, r in self.prune_from_end)}


@dataclass(frozen=True)
class SamplingDefaults:
    cfg: float = 3.0
    tau: float = 0.5
    top_p: float = 0.97
    top_k: int = 0
    size: str = "1M"
    fast: FastPreset = FastPreset()  #: `gen --fast`


@dataclass(frozen=True)
class TuningDefaults:
    """What `arbooth tune` uses for this model when the user does not say."""

    #: constant learning rate; the official ARBooth value, tuned for Infinity-2B
    lr: float = 2.34375e-5
    #: prompts of the validation images ({token} and {cls} filled in): ones the model can draw
    validation_prompts: tuple[str, ...] = ("a {token} {cls} on the beach",)
    #: (word, smaller word) pairs of sizes its captions say; a zoomed-out copy (``--augment-zoom``)
    #: of a photo captioned with the first says the second (empty: captions say no size)
    size_words: tuple[tuple[str, str], ...] = ()
    #: (word, x, y) of places its captions say (shares of the width and height); a zoomed-out copy
    #: of a photo captioned with the word shrinks about that point, so it still shows that place
    position_words: tuple[tuple[str, float, float], ...] = ()
    #: how its captions phrase a place: a regex with ``{word}`` for one of ``position_words``, and
    #: what a copy moved to another place (``--zoom-places``) says instead ("" : copies never move)
    place_phrase_re: str = ""
    place_phrase: str = ""
    #: (other word, word of ``position_words``) its captions also use for a place ("in the middle")
    place_aliases: tuple[tuple[str, str], ...] = ()
    #: (word, RGB) of the plain background colours its captions name, and how a caption says one: a
    #: regex with ``{word}`` ("{word} background"); ``--recolour`` repaints photos in these colours
    background_colours: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    background_phrase_re: str = ""
    #: ``--recolour`` when the user does not say (0: off)
    recolour: int = 0
    #: ``--augment-zoom`` when the user does not say (0: off)
    augment_zoom: float = 0.0
    #: ``--zoom-in`` when the user does not say (0: off)
    zoom_in: float = 0.0
    #: ``--zoom-places`` when the user does not say
    zoom_places: int = 1
    #: ``--photo-share`` when the user does not say (0: photos and copies drawn alike)
    photo_share: float = 0.0
    #: ``--drop-path`` when the user does not say (None: the transformer's own ``drop_path_rate``)
    drop_path: float | None = None
    #: ``--ema`` when the user does not say (0: the subject is the last step's weights)
    ema: float = 0.0
    #: ``--subject-vectors`` when the user does not say (the official code's 4)
    subject_vectors: int = 4


@dataclass(frozen=True)
class ModelSpec:
    """Everything arbooth knows about one named model."""

    name: str
    family: str
    description: str
    transformer: TransformerConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    files: tuple[FileSpec, ...] = ()
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    tuning: TuningDefaults = field(default_factory=TuningDefaults)
    sizes: tuple[str, ...] = ("0.06M", "0.25M", "1M")
    #: a tiny ladder: use only this many scales of the 1:1 template (overrides ``sizes``)
    num_scales: int | None = None
    license: str = "unknown"
    source: str = ""
    #: set on specs whose weights are made in code (deterministic random init), needing no files
    builtin_weights: bool = False
    #: a weights bundle shipped inside the package (``arbooth_cli/weights/<file>``): one
    #: safetensors file holding every role's tensors under ``<role>.`` prefixes
    packaged: str | None = None
    #: the procedural world a model draws, when it has one ("toy": ``arbooth_cli.toyworld``);
    #: ``arbooth eval`` then measures with that world's exact detectors
    world: str | None = None
    #: the aspect ratios (h/w) the model was trained on; None: every template of the schedule
    aspects: tuple[float, ...] | None = None
    plugin: str | None = None  # distribution that registered it, for `models info`

    @property
    def requires_files(self) -> bool:
        return bool(self.files) and not (self.builtin_weights or self.packaged)

    @property
    def needs_no_download(self) -> bool:
        """Ready on any installation: weights made in code or shipped in the package."""
        return self.builtin_weights or self.packaged is not None

    def file(self, role: str) -> FileSpec:
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(role)

    @property
    def approx_size(self) -> int | None:
        sizes = [f.size_hint for f in self.files]
        return sum(s for s in sizes if s) if any(sizes) else None

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        from .paths import NAME_RULE, valid_name

        out = list(self.transformer.problems())
        if not valid_name(self.name):
            out.append(f"name {self.name!r}: a model name is {NAME_RULE}")
        if self.vae.transformer_bits != self.transformer.bits:
            out.append(
                f"VAE gives {self.vae.transformer_bits} bits per token but the transformer expects "
                f"{self.transformer.bits}"
            )
        if self.text_encoder.width != self.transformer.text_channels:
            out.append("text encoder width differs from the transformer's text_channels")
        roles = [f.role for f in self.files]
        if len(set(roles)) != len(roles):
            out.append("two files share a role")
        return out


RegisterFn = Callable[[ModelSpec], None]
