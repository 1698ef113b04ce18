"""The arithmetic floor of one tuning step: its matmuls and its attention, timed alone.

One default infinity-2b step at 1024x1024 runs 4 sequences of 10,521 tokens (2 photos + 2 class
samples) through 32 blocks: every block's linears forward twice (the forward and the recomputation
of gradient checkpointing), their input gradients once, and the weight gradients of the tuned
ones (cross-attention q and proj, fc1, fc2); the block-causal self-attention forward twice and
backward once. This script times exactly that work on random tensors, with nothing else between
the kernels, in bf16 and with the linears in fp8 (``torch._scaled_mm``, e4m3 inputs and weights,
e5m2 gradients, one scale per tensor, the casts included), so it bounds from below what any
implementation of the step at these precisions costs on the device it runs on.

    python bench/step_floor.py --out floor.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.models.schedules import model_scales  # noqa: E402
from arbooth_cli.models.transformer import ScalePrefixes, attend  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def cuda_ms(fn, reps: int) -> float:
    """Mean milliseconds per call over ``reps`` calls after two warm-up calls (CUDA events)."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _to_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax().float().clamp(min=1e-12)
    scale = torch.finfo(dtype).max / amax
    return (x.float() * scale).to(dtype), scale.reciprocal()


def _to_fp8_t(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    q, inv = _to_fp8(x, dtype)
    return q.t().contiguous(), inv


def linear_times(M: int, n_in: int, n_out: int, tuned: bool, reps: int) -> dict:
    """Milliseconds of one linear's forward, input gradient and weight gradient, bf16 and fp8."""
    dev = torch.device("cuda")
    bf = torch.bfloat16
    x = torch.randn(M, n_in, device=dev, dtype=bf)
    g = torch.randn(M, n_out, device=dev, dtype=bf)
    w = torch.randn(n_out, n_in, device=dev, dtype=bf) * 0.02
    quant = torch.compile(_to_fp8, fullgraph=True, dynamic=False)
    quant_t = torch.compile(_to_fp8_t, fullgraph=True, dynamic=False)
    out = {
        "fwd_bf16": cuda_ms(lambda: x @ w.t(), reps),
        "dgrad_bf16": cuda_ms(lambda: g @ w, reps),
        "wgrad_bf16": cuda_ms(lambda: g.t() @ x, reps) if tuned else 0.0,
    }
    # frozen weights are cast once; a tuned one once per step, in both layouts (a small cost next
    # to the activations: it is counted below)
    w8, w_inv = quant(w, E4M3)
    w8t, _ = quant_t(w, E4M3)

    def fwd8():
        x8, x_inv = quant(x, E4M3)
        return torch._scaled_mm(x8, w8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=bf)

    def dgrad8():
        g8, g_inv = quant(g, E5M2)
        return torch._scaled_mm(g8, w8t.t(), scale_a=g_inv, scale_b=w_inv, out_dtype=bf)

    def wgrad8():
        gt8, g_inv = quant_t(g, E5M2)
        xt8, x_inv = quant_t(x, E4M3)
        return torch._scaled_mm(gt8, xt8.t(), scale_a=g_inv, scale_b=x_inv, out_dtype=bf)

    def weight_casts():
        quant(w, E4M3)
        quant_t(w, E4M3)

    x8_once, x_inv_once = quant(x, E4M3)
    out.update({
        "fwd_fp8": cuda_ms(fwd8, reps),
        "dgrad_fp8": cuda_ms(dgrad8, reps),
        "wgrad_fp8": cuda_ms(wgrad8, reps) if tuned else 0.0,
        "weight_cast_fp8": cuda_ms(weight_casts, reps) if tuned else 0.0,
        "gemm_only_fwd_fp8": cuda_ms(lambda: torch._scaled_mm(x8_once, w8.t(), scale_a=x_inv_once, scale_b=w_inv,
                                                              out_dtype=bf), reps),
    })
    return out


def attention_times(scales, batch: int, heads: int, head_dim: int, reps: int) -> dict:
    dev = torch.device("cuda")
    L = sum(t * h * w for t, h, w in scales)
    mk = lambda: torch.randn(batch, L, heads, head_dim, device=dev, dtype=torch.bfloat16,  # noqa: E731
                             requires_grad=True)
    q, k, v = mk(), mk(), mk()
    prefixes = ScalePrefixes.of(scales, dev)
    scale = head_dim ** -0.5

    def fwd():
        with torch.no_grad():
            attend(q, k, v, prefixes, scale)

    grad = torch.randn(batch, L, heads * head_dim, device=dev, dtype=torch.bfloat16)

    def fwd_bwd():
        attend(q, k, v, prefixes, scale).backward(grad)

    return {"fwd": cuda_ms(fwd, reps), "fwd_bwd": cuda_ms(fwd_bwd, reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--mlp", type=int, default=8192)
    ap.add_argument("--sequences", type=int, default=4, help="photos + class samples per step")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.recompile_limit = 64  # the casts compile once per tensor shape
    scales = model_scales("1M")
    L = sum(t * h * w for t, h, w in scales)
    M = -(-args.sequences * L // 16) * 16  # fp8 matmuls take dimensions in multiples of 16
    C = args.width
    # (name, in, out, tuned by default)
    linears = [("sa.qkv", C, 3 * C, False), ("sa.proj", C, C, False), ("ca.q", C, C, True),
               ("ca.proj", C, C, True), ("ffn.fc1", C, args.mlp, True), ("ffn.fc2", args.mlp, C, True)]
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tokens": M,
                 "depth": args.depth, "linears": {}}
    step = {"bf16": 0.0, "fp8": 0.0}
    flops = 0.0
    for name, n_in, n_out, tuned in linears:
        t = linear_times(M, n_in, n_out, tuned, args.reps)
        res["linears"][name] = {k: round(v, 3) for k, v in t.items()}
        for p in ("bf16", "fp8"):
            step[p] += 2 * t[f"fwd_{p}"] + t[f"dgrad_{p}"] + t[f"wgrad_{p}"]
        step["fp8"] += t["weight_cast_fp8"]
        flops += 2 * M * n_in * n_out * (3 + (1 if tuned else 0))
    att = attention_times(scales, args.sequences, args.heads, C // args.heads, args.reps)
    res["attention_ms_per_block"] = {k: round(v, 3) for k, v in att.items()}
    att_step = args.depth * (att["fwd"] + att["fwd_bwd"]) / 1000  # forward + recomputation + backward
    res["matmul_tflop_per_step"] = round(flops * args.depth / 1e12, 1)
    for p in ("bf16", "fp8"):
        mm = args.depth * step[p] / 1000
        res[f"step_floor_s[{p} linears]"] = {"linears_s": round(mm, 3), "attention_s": round(att_step, 3),
                                             "sum_s": round(mm + att_step, 3),
                                             "linears_tflops": round(flops * args.depth / mm / 1e12)}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
