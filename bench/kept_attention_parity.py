"""The kept-attention path (``--memory auto``) against PyTorch's own SDPA on a GPU.

For infinity-2b's shapes (bf16, batch 4, 16 heads of 128, a scale's queries against the keys of
every scale up to it) it compares the forward output and the gradients of queries, keys and
values of the kept path (:class:`arbooth_cli.models.recompute.KeptAttention`: the first forward
keeps the outputs, the second returns them) with PyTorch's ``F.scaled_dot_product_attention``, and
PyTorch's backward with itself run twice (cuDNN accumulates the query gradients in a
nondeterministic order, so that is the variation to compare with).

    python bench/kept_attention_parity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.models.recompute import KeptAttention, fused_kernel_runs  # noqa: E402


def max_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)]


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, H, c = 4, 16, 128
    rows = []
    for Lq, Lk in ((4096, 10521), (2000, 6425)):
        def rand(L: int) -> torch.Tensor:  # (B, H, L, c) views of (B, L, H, c) tensors, as the blocks make them
            return torch.randn(B, L, H, c, device=dev, dtype=torch.bfloat16, generator=g).transpose(1, 2)

        q, k, v = (t.requires_grad_() for t in (rand(Lq), rand(Lk), rand(Lk)))
        grad = torch.randn(B, H, Lq, c, device=dev, dtype=torch.bfloat16, generator=g)

        def grads() -> list[torch.Tensor]:
            out = [t.grad.clone() for t in (q, k, v)]
            for t in (q, k, v):
                t.grad = None
            return out

        plain = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        plain.backward(grad)
        want = grads()
        F.scaled_dot_product_attention(q, k, v, scale=1.0).backward(grad)
        again = grads()
        store = KeptAttention(1)
        store.start_step()
        sdpa = store.sdpa(0)
        first = sdpa(q, k, v, scale=1.0)
        store.seal(0)
        kept = sdpa(q, k, v, scale=1.0)  # as in the recomputation: the kept outputs
        kept.backward(grad)
        got = grads()
        rows.append({"queries": Lq, "keys": Lk, "kept_path_runs": fused_kernel_runs(q, None),
                     "forward_equal": bool(torch.equal(plain, first) and torch.equal(plain, kept)),
                     "grad_qkv_max_diff_kept_vs_plain": max_diffs(got, want),
                     "grad_qkv_max_diff_plain_vs_plain": max_diffs(again, want)})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
