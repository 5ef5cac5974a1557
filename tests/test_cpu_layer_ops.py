"""The engine's element-wise C++ CPU ops (residual add + norm, silu * up, rotary split, logits) against the
plain-torch path they replace, on both layouts a projection hands over (row-major, and the transposed view a
small batch's W @ x^T gives); and the engine's greedy shortcut (argmax straight from the lm_head's output)."""

from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn.functional as F

from sgagent.engine.cpu_ops import cpu_ops
from sgagent.engine.model.llama import RMSNorm, rope

ROWS = (1, 5, 64, 300)


@pytest.fixture(scope="module")
def ops():
    ops = cpu_ops()
    assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    return ops


def layouts(x: torch.Tensor):
    """x as it is, and the same values as a transposed view (memory [cols, rows])."""
    return {"row-major": x, "transposed": x.t().contiguous().t()}


def close(got: torch.Tensor, want: torch.Tensor, dtype) -> None:
    """bf16: bit for bit (the ops round where torch's ops do); float32: within rounding of the op order."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)
    else:
        assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_matches_torch(ops, dtype):
    g = torch.Generator().manual_seed(0)
    for rows in ROWS:
        gate_up = (torch.randn(rows, 2 * 96, generator=g) * 4).to(dtype)
        gate_up[0, :3] = torch.tensor([-100.0, 100.0, 0.0])  # exp's clamps at both ends
        for name, x in layouts(gate_up).items():
            got = ops.silu_mul(x)
            close(got.contiguous(), F.silu(x[:, :96]) * x[:, 96:], dtype)
            if name == "transposed" and rows > 1:  # element-wise: the layout carries over to the next projection
                assert got.stride() == (1, rows)
    with pytest.raises(RuntimeError, match="gate_up"):
        ops.silu_mul(torch.zeros(2, 7, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_matches_the_add_then_norm(ops, dtype):
    g = torch.Generator().manual_seed(1)
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=g) * 0.5 + 1)
    for rows in ROWS:
        x = (torch.randn(rows, 576, generator=g) * 3).to(dtype)
        delta = torch.randn(rows, 576, generator=g).to(dtype)
        for d in layouts(delta).values():
            s, h = ops.add_rms_norm(x, d, norm.weight, norm.eps)
            close(s, x + d, dtype)
            want = norm(x + d)
            if dtype == torch.bfloat16:
                close(h, want, dtype)
            else:  # the sum of squares adds up in another order than torch's
                assert (h - want).abs().max() < 1e-5 * want.abs().max()
    with pytest.raises(RuntimeError, match="delta"):
        ops.add_rms_norm(x, x[:, :8], norm.weight, norm.eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 16), (8, 2, 128)])
def test_rope_qkv_matches_the_torch_path(ops, dtype, heads, kv_heads, head_dim):
    g = torch.Generator().manual_seed(2)
    width = (heads + 2 * kv_heads) * head_dim
    for rows in ROWS:
        qkv = torch.randn(rows, width, generator=g).to(dtype)
        pos = torch.randint(0, 4000, (rows,), generator=g).float()[:, None]
        angle = pos / 10000 ** (torch.arange(head_dim // 2) * 2 / head_dim)
        emb = torch.cat((angle, angle), -1)
        cos = emb.cos().to(dtype)
        sign = torch.cat((-torch.ones(head_dim // 2), torch.ones(head_dim // 2)))
        sin = (emb.sin() * sign).to(dtype)
        for x in layouts(qkv).values():
            heads3 = x.view(rows, heads + 2 * kv_heads, head_dim)
            qk = rope(heads3[:, : heads + kv_heads], cos[:, None], sin[:, None])
            q, k, v = ops.rope_qkv(x, cos, sin, heads, kv_heads)
            assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
            close(q, qk[:, :heads].contiguous(), dtype)
            close(k, qk[:, heads:].contiguous(), dtype)
            assert torch.equal(v, heads3[:, heads + kv_heads :])
    with pytest.raises(RuntimeError, match="cos and sin"):
        ops.rope_qkv(qkv, cos[:, :-2], sin, heads, kv_heads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_to_float_and_argmax(ops, dtype):
    g = torch.Generator().manual_seed(3)
    for rows in ROWS:
        y = (torch.randn(rows, 5000, generator=g) * 5).to(dtype)
        y[:, 4321] = y.max() + 1  # every row's maximum twice: the first of them must win, as in torch.max
        y[:, 777] = y.max()
        if rows > 2:
            y[1, 2000] = float("nan")  # torch.max answers a NaN's position
            y[2, 10:20] = float("-inf")
        for x in layouts(y).values():
            torch.testing.assert_close(ops.rows_to_float(x), x.float(), rtol=0, atol=0, equal_nan=True)
            assert torch.equal(ops.argmax_rows(x), x.float().max(-1).indices)
    assert ops.argmax_rows(torch.full((3, 9), float("-inf"), dtype=dtype)).tolist() == [0, 0, 0]


async def test_greedy_argmax_shortcut_gives_the_sampled_tokens(engine):
    """Greedy requests without logprobs skip the float32 logits (argmax straight from the lm_head's output):
    the same tokens as the full path (asked for through logprobs) and as the engine without the ops."""
    prompts = ["The capital of France is", "1, 2, 3, 4,", "def add(a, b):", "Once upon a time"]
    tokens = {}
    for on in (True, False):
        e = engine.with_config(cpu_kernels=on, kv_cache_bytes=64 << 20)
        try:
            for lp in (False, True):
                rs = await asyncio.gather(*(e.generate(p, max_tokens=10, temperature=0, logprobs=lp) for p in prompts))
                tokens[on, lp] = [r.token_ids for r in rs]
        finally:
            await e.aclose()
    assert tokens[True, False] == tokens[True, True] == tokens[False, False]
