"""Which model a command uses, and building it from the cache.

A model is named explicitly (``--model``), by ``$ARBOOTH_MODEL``, is the one the last command used
(``<home>/last-model``, while it is still available), is the only one in the cache, or else is the
embedded default (``toy``, whose weights ship inside the package).
Built-in (tiny) specs need no files. Every loaded model carries an identity hash for provenance:
the cache's ``model_hash`` over its files, the sha256 of a packaged bundle, or, for built-in
weights, a hash of the spec that makes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import ModelCache
from .checkpoint_io import sha256_file
from .errors import ConfigError, ModelFilesError, ModelNotCachedError, NotFoundError
from .registry import ROLES, ModelSpec, default_registry

if TYPE_CHECKING:
    import torch

    from .models.build import Components

ENV_MODEL = "ARBOOTH_MODEL"
#: the model used when nothing else selects one (its weights ship inside the package)
DEFAULT_MODEL = "toy"
#: where packaged weight bundles live
PACKAGED_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    weights: dict[str, Path]  # role -> file or folder; empty for built-in weights
    model_hash: str


def spec_hash(spec: ModelSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def resolve_model(name: str | None, *, cache: ModelCache | None = None,
                  env: Mapping[str, str] | None = None) -> ResolvedModel:
    env = os.environ if env is None else env
    cache = cache or ModelCache()
    registry = default_registry(env)
    if not name:
        name = env.get(ENV_MODEL) or None
    if not name:
        last = last_model(cache.root)
        if last in registry and (_available(registry.get(last)) or cache.has(last)):
            name = last
    if not name:
        ready = [m.name for m in cache.scan().models if m.name in registry]
        if len(ready) == 1:
            name = ready[0]
        elif DEFAULT_MODEL in registry and _available(registry.get(DEFAULT_MODEL)):
            name = DEFAULT_MODEL
        else:
            choices = ", ".join(ready) if ready else "none is cached"
            raise ConfigError([f"no --model given and {len(ready)} models are cached ({choices}); "
                               f"pass --model NAME or set {ENV_MODEL} (ready without files: "
                               f"{', '.join(s.name for s in registry if _available(s)) or 'none'})"])
    spec = registry.get(name)
    if spec.builtin_weights:
        return ResolvedModel(spec, {}, "builtin-" + spec_hash(spec))
    if spec.packaged:
        path = packaged_path(spec)
        if not path.is_file():
            raise ModelFilesError(f"the weights of the built-in model {spec.name!r} are missing from this "
                                  f"installation ({path})", hint="reinstall arbooth, or pass --model NAME")
        return ResolvedModel(spec, {role: path for role in ROLES}, "packaged-" + sha256_file(path))
    if not cache.has(name):
        raise ModelNotCachedError(name)
    cached = cache.get(name)
    return ResolvedModel(spec, {role: cached.path(role) for role in cached.roles}, cached.model_hash)


def packaged_path(spec: ModelSpec) -> Path:
    assert spec.packaged is not None
    return PACKAGED_DIR / spec.packaged


def _available(spec: ModelSpec) -> bool:
    """Usable without the cache: weights made in code, or a packaged bundle that is present."""
    return spec.builtin_weights or (spec.packaged is not None and packaged_path(spec).is_file())


LAST_MODEL_FILE = "last-model"


def last_model(root: Path) -> str | None:
    try:
        return (Path(root) / LAST_MODEL_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def remember_model(name: str, root: Path | None = None) -> None:
    """Record ``name`` as the last used model (best effort: a read-only home only loses this)."""
    from . import paths
    from .atomic import write_text_atomic
    from .errors import ResourceError

    root = Path(root) if root is not None else paths.home()
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / LAST_MODEL_FILE, name + "\n")
    except (OSError, ResourceError):
        pass


def pick_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NotFoundError("--device cuda was asked for but no CUDA device is available",
                            hint="use --device cpu (slow for real models) or run on a GPU machine")
    return dev


ENV_THREADS = "ARBOOTH_THREADS"


def cpu_threads(env: Mapping[str, str] | None = None, cores: int | None = None) -> int | None:
    """Threads for CPU work: ``$ARBOOTH_THREADS``; else None (torch's own choice) when
    ``$OMP_NUM_THREADS`` is set; else half the cores, at most 8. Half, because an OpenMP thread per
    core slows to a crawl as soon as anything else runs (measured in docs/benchmarks.md)."""
    env = os.environ if env is None else env
    if env.get(ENV_THREADS, "").strip():
        try:
            return max(1, int(env[ENV_THREADS]))
        except ValueError:
            raise ConfigError([f"{ENV_THREADS} must be a whole number, got {env[ENV_THREADS]!r}"]) from None
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, min(8, (cores or os.cpu_count() or 1) // 2))


def use_cpu_threads(device: torch.device) -> None:
    """Apply :func:`cpu_threads` when the work runs on the CPU."""
    n = cpu_threads() if device.type == "cpu" else None
    if n is not None:
        import torch

        torch.set_num_threads(n)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def load_components(resolved: ResolvedModel, *, device: torch.device, dtype: torch.dtype,
                    roles: Iterable[str] = ("transformer", "vae", "text_encoder")) -> Components:
    from .models.build import build_components, read_bundle

    roles = tuple(roles)
    weights: dict = {r: p for r, p in resolved.weights.items() if r in roles}
    if resolved.spec.packaged and weights:
        parts = read_bundle(next(iter(weights.values())))
        weights = {r: parts[r] for r in weights if r in parts}
    return build_components(resolved.spec, device=device, dtype=dtype, weights=weights, roles=tuple(roles))
