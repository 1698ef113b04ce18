"""Benchmark: load time and peak memory of infinity-2b / infinity-8b from safetensors files of the
real size (random weights, fp32 on disk as the official checkpoints are), built in bf16.

    python bench/load_models.py --workdir /tmp/arbooth-bench --device cuda --out results.json

For each model it writes the transformer (one file for 2B; 4 shards + index for 8B, as on the hub)
and the tokenizer with random values, then, in a fresh subprocess per measurement, times
``build_components(spec, roles=("transformer", "vae"), dtype=bfloat16)`` and records the peak GPU
memory (``torch.cuda.max_memory_allocated``) and the peak host RSS of that subprocess. The page cache
is dropped before each load when the system allows it (reported as ``cold``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_random_files(name: str, workdir: Path, device: str) -> dict[str, str]:
    import torch

    from arbooth_cli.checkpoint_io import write_safetensors
    from arbooth_cli.models.build import transformer_tensor_shapes, vae_tensor_shapes
    from arbooth_cli.registry import get_spec

    spec = get_spec(name)
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=device).manual_seed(0)

    def rand(shape):
        return (torch.randn(shape, generator=g, device=device) * 0.02).cpu()

    files = {}
    tshapes = transformer_tensor_shapes(spec.transformer)
    sharded = bool(spec.files) and spec.file("transformer").kind == "safetensors-index"
    if sharded:
        names = list(tshapes)
        shards = [names[i::4] for i in range(4)]
        weight_map = {}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-00004.safetensors"
            if not (d / fname).exists():
                write_safetensors(d / fname, [(n, rand(tshapes[n])) for n in part])
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        files["transformer"] = str(d / "model.safetensors.index.json")
    else:
        p = d / "transformer.safetensors"
        if not p.exists():
            write_safetensors(p, [(n, rand(s)) for n, s in tshapes.items()])
        files["transformer"] = str(p)
    p = d / "vae.safetensors"
    if not p.exists():
        write_safetensors(p, [(n, rand(s)) for n, s in vae_tensor_shapes(spec.vae).items()])
    files["vae"] = str(p)
    return files


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {repo!r})
from arbooth_cli.models.build import build_components
from arbooth_cli.registry import get_spec
spec = get_spec({name!r})
dev = torch.device({device!r})
if dev.type == "cuda":
    torch.cuda.init(); torch.cuda.synchronize()
t0 = time.perf_counter()
c = build_components(spec, device=dev, dtype=torch.bfloat16, vae_dtype=torch.bfloat16,
                     weights={files!r}, roles=("transformer", "vae"))
if dev.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
n = sum(p.numel() for p in c.transformer.parameters())
print(json.dumps(dict(
    load_s=round(dt, 3),
    transformer_params=n,
    peak_gpu_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
    peak_host_rss_GiB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
)))
"""


def measure(name: str, files: dict[str, str], device: str) -> dict:
    cold = drop_page_cache()
    code = CHILD.format(repo=str(REPO), name=name, device=device, files=files)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"load of {name} failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["cold_page_cache"] = cold
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="infinity-2b,infinity-8b")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "models": {}}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        files = write_random_files(name, args.workdir, args.device)
        sizes = {k: sum(p.stat().st_size for p in Path(v).parent.glob("*.safetensors")) if k == "transformer"
                 and v.endswith(".json") else Path(v).stat().st_size for k, v in files.items()}
        runs = [measure(name, files, args.device) for _ in range(args.repeats)]
        results["models"][name] = {"file_bytes": sizes, "write_s": round(time.perf_counter() - t0, 1), "runs": runs}
        print(json.dumps({name: results["models"][name]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
