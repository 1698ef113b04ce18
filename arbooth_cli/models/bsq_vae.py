"""Infinity's bitwise tokenizer: a conv autoencoder with binary spherical quantisation (BSQ).

* :class:`BSQVAE`: FLUX-style conv encoder/decoder without attention (GroupNorm + swish, ResNet
  blocks, stride ``2 ** (len(ch_mult) - 1)``), parameter names as in the official checkpoints
  (``encoder.down.0.block.0.norm1.norm.weight``, ``quantizer.lfq.mask``, ...).
* BSQ: a d-dim feature is L2-normalised and each dimension becomes a bit; the code of a bit vector
  is ``(2 * bit - 1) / sqrt(d)`` (on the unit sphere). There is no codebook parameter.
* Multi-scale residual quantisation (:func:`teacher_forcing`): per scale, the residual between
  the features and what earlier scales explain is area-downsampled and quantised into that scale's
  bit labels; the accumulated codes (trilinear upsampling) give the next scale's transformer input
  (trilinear downsampling). Optional bitwise self-correction flips bits with an explicit generator.
* :class:`CodeAccumulator`: the same accumulation for sampling, one scale of predicted bits at a time.
* Spatial patchify (8B tokenizer): the transformer sees 2x2 pixel-unshuffled latents, 4d bits per
  token at twice the VAE stride.

Notation: B batch, d VAE bits (channels), H x W the full latent size, h x w one scale's size,
``_Bd1HW`` features as (B, d, 1, H, W) (a time axis of 1, as the official tokenizer's 3D
interpolation uses; keeping it makes the interpolations bit-for-bit the same), d_t = bits per
transformer token (d, or 4d with patchify), l = h * w tokens of a scale, L all scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..registry import VAEConfig

Scale = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# conv autoencoder
# ---------------------------------------------------------------------------------------------


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class _Conv(nn.Module):
    """A Conv2d under ``.conv`` (the checkpoints name every conv ``<name>.conv.weight``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Norm(nn.Module):
    """GroupNorm (eps 1e-6) under ``.norm``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _Norm(c_in, groups)
        self.conv1 = _Conv(c_in, c_out, 3, padding=1)
        self.norm2 = _Norm(c_out, groups)
        self.conv2 = _Conv(c_out, c_out, 3, padding=1)
        self.nin_shortcut = _Conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _Conv(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _Conv(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, groups)
        self.block_2 = ResBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g, n = cfg.base_channels, cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = _Conv(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        c_in = ch
        for i, mult in enumerate(cfg.ch_mult):
            c_out = ch * mult
            level = _Level([ResBlock(c_in if j == 0 else c_out, c_out, g) for j in range(cfg.encoder_blocks)])
            if i < n - 1:
                level.downsample = Downsample(c_out)
            self.down.append(level)
            c_in = c_out
        self.mid = _Mid(c_in, g)
        self.norm_out = _Norm(c_in, g)
        self.conv_out = _Conv(c_in, cfg.bits, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, g = cfg.base_channels, cfg.norm_groups
        c_in = ch * cfg.ch_mult[-1]
        self.conv_in = _Conv(cfg.bits, c_in, 3, padding=1)
        self.mid = _Mid(c_in, g)
        levels: list[_Level] = []
        # built coarse to fine, stored fine to coarse: up[i] works at the resolution of level i
        for i in reversed(range(len(cfg.ch_mult))):
            c_out = ch * cfg.ch_mult[i]
            level = _Level([ResBlock(c_in if j == 0 else c_out, c_out, g) for j in range(cfg.decoder_blocks)])
            if i > 0:
                level.upsample = Upsample(c_out)
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _Norm(c_in, g)
        self.conv_out = _Conv(c_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _BitPlaces(nn.Module):
    """Holds the checkpoint's ``lfq.mask`` buffer: 2^(d-1) .. 2^0, the place value of each bit."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        # the same int64 values as ``2 ** torch.arange(bits - 1, -1, -1)``, from a factory call: on
        # the meta device (models.skeleton) ``2 ** tensor`` runs a Python kernel that imports torch._dynamo
        self.register_buffer("mask", torch.tensor([1 << i for i in range(bits - 1, -1, -1)], dtype=torch.int64))


class _Quantizer(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.lfq = _BitPlaces(bits)


# ---------------------------------------------------------------------------------------------
# binary spherical quantisation
# ---------------------------------------------------------------------------------------------


def bsq_quantize(z_Bd1hw: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise features: returns (codes_Bd1hw float32, bits_B1hwd int64).

    Codes carry a straight-through gradient to ``z``; bit 1 means a positive component.
    """
    d = z_Bd1hw.shape[1]
    z = F.normalize(z_Bd1hw.float().permute(0, 2, 3, 4, 1), dim=-1)
    zhat = torch.where(z > 0, 1.0, -1.0).to(z.dtype) * (1.0 / math.sqrt(d))
    q = z + (zhat - z).detach()
    bits = (q > 0).long()
    return q.permute(0, 4, 1, 2, 3), bits


def bits_to_codes(bits_B1hwd: Tensor) -> Tensor:
    """Codes (B, d, 1, h, w) float32 of bit labels (B, 1, h, w, d): ``(2 * bit - 1) / sqrt(d)``."""
    s = 1.0 / math.sqrt(bits_B1hwd.shape[-1])
    codes = torch.where(bits_B1hwd > 0, s, -s).float()
    return F.normalize(codes, dim=-1).permute(0, 4, 1, 2, 3)


def vae_scales(scales: Sequence[Scale], patchify: bool) -> tuple[Scale, ...]:
    """Token-map sizes as the VAE sees them (twice the transformer's with spatial patchify)."""
    f = 2 if patchify else 1
    return tuple((t, f * h, f * w) for t, h, w in scales)


def bits_to_tokens(bits_B1hwd: Tensor, patchify: bool) -> Tensor:
    """VAE-layout bits (B, 1, h, w, d) -> transformer labels (B, l, d_t), row-major tokens."""
    B = bits_B1hwd.shape[0]
    if not patchify:
        return bits_B1hwd.reshape(B, -1, bits_B1hwd.shape[-1])
    x = F.pixel_unshuffle(bits_B1hwd[:, 0].permute(0, 3, 1, 2), 2)  # (B, 4d, h/2, w/2)
    return x.permute(0, 2, 3, 1).reshape(B, -1, x.shape[1])


def tokens_to_bits(bits_Bld: Tensor, hw: tuple[int, int], patchify: bool) -> Tensor:
    """Transformer bits (B, l, d_t) of an (h, w) token map -> VAE-layout bits (B, 1, h', w', d)."""
    B, _, dt = bits_Bld.shape
    h, w = hw
    x = bits_Bld.reshape(B, h, w, dt)
    if patchify:
        x = F.pixel_shuffle(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # (B, 2h, 2w, d)
    return x.unsqueeze(1)


def features_to_tokens(x_Bd1hw: Tensor, patchify: bool) -> Tensor:
    """Features (B, d, 1, h, w) -> transformer tokens (B, l, d_t)."""
    x = x_Bd1hw.squeeze(2)
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# multi-scale residual quantisation
# ---------------------------------------------------------------------------------------------


def resize_codes(x_Bd1hw: Tensor, size: Scale) -> Tensor:
    """Trilinear resize of (B, d, t, h, w) features to ``size`` (t, h, w), as Infinity does it.

    For images (t = 1 on both sides) the time axis is an identity, so this runs the 2D bilinear
    kernel: the same numbers, without CUDA's slow 3D upsampling of a one-frame volume.
    """
    if x_Bd1hw.shape[2] == 1 and size[0] == 1:
        return F.interpolate(x_Bd1hw[:, :, 0], size=tuple(size[1:]), mode="bilinear").unsqueeze(2)
    return F.interpolate(x_Bd1hw, size=tuple(size), mode="trilinear")


@dataclass
class TeacherForcing:
    """Transformer training inputs and labels for a batch of images."""

    inputs_BLd: Tensor  # (B, L - 1, d_t) float32: inputs of scales 1..K-1 (scale 0 is the SOS)
    bits_per_scale: list[Tensor]  # K tensors (B, l_s, d_t) int64: ground-truth bit labels
    #: (B, d, 1, H, W) the accumulated codes of every scale: what the decoder reconstructs from;
    #: carries the straight-through gradient to the features (tokenizer training)
    summed_Bd1HW: Tensor

    @property
    def bits_BLd(self) -> Tensor:
        """All labels concatenated over scales, (B, L, d_t)."""
        return torch.cat(self.bits_per_scale, dim=1)


def teacher_forcing(
    raw_Bd1HW: Tensor,
    scales_vae: Sequence[Scale],
    *,
    patchify: bool = False,
    noise_layers: int = 0,
    noise_strength: float = 0.0,
    requant: bool = True,
    generator: torch.Generator | None = None,
) -> TeacherForcing:
    """Bit labels and teacher-forcing inputs of raw encoder features, coarse to fine.

    ``scales_vae`` are VAE-side sizes (see :func:`vae_scales`) and must end at the feature size.
    For scale s: residual = features - accumulated codes, area-downsampled to scale s (except at
    the full size) and quantised -> labels of s. The codes (or, with bitwise self-correction, the
    codes of the labels after flipping each bit with probability p ~ U{0, 0.01, ..., strength},
    for the first ``noise_layers`` scales) are trilinearly upsampled and accumulated; the
    accumulation, trilinearly resized to scale s + 1, is that scale's input. With noise, later
    labels are computed against the corrupted accumulation, so they teach the model to correct.
    """
    if raw_Bd1HW.ndim == 4:
        raw_Bd1HW = raw_Bd1HW.unsqueeze(2)
    raw = raw_Bd1HW.float()
    full = tuple(raw.shape[2:])
    scales_vae = tuple(tuple(s) for s in scales_vae)
    if not scales_vae or scales_vae[-1] != full:
        raise InvalidInputError(f"the last scale {scales_vae[-1] if scales_vae else None} must equal the feature size {full}")
    if noise_layers > 0 and noise_strength > 0 and generator is None:
        raise InvalidInputError("bitwise self-correction needs an explicit torch.Generator")
    accum = torch.zeros_like(raw)
    labels: list[Tensor] = []
    inputs: list[Tensor] = []
    last = len(scales_vae) - 1
    for si, size in enumerate(scales_vae):
        residual = raw - accum
        if si != last:
            residual = F.interpolate(residual, size=size, mode="area")
        codes, bits = bsq_quantize(residual)
        labels.append(bits_to_tokens(bits, patchify))
        if si < noise_layers and noise_strength > 0:
            assert generator is not None
            top = int(round(100 * noise_strength))
            # p stays a tensor: reading it on the host would stall a GPU stream at every scale
            p = torch.randint(0, top + 1, (1,), generator=generator, device=generator.device) * 0.01
            flip = (torch.rand(bits.shape, generator=generator, device=generator.device) < p).to(bits.device)
            noisy = torch.where(flip, 1 - bits, bits)
            if requant:
                codes = bits_to_codes(noisy)
        accum = accum + resize_codes(codes, full)
        if si != last:
            nxt = resize_codes(accum, scales_vae[si + 1])
            inputs.append(features_to_tokens(nxt, patchify))
    d_t = labels[0].shape[-1]
    empty = raw.new_zeros(raw.shape[0], 0, d_t)
    return TeacherForcing(torch.cat(inputs, dim=1) if inputs else empty, labels, accum)


class CodeAccumulator:
    """Sampling-time accumulation of predicted bits into VAE features, one scale at a time.

    ``add(bits_Bld)`` takes the transformer's bits for the next scale and returns the input of the
    scale after it (or None after the last); :attr:`summed_Bd1HW` is what :meth:`BSQVAE.decode`
    turns into the image. Uses exactly the arithmetic of :func:`teacher_forcing`, so feeding it
    the ground-truth labels reproduces the teacher-forcing inputs.
    """

    def __init__(self, scales: Sequence[Scale], *, patchify: bool, bits: int, batch: int, device: torch.device | str) -> None:
        self.scales = tuple(tuple(s) for s in scales)
        self.scales_vae = vae_scales(self.scales, patchify)
        self.patchify = patchify
        t, H, W = self.scales_vae[-1]
        self.summed_Bd1HW = torch.zeros(batch, bits, t, H, W, device=device)
        self.next_scale = 0

    @property
    def done(self) -> bool:
        return self.next_scale >= len(self.scales)

    def add(self, bits_Bld: Tensor) -> Tensor | None:
        if self.done:
            raise InvalidInputError("every scale has been added already")
        si = self.next_scale
        _, h, w = self.scales[si]
        codes = bits_to_codes(tokens_to_bits(bits_Bld, (h, w), self.patchify)).to(self.summed_Bd1HW.device)
        self.next_scale += 1
        if si == len(self.scales) - 1:
            self.summed_Bd1HW = self.summed_Bd1HW + codes
            return None
        full = self.scales_vae[-1]
        self.summed_Bd1HW = self.summed_Bd1HW + resize_codes(codes, full)
        nxt = resize_codes(self.summed_Bd1HW, self.scales_vae[si + 1])
        return features_to_tokens(nxt, self.patchify)


# ---------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------


class BSQVAE(nn.Module):
    """Infinity's BSQ tokenizer (state-dict compatible with the official d32 / d56 files)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = _Quantizer(cfg.bits)
        # the official module registers the same quantizer twice, so both names are in the files
        self.quantize = self.quantizer

    def _live_weight(self) -> Tensor:
        # tuning frees the encoder (or the decoder) by moving it to the meta device
        for part in (self.encoder, self.decoder):
            w = part.conv_in.conv.weight
            if w.device.type != "meta":
                return w
        return self.encoder.conv_in.conv.weight

    @property
    def dtype(self) -> torch.dtype:
        return self._live_weight().dtype

    @property
    def device(self) -> torch.device:
        return self._live_weight().device

    def vae_scales(self, scales: Sequence[Scale]) -> tuple[Scale, ...]:
        return vae_scales(scales, self.cfg.spatial_patchify)

    def encode_features(self, img_B3HW: Tensor) -> Tensor:
        """Raw (unquantised) latent features (B, d, 1, H/stride, W/stride), float32.

        ``img_B3HW`` in [-1, 1], H and W multiples of the stride.
        """
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3:
            raise InvalidInputError(f"expected images (B, 3, H, W), got {tuple(img_B3HW.shape)}")
        s = self.cfg.stride
        if img_B3HW.shape[-2] % s or img_B3HW.shape[-1] % s:
            raise InvalidInputError(f"image size {tuple(img_B3HW.shape[-2:])} is not a multiple of the stride {s}")
        h = self.encoder(img_B3HW.to(device=self.device, dtype=self.dtype))
        return h.float().unsqueeze(2)

    def teacher_forcing(
        self,
        img_B3HW: Tensor,
        scales: Sequence[Scale],
        *,
        noise_layers: int = 0,
        noise_strength: float = 0.0,
        requant: bool = True,
        generator: torch.Generator | None = None,
    ) -> TeacherForcing:
        """Labels and inputs for transformer ``scales`` (see :func:`teacher_forcing`)."""
        raw = self.encode_features(img_B3HW)
        return teacher_forcing(
            raw,
            self.vae_scales(scales),
            patchify=self.cfg.spatial_patchify,
            noise_layers=noise_layers,
            noise_strength=noise_strength,
            requant=requant,
            generator=generator,
        )

    def new_accumulator(self, scales: Sequence[Scale], batch: int) -> CodeAccumulator:
        return CodeAccumulator(scales, patchify=self.cfg.spatial_patchify, bits=self.cfg.bits, batch=batch, device=self.device)

    def decode(self, feats: Tensor, *, decoder: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Latent features (B, d, H, W) or (B, d, 1, H, W) -> images (B, 3, sH, sW) in [-1, 1], float32.

        ``decoder``: what runs ``self.decoder`` (e.g. a ``torch.compile`` of it); default the module.
        """
        if feats.ndim == 5:
            if feats.shape[2] != 1:
                raise InvalidInputError("only images (a time axis of 1) can be decoded")
            feats = feats[:, :, 0]
        if feats.ndim != 4 or feats.shape[1] != self.cfg.bits:
            raise InvalidInputError(f"expected features (B, {self.cfg.bits}, H, W), got {tuple(feats.shape)}")
        img = (self.decoder if decoder is None else decoder)(feats.to(device=self.device, dtype=self.dtype))
        return img.float().clamp(-1.0, 1.0)
