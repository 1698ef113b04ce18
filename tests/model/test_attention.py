"""Training attention as one autograd node (arbooth_cli.models.attention)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arbooth_cli.models.attention import attention
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.models.transformer import ScalePrefixes

SCALES = get_schedule(num_scales=7).scales  # 521 tokens


def _calls_one_by_one(q, k, v, calls):
    """The calls through autograd on slices, as a step ran them before the node."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    parts = [F.scaled_dot_product_attention(qt[:, :, a:b], kt[:, :, :n], vt[:, :, :n], attn_mask=m, scale=1.0)
             for a, b, n, m in calls]
    return torch.cat(parts, dim=2).transpose(1, 2)


def _graph_nodes(out):
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [n for n, _ in node.next_functions]
    return [type(n).__name__ for n in seen]


@pytest.mark.parametrize("head_tokens", [0, 5, 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: no fused kernel, run again in backward
def test_one_node_gives_the_calls_outputs_and_gradients(head_tokens, dtype):
    calls = ScalePrefixes.of(SCALES, torch.device("cpu"), head_tokens).calls()
    L = calls[-1].k1
    gen = torch.Generator().manual_seed(head_tokens)
    q, k, v, g = (torch.randn(2, L, 3, 8, generator=gen, dtype=dtype) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = _calls_one_by_one(*leaves, calls)
    want.backward(g)
    want_grads = [t.grad for t in leaves]

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    got = attention(*leaves, calls, 1.0)
    nodes = _graph_nodes(got)
    assert "SliceBackward0" not in nodes and "CatBackward0" not in nodes
    got.backward(g)
    assert torch.equal(got, want)  # the same kernels: bit for bit
    tol = 1e-5 if dtype == torch.float32 else 1e-12  # the key gradients are added in another order
    for a, b in zip((t.grad for t in leaves), want_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_rows_no_call_covers_get_zero_gradients():
    """Calls that leave query rows out (a bare call list, not the transformer's schedule)."""
    from arbooth_cli.models.attention import Call

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 12, 2, 4, generator=gen).requires_grad_() for _ in range(3))
    calls = (Call(4, 8, 8, None),)
    out = attention(q, k, v, calls, 1.0)
    assert torch.count_nonzero(out[:, :4]) == 0 and torch.count_nonzero(out[:, 8:]) == 0
    out[:, 4:8].sum().backward()
    assert torch.count_nonzero(q.grad[:, :4]) == 0 and torch.count_nonzero(q.grad[:, 8:]) == 0
    assert torch.count_nonzero(q.grad[:, 4:8]) > 0
    assert torch.count_nonzero(k.grad[:, 8:]) == 0 and torch.count_nonzero(k.grad[:, :8]) > 0
