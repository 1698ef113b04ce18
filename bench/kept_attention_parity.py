"""Training attention on a GPU (``arbooth_cli.models.attention``) against PyTorch's own SDPA.

1. The kept path (``--memory auto``), one call at infinity-2b's shapes (bf16, batch 4, 16 heads of
   128, a scale's queries against the keys of every scale up to it): the forward output, and the
   gradients of queries, keys and values when the outputs are kept (the first forward keeps them,
   the second returns them), against ``F.scaled_dot_product_attention``, and PyTorch's backward
   against itself run twice (cuDNN accumulates the query gradients in a nondeterministic order,
   so that is the variation to compare with).
2. The whole block-causal self-attention of a 1024x1024 step (the masked call of the first 10
   scales, then one call a scale) as one autograd node, against the same calls made one by one
   through autograd on slices (what a step ran before): the outputs, the gradients, and the time
   of a forward and backward pass each (CUDA events, median of ``--reps``).

    python bench/kept_attention_parity.py --reps 20 --out attention.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.models.attention import Call, KeptAttention, attention, fused_kernel_runs  # noqa: E402
from arbooth_cli.models.schedules import get_schedule  # noqa: E402
from arbooth_cli.models.transformer import ScalePrefixes  # noqa: E402


def max_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)]


def take_grads(ts: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    out = [t.grad.clone() for t in ts]
    for t in ts:
        t.grad = None
    return out


def kept_call(dev: torch.device, g: torch.Generator, B: int, H: int, c: int) -> list[dict]:
    rows = []
    for Lq, Lk in ((4096, 10521), (2000, 6425)):
        def rand(L: int) -> torch.Tensor:  # (B, L, H, c), as the blocks make them
            return torch.randn(B, L, H, c, device=dev, dtype=torch.bfloat16, generator=g)

        q, k, v = (t.requires_grad_() for t in (rand(Lq), rand(Lk), rand(Lk)))
        grad = torch.randn(B, Lq, H, c, device=dev, dtype=torch.bfloat16, generator=g)

        def plain() -> torch.Tensor:
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  scale=1.0).transpose(1, 2)

        want_out = plain()
        want_out.backward(grad)
        want = take_grads((q, k, v))
        plain().backward(grad)
        again = take_grads((q, k, v))
        store = KeptAttention(1)
        store.start_step()
        calls = (Call(0, Lq, Lk, None),)
        first = attention(q, k, v, calls, 1.0, store.slot(0))
        store.seal(0)
        kept = attention(q, k, v, calls, 1.0, store.slot(0))  # as in the recomputation: the kept outputs
        kept.backward(grad)
        got = take_grads((q, k, v))
        rows.append({"queries": Lq, "keys": Lk, "kept_path_runs": fused_kernel_runs(q.transpose(1, 2), None),
                     "forward_equal": bool(torch.equal(want_out, first) and torch.equal(want_out, kept)),
                     "grad_qkv_max_diff_kept_vs_plain": max_diffs(got, want),
                     "grad_qkv_max_diff_plain_vs_plain": max_diffs(again, want)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def one_node(dev: torch.device, g: torch.Generator, B: int, H: int, c: int, reps: int) -> dict:
    scales = get_schedule("1M").scales
    prefixes = ScalePrefixes.of(scales, dev)
    calls = prefixes.calls()
    L = calls[-1].k1
    q, k, v = (torch.randn(B, L, H, c, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    grad = torch.randn(B, L, H, c, device=dev, dtype=torch.bfloat16, generator=g)

    def by_slices() -> torch.Tensor:
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        parts = [F.scaled_dot_product_attention(qt[:, :, s:e], kt[:, :, :n], vt[:, :, :n], attn_mask=m, scale=1.0)
                 for s, e, n, m in calls]
        return torch.cat(parts, dim=2).transpose(1, 2)

    def node() -> torch.Tensor:
        return attention(q, k, v, calls, 1.0)

    results: dict = {"tokens": L, "calls": len(calls), "head_tokens": prefixes.head}
    outs, grads = {}, {}
    for name, fn in (("slices", by_slices), ("node", node)):
        o = fn()
        o.backward(grad)
        outs[name], grads[name] = o.detach(), take_grads((q, k, v))
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn().backward(grad)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            take_grads((q, k, v))
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().backward(grad)
        take_grads((q, k, v))
        results[f"{name}_fwd_bwd_ms"] = round(statistics.median(times), 3)
        results[f"{name}_peak_extra_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
    results["forward_equal"] = bool(torch.equal(outs["slices"], outs["node"]))
    results["grad_qkv_max_diff_node_vs_slices"] = max_diffs(grads["node"], grads["slices"])
    results["grad_qkv_max_abs"] = [float(t.float().abs().max()) for t in grads["slices"]]
    print(json.dumps(results), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, H, c = 4, 16, 128
    report = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
              "kept_call": kept_call(dev, g, B, H, c), "one_node": one_node(dev, g, B, H, c, args.reps)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
