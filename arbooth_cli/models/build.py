"""Build a spec's components (transformer, tokenizer, text encoder) and load their weights strictly.

* Modules are created on the meta device with their random init skipped (:func:`.skeleton.skeleton`:
  no memory, no wasted draws, no ``torch._dynamo`` import) and each tensor is then read from the
  checkpoint (a memory-mapped safetensors file through ``safe_open``, a sharded safetensors index, or a pickled
  ``.pth`` opened with ``mmap=True, weights_only=True``), cast, moved and assigned one at a time:
  a 2B transformer in bf16 never exists as a second full copy in RAM.
* Loading is strict: a missing, unexpected or mis-shaped tensor raises :class:`CheckpointError`
  naming them. The only tolerated absences are constant buffers (the zero K biases and the
  tokenizer's bit place values), which are recreated.
* Specs with ``builtin_weights`` (tiny-infinity) get a deterministic seeded init from an explicit
  ``torch.Generator``: uniform draws in float64, so every machine produces the same numbers.
* :func:`expected_tensors` lists the state-dict names and shapes of a spec from its config alone
  (no model is built), to validate files before importing them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ..checkpoint_io import find_state_dict, load_pth_weights_only
from ..errors import CheckpointError, InvalidInputError, ModelFilesError
from ..registry import ROLES, ModelSpec, TransformerConfig, VAEConfig
from .bsq_vae import BSQVAE
from .skeleton import skeleton
from .text_encoder import T5TextEncoder
from .transformer import InfinityTransformer

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# expected names and shapes (pure: from the config only)
# ---------------------------------------------------------------------------------------------


def transformer_tensor_shapes(cfg: TransformerConfig) -> dict[str, Shape]:
    """State-dict names and shapes of :class:`InfinityTransformer` for ``cfg`` (buffers included)."""
    C, Ct, hid = cfg.embed_dim, cfg.text_channels, cfg.ffn_hidden
    out: dict[str, Shape] = {
        "cfg_uncond": (cfg.text_maxlen, Ct),
        "pos_start": (1, 1, C),
        "text_norm.weight": (Ct,),
        "text_proj_for_sos.ca.mat_q": (1, cfg.pool_heads, C // cfg.pool_heads),
        "text_proj_for_sos.ca.v_bias": (C,),
        "text_proj_for_sos.ca.zero_k_bias": (C,),
        "text_proj_for_sos.ca.mat_kv.weight": (2 * C, Ct),
        "text_proj_for_sos.ca.proj.weight": (C, C),
        "text_proj_for_sos.ca.proj.bias": (C,),
        "text_proj_for_ca.0.weight": (C, Ct),
        "text_proj_for_ca.0.bias": (C,),
        "text_proj_for_ca.2.weight": (C, C),
        "text_proj_for_ca.2.bias": (C,),
        "lvl_embed.weight": (cfg.num_levels, C),
        "word_embed.weight": (C, cfg.bits),
        "word_embed.bias": (C,),
        "shared_ada_lin.1.weight": (6 * C, C),
        "shared_ada_lin.1.bias": (6 * C,),
    }
    per_chunk = cfg.depth // cfg.block_chunks
    block: dict[str, Shape] = {
        "ada_gss": (1, 1, 6, C),
        "sa.mat_qkv.weight": (3 * C, C),
        "sa.q_bias": (C,),
        "sa.v_bias": (C,),
        "sa.zero_k_bias": (C,),
        "sa.scale_mul_1H11": (1, cfg.num_heads, 1, 1),
        "sa.proj.weight": (C, C),
        "sa.proj.bias": (C,),
        "ca.mat_q.weight": (C, C),
        "ca.mat_q.bias": (C,),
        "ca.mat_kv.weight": (2 * C, C),
        "ca.v_bias": (C,),
        "ca.zero_k_bias": (C,),
        "ca.proj.weight": (C, C),
        "ca.proj.bias": (C,),
        "ca_norm.weight": (C,),
        "ca_norm.bias": (C,),
        "ffn.fc1.weight": (hid, C),
        "ffn.fc1.bias": (hid,),
        "ffn.fc2.weight": (C, hid),
        "ffn.fc2.bias": (C,),
    }
    for c in range(cfg.block_chunks):
        for j in range(per_chunk):
            out.update({f"block_chunks.{c}.module.{j}.{k}": v for k, v in block.items()})
    out["head_nm.ada_lin.1.weight"] = (2 * C, C)
    out["head_nm.ada_lin.1.bias"] = (2 * C,)
    out["head.weight"] = (cfg.vocab, C)
    out["head.bias"] = (cfg.vocab,)
    return out


def _resblock_shapes(prefix: str, c_in: int, c_out: int) -> dict[str, Shape]:
    out: dict[str, Shape] = {
        f"{prefix}.norm1.norm.weight": (c_in,),
        f"{prefix}.norm1.norm.bias": (c_in,),
        f"{prefix}.conv1.conv.weight": (c_out, c_in, 3, 3),
        f"{prefix}.conv1.conv.bias": (c_out,),
        f"{prefix}.norm2.norm.weight": (c_out,),
        f"{prefix}.norm2.norm.bias": (c_out,),
        f"{prefix}.conv2.conv.weight": (c_out, c_out, 3, 3),
        f"{prefix}.conv2.conv.bias": (c_out,),
    }
    if c_in != c_out:
        out[f"{prefix}.nin_shortcut.conv.weight"] = (c_out, c_in, 1, 1)
        out[f"{prefix}.nin_shortcut.conv.bias"] = (c_out,)
    return out


def _conv_shapes(prefix: str, c_in: int, c_out: int, k: int = 3) -> dict[str, Shape]:
    return {f"{prefix}.conv.weight": (c_out, c_in, k, k), f"{prefix}.conv.bias": (c_out,)}


def vae_tensor_shapes(cfg: VAEConfig) -> dict[str, Shape]:
    """State-dict names and shapes of :class:`BSQVAE` for ``cfg`` (buffers included)."""
    ch, n, d = cfg.base_channels, len(cfg.ch_mult), cfg.bits
    out: dict[str, Shape] = {}
    out.update(_conv_shapes("encoder.conv_in", 3, ch))
    c_in = ch
    for i, mult in enumerate(cfg.ch_mult):
        c_out = ch * mult
        for j in range(cfg.encoder_blocks):
            out.update(_resblock_shapes(f"encoder.down.{i}.block.{j}", c_in if j == 0 else c_out, c_out))
        if i < n - 1:
            out.update(_conv_shapes(f"encoder.down.{i}.downsample.conv", c_out, c_out))
        c_in = c_out
    for name in ("block_1", "block_2"):
        out.update(_resblock_shapes(f"encoder.mid.{name}", c_in, c_in))
    out["encoder.norm_out.norm.weight"] = (c_in,)
    out["encoder.norm_out.norm.bias"] = (c_in,)
    out.update(_conv_shapes("encoder.conv_out", c_in, d))

    c_in = ch * cfg.ch_mult[-1]
    out.update(_conv_shapes("decoder.conv_in", d, c_in))
    for name in ("block_1", "block_2"):
        out.update(_resblock_shapes(f"decoder.mid.{name}", c_in, c_in))
    for i in reversed(range(n)):
        c_out = ch * cfg.ch_mult[i]
        for j in range(cfg.decoder_blocks):
            out.update(_resblock_shapes(f"decoder.up.{i}.block.{j}", c_in if j == 0 else c_out, c_out))
        if i > 0:
            out.update(_conv_shapes(f"decoder.up.{i}.upsample.conv", c_out, c_out))
        c_in = c_out
    out["decoder.norm_out.norm.weight"] = (c_in,)
    out["decoder.norm_out.norm.bias"] = (c_in,)
    out.update(_conv_shapes("decoder.conv_out", c_in, 3))
    out["quantizer.lfq.mask"] = (d,)
    out["quantize.lfq.mask"] = (d,)
    return out


def expected_tensors(spec: ModelSpec) -> dict[str, dict[str, Shape]]:
    """``{"transformer": {name: shape}, "vae": {name: shape}}`` of a spec, without building it.

    Names ending in one of :data:`CONSTANT_BUFFER_SUFFIXES` may be absent from a file.
    """
    return {"transformer": transformer_tensor_shapes(spec.transformer), "vae": vae_tensor_shapes(spec.vae)}


#: buffers that hold constants (zero K biases, bit place values): optional in checkpoint files
CONSTANT_BUFFER_SUFFIXES = ("zero_k_bias", "lfq.mask")


def is_constant_buffer(name: str) -> bool:
    return name.endswith(CONSTANT_BUFFER_SUFFIXES)


def _constant_buffer(name: str, shape: Shape) -> Tensor:
    if name.endswith("zero_k_bias"):
        return torch.zeros(shape)
    if name.endswith("lfq.mask"):
        return 2 ** torch.arange(shape[0] - 1, -1, -1)
    raise KeyError(name)


def _names_preview(names: Iterable[str], limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


#: tensors whose shape identifies a model's size, and how to say it
_SIGNATURES = {
    "word_embed.weight": "the file is a transformer of width {file[0]} with {file[1]} bits per token, "
    "the model has width {model[0]} and {model[1]} bits",
    "encoder.conv_out.conv.weight": "the file is a tokenizer with {file[0]} bits, the model's has {model[0]}",
}


def check_tensor_shapes(what: str, found: Mapping[str, Sequence[int]], expected: Mapping[str, Shape]) -> None:
    """Raise :class:`CheckpointError` unless ``found`` has exactly the ``expected`` tensors.

    Constant buffers may be missing. ``what`` names the file/role in the message.
    """
    missing = [n for n in expected if n not in found and not is_constant_buffer(n)]
    unexpected = [n for n in found if n not in expected]
    wrong_names = [n for n in expected if n in found and tuple(found[n]) != tuple(expected[n])]
    if not (missing or unexpected or wrong_names):
        return
    # model-level tensors first: they tell the widths apart better than the 100s of block tensors
    wrong_names.sort(key=lambda n: (n.startswith(("block_chunks.", "encoder.down.", "decoder.up.")), n))
    wrong = [f"{n} (file {list(found[n])}, expected {list(expected[n])})" for n in wrong_names]
    parts = []
    for name, meaning in _SIGNATURES.items():
        if name in wrong_names:
            parts.append(meaning.format(file=found[name], model=expected[name]))
            break
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape: {', '.join(wrong[:4])}" + (f", … ({len(wrong) - 4} more)" if len(wrong) > 4 else ""))
    if missing:
        parts.append(f"{len(missing)} missing: {_names_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_names_preview(unexpected)}")
    raise CheckpointError(
        f"{what} does not match the model: " + "; ".join(parts),
        hint="check that the file belongs to this model (e.g. not 8B weights for a 2B spec, or another tokenizer)",
    )


# ---------------------------------------------------------------------------------------------
# reading checkpoints
# ---------------------------------------------------------------------------------------------


class TensorSource:
    """Named tensors of a checkpoint, read one at a time. Use as a context manager."""

    def __init__(self, label: str) -> None:
        self.label = label
        #: model name -> name in the file (for tolerated spelling variants)
        self.renames: dict[str, str] = {}

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> Shape:
        raise NotImplementedError

    def _get(self, name: str) -> Tensor:
        raise NotImplementedError

    def get(self, name: str) -> Tensor:
        try:
            return self._get(self.renames.get(name, name))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {self.label}: {exc}") from exc

    def shapes(self) -> dict[str, Shape]:
        """Shapes under model names (after :attr:`renames`)."""
        inv = {v: k for k, v in self.renames.items()}
        return {inv.get(n, n): self.shape(n) for n in self.names()}

    def close(self) -> None:
        pass

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MappingSource(TensorSource):
    """Tensors from an in-memory (or memory-mapped) state dict."""

    def __init__(self, tensors: Mapping[str, Tensor], label: str = "state dict") -> None:
        super().__init__(label)
        bad = [k for k, v in tensors.items() if not isinstance(v, Tensor)]
        if bad:
            raise CheckpointError(f"{label} holds non-tensor entries: {_names_preview(bad)}")
        self._tensors = tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> Shape:
        return tuple(self._tensors[name].shape)

    def _get(self, name: str) -> Tensor:
        return self._tensors[name]


class SafetensorsSource(TensorSource):
    """Tensors from one or more safetensors files, memory-mapped by ``safe_open``."""

    def __init__(self, files: Sequence[Path], label: str) -> None:
        super().__init__(label)
        self._handles: list[Any] = []
        self._where: dict[str, Any] = {}
        try:
            for f in files:
                try:
                    h = safe_open(str(f), framework="pt", device="cpu")
                except (SafetensorError, OSError) as exc:
                    raise CheckpointError(
                        f"{f} is not a readable safetensors file (truncated or corrupt?): {exc}"
                    ) from exc
                self._handles.append(h)
                for k in h.keys():
                    if k in self._where:
                        raise CheckpointError(f"tensor {k!r} appears in two shards of {label}")
                    self._where[k] = h
        except BaseException:
            self.close()
            raise

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> Shape:
        return tuple(self._where[name].get_slice(name).get_shape())

    def _get(self, name: str) -> Tensor:
        try:
            return self._where[name].get_tensor(name)
        except (SafetensorError, TypeError) as exc:  # TypeError: a size torch cannot hold (the library allows u64)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"cannot read tensor {name!r} of {self.label}: {first}") from None

    def close(self) -> None:
        for h in self._handles:
            close = getattr(h, "__exit__", None)
            if close is not None:
                try:
                    close(None, None, None)
                except Exception:  # noqa: BLE001 - closing must not mask the real error
                    pass
        self._handles.clear()


def _load_pickle(path: Path, state_dict_keys: Sequence[Sequence[str]]) -> MappingSource:
    obj = load_pth_weights_only(path)  # weights_only: never runs pickled code
    return MappingSource(find_state_dict(obj, state_dict_keys, path), str(path))


def open_checkpoint(
    source: str | Path | Mapping[str, Tensor], *, state_dict_keys: Sequence[Sequence[str]] = ((),)
) -> TensorSource:
    """Open a checkpoint: a safetensors file, a ``*.safetensors.index.json``, a folder of
    safetensors shards, a pickled ``.pth`` (state dict found at one of ``state_dict_keys``), or
    an in-memory state dict."""
    if isinstance(source, Mapping):
        return MappingSource(source)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if index:
            return open_checkpoint(index[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"folder {path} holds no safetensors files")
        return SafetensorsSource(files, str(path))
    if path.name.endswith(".json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} is not a safetensors index (no weight_map): {exc}") from exc
        shards = sorted({path.parent / f for f in weight_map.values()})
        absent = [s.name for s in shards if not s.is_file()]
        if absent:
            raise CheckpointError(f"shards listed in {path} are missing: {_names_preview(absent)}")
        src = SafetensorsSource(shards, str(path))
        listed, present = set(weight_map), set(src.names())
        if listed != present:
            src.close()
            raise CheckpointError(
                f"{path} and its shards disagree: {_names_preview(listed ^ present)}"
            )
        return src
    if path.suffix == ".safetensors":
        return SafetensorsSource([path], str(path))
    return _load_pickle(path, state_dict_keys)


def _add_vae_aliases(src: TensorSource, expected: Mapping[str, Shape]) -> None:
    """Accept ``X.weight`` for ``X.conv.weight`` / ``X.norm.weight`` (the official loader does)."""
    names = set(src.names())
    for n in names:
        if n in expected:
            continue
        head, _, leaf = n.rpartition(".")
        for inner in ("conv", "norm"):
            alias = f"{head}.{inner}.{leaf}"
            if alias in expected and alias not in names:
                src.renames[alias] = n
                break


def read_tensor_shapes(
    source: str | Path | Mapping[str, Tensor], *, state_dict_keys: Sequence[Sequence[str]] = ((),)
) -> dict[str, Shape]:
    """Names and shapes in a checkpoint (only the header of safetensors files is read)."""
    with open_checkpoint(source, state_dict_keys=state_dict_keys) as src:
        return src.shapes()


def validate_checkpoint(spec: ModelSpec, role: str, source: str | Path | Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointError` unless ``source`` holds exactly the ``role`` tensors of ``spec``."""
    expected = expected_tensors(spec)[role]
    with open_checkpoint(source, state_dict_keys=_state_dict_keys(spec, role)) as src:
        if role == "vae":
            _add_vae_aliases(src, expected)
        check_tensor_shapes(f"{role} checkpoint {src.label} for {spec.name}", src.shapes(), expected)


#: where pickled checkpoints keep the state dict, for specs that do not say (official layouts:
#: top level for slim transformer files, trainer/gpt_fsdp for training checkpoints, 'vae' or 'ema'
#: for tokenizers)
DEFAULT_STATE_DICT_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "transformer": ((), ("trainer", "gpt_fsdp"), ("model",), ("state_dict",)),
    "vae": (("vae",), ("ema",), ()),
}


def _state_dict_keys(spec: ModelSpec, role: str) -> tuple[tuple[str, ...], ...]:
    try:
        return spec.file(role).state_dict_keys
    except KeyError:
        return DEFAULT_STATE_DICT_KEYS.get(role, ((),))


# ---------------------------------------------------------------------------------------------
# seeded init and materialisation
# ---------------------------------------------------------------------------------------------


def seeded_values(module: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Deterministic float32 values for every parameter of ``module`` (CPU, registration order).

    Uniform draws in float64 (bit-identical on every machine, unlike the vectorised normal
    sampler), scaled to: weights std 1/sqrt(fan_in); norm weights 1 +- 0.1; QK-norm temperatures
    ln 4 +- 0.1; other vectors (biases) std 0.02. Not a training init: a tiny random model whose
    every branch matters, for tests and demos.
    """
    out: dict[str, Tensor] = {}
    for name, p in module.named_parameters():
        shape = tuple(p.shape)
        u = torch.rand(math.prod(shape), generator=generator, dtype=torch.float64) * 2 - 1  # U(-1, 1)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "scale_mul_1H11":
            v = math.log(4.0) + 0.1 * u
        elif len(shape) <= 1 and "norm" in name and leaf == "weight":
            v = 1.0 + 0.1 * u
        elif len(shape) <= 1:
            v = 0.02 * math.sqrt(3.0) * u
        else:
            fan_in = math.prod(shape[1:])
            v = math.sqrt(3.0 / fan_in) * u
        out[name] = v.to(torch.float32).reshape(shape)
    return out


def seeded_init_(module: nn.Module, generator: torch.Generator) -> None:
    """Fill the (materialised) parameters of ``module`` in place with :func:`seeded_values`."""
    values = seeded_values(module, generator)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name])


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), leaf


def materialize_(
    model: nn.Module,
    values: Callable[[str], Tensor | None],
    *,
    device: torch.device,
    dtype_of: Callable[[str], torch.dtype],
) -> None:
    """Replace every (meta) parameter/buffer of ``model`` by ``values(name)`` (or a constant).

    Each value is cast to ``dtype_of(name)`` (floating tensors only), moved to ``device`` and
    assigned in place of the meta tensor; parameters come out frozen (``requires_grad=False``).
    """
    for name, meta in model.state_dict(keep_vars=True).items():
        value = values(name)
        if value is None:
            if not is_constant_buffer(name):
                raise CheckpointError(f"no value for tensor {name!r}")
            value = _constant_buffer(name, tuple(meta.shape))
        if tuple(value.shape) != tuple(meta.shape):
            raise CheckpointError(f"tensor {name!r} has shape {list(value.shape)}, expected {list(meta.shape)}")
        # move first, then cast: the cast runs on the target device (fast on a GPU) and only one
        # tensor at a time exists in the file's dtype
        value = value.to(device=device)
        value = value.to(dtype_of(name) if value.is_floating_point() else meta.dtype)
        owner, leaf = _owner(model, name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left on the meta device: {leftover}")  # a bug, not a bad file


def transformer_dtype_of(dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Block weights in ``dtype``; condition path, AdaLN offsets, embeddings and head in float32."""

    def of(name: str) -> torch.dtype:
        if name.startswith("block_chunks.") and not name.endswith("ada_gss"):
            return dtype
        return torch.float32

    return of


def _load_into(
    model: nn.Module,
    what: str,
    source: str | Path | Mapping[str, Tensor],
    expected: Mapping[str, Shape],
    *,
    state_dict_keys: Sequence[Sequence[str]],
    device: torch.device,
    dtype_of: Callable[[str], torch.dtype],
    vae_aliases: bool = False,
) -> None:
    with open_checkpoint(source, state_dict_keys=state_dict_keys) as src:
        if vae_aliases:
            _add_vae_aliases(src, expected)
        check_tensor_shapes(f"{what} ({src.label})", src.shapes(), expected)
        present = set(src.shapes())
        with torch.no_grad():
            materialize_(model, lambda n: src.get(n) if n in present else None, device=device, dtype_of=dtype_of)


def build_transformer(
    cfg: TransformerConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str | Path | Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    state_dict_keys: Sequence[Sequence[str]] = DEFAULT_STATE_DICT_KEYS["transformer"],
) -> InfinityTransformer:
    """An eval-mode, frozen transformer with ``weights`` loaded strictly, or a seeded init."""
    _check_dtype(dtype)
    with skeleton():
        model = InfinityTransformer(cfg)
    return _fill(model, "transformer checkpoint", weights, transformer_tensor_shapes(cfg), generator,
                 state_dict_keys=state_dict_keys, device=torch.device(device), dtype_of=transformer_dtype_of(dtype))


def build_vae(
    cfg: VAEConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str | Path | Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    state_dict_keys: Sequence[Sequence[str]] = DEFAULT_STATE_DICT_KEYS["vae"],
) -> BSQVAE:
    """An eval-mode, frozen tokenizer with ``weights`` loaded strictly, or a seeded init."""
    _check_dtype(dtype)
    with skeleton():
        model = BSQVAE(cfg)
    return _fill(model, "VAE checkpoint", weights, vae_tensor_shapes(cfg), generator, state_dict_keys=state_dict_keys,
                 device=torch.device(device), dtype_of=lambda n: dtype, vae_aliases=True)


def _fill(model, what, weights, expected, generator, *, state_dict_keys, device, dtype_of, vae_aliases=False):
    """Load ``weights`` strictly into the meta-built ``model``, or give it the seeded init."""
    if weights is not None:
        _load_into(model, what, weights, expected, state_dict_keys=state_dict_keys, device=device,
                   dtype_of=dtype_of, vae_aliases=vae_aliases)
    else:
        if generator is None:
            raise InvalidInputError("a seeded init needs an explicit torch.Generator")
        vals = seeded_values(model, generator)
        with torch.no_grad():
            materialize_(model, vals.get, device=device, dtype_of=dtype_of)
    return model.eval()


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise InvalidInputError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")


# ---------------------------------------------------------------------------------------------
# all components of a spec
# ---------------------------------------------------------------------------------------------


@dataclass
class Components:
    """The built parts of a model (None for roles that were not requested)."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype  # of the transformer blocks
    transformer: InfinityTransformer | None = None
    vae: BSQVAE | None = None
    text_encoder: T5TextEncoder | None = None


def build_components(
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: Mapping[str, str | Path | Mapping[str, Tensor]] | None = None,
    *,
    seed: int = 0,
    roles: Iterable[str] = ROLES,
    vae_dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype | None = None,
    allow_random_init: bool = False,
) -> Components:
    """Build ``roles`` of ``spec`` on ``device``, eval mode, parameters frozen.

    ``weights`` maps a role to its file (transformer, vae) or folder (text_encoder), or to its
    tensors (a packaged bundle, see :func:`read_bundle`; the text encoder must be a tiny one). Roles
    without a file get the deterministic seeded init (``seed``; role k uses a CPU generator seeded
    with ``seed + k`` in the order transformer, vae, text_encoder) when the spec has built-in
    weights or ``allow_random_init`` is set; otherwise :class:`ModelFilesError`. ``dtype`` is the
    transformer blocks' dtype; the text encoder defaults to float16 on CUDA (as the official
    pipeline runs flan-t5-xl) and float32 elsewhere.
    """
    roles = tuple(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise InvalidInputError(f"unknown roles {unknown}; known: {', '.join(ROLES)}")
    weights = dict(weights or {})
    stray = [r for r in weights if r not in ROLES]
    if stray:
        raise ModelFilesError(f"weights given for unknown roles {stray}; known: {', '.join(ROLES)}")
    problems = spec.problems()
    if problems:
        raise InvalidInputError(f"model spec {spec.name!r} is inconsistent: " + "; ".join(problems))
    device = torch.device(device)
    out = Components(spec, device, dtype)

    def generator_for(role: str) -> torch.Generator:
        if role not in weights and not (spec.builtin_weights or allow_random_init):
            raise ModelFilesError(
                f"model {spec.name!r} needs a {role} file",
                hint=f"run 'arbooth models pull {spec.name}' or pass the file",
            )
        return torch.Generator(device="cpu").manual_seed(seed + ROLES.index(role))

    if "transformer" in roles:
        gen = generator_for("transformer")
        out.transformer = build_transformer(
            spec.transformer, device=device, dtype=dtype, weights=weights.get("transformer"), generator=gen,
            state_dict_keys=_state_dict_keys(spec, "transformer"),
        )
    if "vae" in roles:
        gen = generator_for("vae")
        out.vae = build_vae(
            spec.vae, device=device, dtype=vae_dtype, weights=weights.get("vae"), generator=gen,
            state_dict_keys=_state_dict_keys(spec, "vae"),
        )
    if "text_encoder" in roles:
        tdt = text_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        te = spec.text_encoder
        if isinstance(weights.get("text_encoder"), Mapping):
            if te.tiny_config is None:
                raise ModelFilesError(f"model {spec.name!r} reads its text encoder from a folder, not from tensors")
            state = weights["text_encoder"]
            out.text_encoder = T5TextEncoder.tiny(te, device=device, dtype=tdt,
                                                  init=lambda m: load_text_encoder_state_(m, state))
        elif "text_encoder" in weights:
            out.text_encoder = T5TextEncoder.from_pretrained(
                weights["text_encoder"], device=device, dtype=tdt, max_length=te.max_length
            )
        elif te.tiny_config is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed + ROLES.index("text_encoder"))
            out.text_encoder = T5TextEncoder.tiny(te, device=device, dtype=tdt, init=lambda m: seeded_init_(m, gen))
        else:
            generator_for("text_encoder")  # raises: a hub text encoder needs its folder
            raise ModelFilesError(f"model {spec.name!r} needs its text encoder folder ({te.repo_id})")
    return out


# ---------------------------------------------------------------------------------------------
# packaged bundles: every role of a small model in one safetensors file
# ---------------------------------------------------------------------------------------------


def load_text_encoder_state_(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into a (materialised) T5 encoder strictly: every tensor, right shapes."""
    own = model.state_dict()
    check_tensor_shapes("text encoder tensors", {k: tuple(v.shape) for k, v in state.items()},
                        {k: tuple(v.shape) for k, v in own.items()})
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(state[name])


def bundle_tensors(components: Components) -> dict[str, Tensor]:
    """Every tensor of the built roles under ``<role>.`` prefixes, contiguous float32 CPU copies
    (tied T5 embeddings are stored once per name, as separate tensors)."""
    out: dict[str, Tensor] = {}
    parts = {"transformer": components.transformer, "vae": components.vae,
             "text_encoder": components.text_encoder.model if components.text_encoder is not None else None}
    for role, module in parts.items():
        if module is None:
            continue
        for name, t in module.state_dict().items():
            if is_constant_buffer(name) and role != "text_encoder":
                continue
            v = t.detach().to("cpu")
            out[f"{role}.{name}"] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def read_bundle(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """A bundle file -> role -> state dict. Unknown prefixes are an error (a wrong file)."""
    out: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                role, _, name = key.partition(".")
                if role not in ROLES or not name:
                    raise CheckpointError(f"{path}: tensor {key!r} belongs to no role ({', '.join(ROLES)})")
                out.setdefault(role, {})[name] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read the weights bundle {path}: {exc}") from exc
    return out
