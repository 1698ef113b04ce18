"""The scale-by-scale self-attention of a training step: its gradients through one prefix node
(``attend()`` now) against plain slices (before), on a GPU.

infinity-2b's shapes at 1024x1024 (bf16, batch 4, 16 heads of 128, 10,521 tokens: one masked
call for the first ten scales, one call for each of the last three). Reports the median time of
one block's attention forward and backward each way, and the largest gradient differences: the
prefix node against the slices, and the slices against themselves run again (cuDNN accumulates
query gradients in a nondeterministic order: the variation to compare with).

    python bench/prefix_attention.py --out prefix.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.models.schedules import model_scales  # noqa: E402
from arbooth_cli.models.transformer import ScalePrefixes, attend  # noqa: E402


def sliced(q_BLHc, k_BLHc, v_BLHc, sp: ScalePrefixes):
    """The calls as they ran before: each a plain slice of the queries, keys and values."""
    q, k, v = (t.transpose(1, 2) for t in (q_BLHc, k_BLHc, v_BLHc))
    h = sp.head
    parts = [F.scaled_dot_product_attention(q[:, :, :h], k[:, :, :h], v[:, :, :h], attn_mask=sp.head_mask, scale=1.0)]
    parts += [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], scale=1.0) for s, e in sp.bounds]
    B, L, H, c = q_BLHc.shape
    return torch.cat(parts, dim=2).transpose(1, 2).reshape(B, L, H * c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    scales = model_scales("1M")
    sp = ScalePrefixes.of(scales, dev)
    B, H, c = args.batch, 16, 128
    L = sum(t * h * w for t, h, w in scales)
    g = torch.Generator(device=dev).manual_seed(0)
    # q, k, v as the blocks make them: (B, L, H, c) pieces of one projection
    qkv = torch.randn(B, L, 3, H, c, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    grad = torch.randn(B, L, H * c, device=dev, dtype=torch.bfloat16, generator=g)
    ways = {"prefix node": lambda q, k, v: attend(q, k, v, sp, 1.0), "slices": lambda q, k, v: sliced(q, k, v, sp)}

    def run(fn) -> torch.Tensor:
        qkv.grad = None
        fn(*qkv.unbind(2)).backward(grad)
        return qkv.grad.clone()

    grads = {name: run(fn) for name, fn in ways.items()}
    grads["slices again"] = run(ways["slices"])
    times = {}
    for name, fn in ways.items():
        ms = []
        for _ in range(args.reps + 3):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(fn)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms.append((time.perf_counter() - t0) * 1e3)
        times[name] = round(statistics.median(ms[3:]), 3)

    def diff(a: str, b: str) -> list[float]:
        return [float((grads[a][:, :, i].float() - grads[b][:, :, i].float()).abs().max()) for i in range(3)]

    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__, "tokens": L, "calls": len(sp.bounds) + 1,
           "ms_forward_backward": times, "largest_grad_difference_qkv": {
               "prefix node vs slices": diff("prefix node", "slices"), "slices vs slices again": diff("slices", "slices again")},
           "largest_grad_qkv": [float(grads["slices"][:, :, i].float().abs().max()) for i in range(3)]}
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
