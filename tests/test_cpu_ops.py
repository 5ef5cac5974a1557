"""The engine's C++ CPU ops against plain-torch references, and the engine with them on vs off."""

from __future__ import annotations

import asyncio

import pytest
import torch

from sgagent.engine.cpu_ops import cpu_ops

PS = 16


@pytest.fixture(scope="module")
def ops():
    ops = cpu_ops()
    assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    return ops


def reference(q, kc, vc, pages, limits, ps):
    """Attention in float64 over gathered pages, each query row masked to its first `limit` keys."""
    N, H, R, D = q.shape
    P = pages.shape[1]
    k = kc.view(-1, ps, H, D)[pages.reshape(-1)].view(N, P * ps, H, D).transpose(1, 2).double()
    v = vc.view(-1, ps, H, D)[pages.reshape(-1)].view(N, P * ps, H, D).transpose(1, 2).double()
    s = q.double() @ k.transpose(-1, -2) * D ** -0.5  # [N, H, R, L]
    seen = torch.arange(P * ps)[None, None, :] < limits[:, :, None].long()  # [N, R, L]
    s = s.masked_fill(~seen[:, None], float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("head_dim", [16, 64, 128])  # 64 and 128 are compiled for; 16 takes the generic path
def test_paged_attention_matches_reference(ops, dtype, tol, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    H, R, pool_pages = 3, 6, 64
    kc = torch.randn(pool_pages * PS, H, head_dim, generator=g).to(dtype)
    vc = torch.randn(pool_pages * PS, H, head_dim, generator=g).to(dtype)
    for N, P in ((1, 1), (5, 4), (9, 7)):
        pages = torch.stack([torch.randperm(pool_pages - 1, generator=g)[:P] + 1 for _ in range(N)])
        # rows see different key counts, partial last pages included (a causal block of queries looks like this)
        limits = torch.randint(1, P * PS + 1, (N, R), generator=g, dtype=torch.int32)
        q = torch.randn(N, H, R, head_dim, generator=g).to(dtype)
        out, lse = ops.paged_attention(q, kc, vc, pages, limits, PS, head_dim ** -0.5)
        want, want_lse = reference(q, kc, vc, pages, limits, PS)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert (out.double() - want).abs().max() < tol
        assert (lse.double() - want_lse).abs().max() < 1e-4
        # a strided q (the engine hands over views of projection outputs) reads the same
        qt = q.transpose(0, 3).contiguous().transpose(0, 3)
        out_t, _ = ops.paged_attention(qt, kc, vc, pages, limits, PS, head_dim ** -0.5)
        assert torch.equal(out_t, out)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_grouped_paged_attention_equals_attention_over_whole_tables(ops, dtype, tol, head_dim):
    # radix branches: groups of sequences share leading pages; the op reads those once for all members and
    # continues each member's rows into its own pages, which must give attention over prefix + own pages
    g = torch.Generator().manual_seed(head_dim + 1)
    H, R, pool_pages, N = 3, 4, 128, 11
    kc = torch.randn(pool_pages * PS, H, head_dim, generator=g).to(dtype)
    vc = torch.randn(pool_pages * PS, H, head_dim, generator=g).to(dtype)
    free = (torch.randperm(pool_pages - 1, generator=g) + 1).tolist()
    prefixes = [[free.pop() for _ in range(n)] for n in (5, 2, 1)]
    of = [0, 0, 0, 1, -1, 1, 0, 2, 2, -1, 1]  # two loners; member counts 4, 3, 2
    own_pages = [[free.pop() for _ in range(1 + n % 3)] for n in range(N)]
    own_limits = torch.tensor([[PS * len(p) - (r * 5 + n) % PS if r < R - 1 else 0 for r in range(R)]
                               for n, p in enumerate(own_pages)], dtype=torch.int32)  # the last row: padding
    width = max(map(len, own_pages))
    pages = torch.tensor([p + [0] * (width - len(p)) for p in own_pages])
    q = torch.randn(N, H, R, head_dim, generator=g).to(dtype)
    gp = torch.tensor([p + [0] * (5 - len(p)) for p in prefixes])
    gk = torch.tensor([len(p) * PS for p in prefixes], dtype=torch.int32)
    out, lse = ops.paged_attention_grouped(q, kc, vc, pages, own_limits, gp, gk, torch.tensor(of, dtype=torch.int32),
                                           PS, head_dim ** -0.5)
    # the same rows over whole tables (prefix pages, then own), each row seeing its prefix and own keys
    whole = [(prefixes[o] if o >= 0 else []) + p for o, p in zip(of, own_pages)]
    wwidth = max(map(len, whole))
    wpages = torch.tensor([w + [0] * (wwidth - len(w)) for w in whole])
    skip = torch.tensor([len(prefixes[o]) * PS if o >= 0 else 0 for o in of], dtype=torch.int32)[:, None]
    wlimits = torch.where(own_limits > 0, own_limits + skip, 0).to(torch.int32)
    want, want_lse = reference(q, kc, vc, wpages, wlimits, PS)
    real = own_limits > 0  # [N, R]
    assert (out.double() - want).abs().amax(-1).transpose(1, 2)[real].max() < tol
    assert (lse.double() - want_lse).abs().transpose(1, 2)[real].max() < 1e-4
    # the padding rows of grouped sequences hold their prefix's attention alone; a loner's, nothing
    pad = q[:, :, -1:]
    for n, o in enumerate(of):
        if o < 0:
            assert torch.all(out[n, :, -1] == 0) and torch.all(lse[n, :, -1] == float("-inf"))
        else:
            ref, ref_lse = reference(pad[n : n + 1], kc, vc, gp[o : o + 1], gk[o].view(1, 1), PS)
            assert (out[n, :, -1].double() - ref[0, :, 0]).abs().max() < tol
            assert (lse[n, :, -1].double() - ref_lse[0, :, 0]).abs().max() < 1e-4
    # no groups: the plain op's result
    none = torch.empty(0, dtype=torch.int32)
    plain = ops.paged_attention_grouped(q, kc, vc, wpages, wlimits, torch.empty(0, 0, dtype=torch.long), none, none,
                                        PS, head_dim ** -0.5)
    assert torch.equal(plain[0], ops.paged_attention(q, kc, vc, wpages, wlimits, PS, head_dim ** -0.5)[0])


def test_grouped_paged_attention_rejects_bad_groups(ops):
    kc = torch.randn(4 * PS, 1, 16)
    q, pages, limits = torch.randn(2, 1, 1, 16), torch.tensor([[1], [2]]), torch.tensor([[3], [3]], dtype=torch.int32)
    gp, gk = torch.tensor([[3]]), torch.tensor([PS], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="group 1 does not exist"):
        ops.paged_attention_grouped(q, kc, kc, pages, limits, gp, gk, torch.tensor([0, 1], dtype=torch.int32), PS, 0.25)
    with pytest.raises(RuntimeError, match="outside the pool"):
        ops.paged_attention_grouped(q, kc, kc, pages, limits, torch.tensor([[9]]), gk,
                                    torch.tensor([0, 0], dtype=torch.int32), PS, 0.25)
    with pytest.raises(RuntimeError, match="outside its page table"):
        ops.paged_attention_grouped(q, kc, kc, pages, limits, gp, torch.tensor([PS + 1], dtype=torch.int32),
                                    torch.tensor([0, -1], dtype=torch.int32), PS, 0.25)


def test_paged_attention_rejects_bad_tables(ops):
    kc = torch.zeros(8 * PS, 2, 64)
    q = torch.zeros(1, 2, 1, 64)
    ok = torch.tensor([[1, 2]])
    with pytest.raises(RuntimeError, match="outside the pool"):
        ops.paged_attention(q, kc, kc, torch.tensor([[1, 8]]), torch.tensor([[3]], dtype=torch.int32), PS, 0.125)
    with pytest.raises(RuntimeError, match="outside its page table"):
        ops.paged_attention(q, kc, kc, ok, torch.tensor([[2 * PS + 1]], dtype=torch.int32), PS, 0.125)
    with pytest.raises(RuntimeError, match="int32"):
        ops.paged_attention(q, kc, kc, ok, torch.tensor([[3]]), PS, 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_matches_index_copy(ops, dtype):
    g = torch.Generator().manual_seed(1)
    T, H, D = 12, 3, 64
    slots = torch.randperm(40 * PS, generator=g)[:T]
    for layout in ("contiguous", "transposed"):
        k = torch.randn(T, H, D, generator=g).to(dtype)
        v = torch.randn(T, H, D, generator=g).to(dtype)
        if layout == "transposed":  # tokens innermost, as a small-batch CPU projection hands them over
            k, v = (t.permute(2, 1, 0).contiguous().permute(2, 1, 0) for t in (k, v))
        kc, vc = torch.zeros(40 * PS, H, D, dtype=dtype), torch.zeros(40 * PS, H, D, dtype=dtype)
        ops.store_kv(kc, vc, slots, k, v)
        assert torch.equal(kc, torch.zeros_like(kc).index_copy_(0, slots, k))
        assert torch.equal(vc, torch.zeros_like(vc).index_copy_(0, slots, v))
    with pytest.raises(RuntimeError, match="outside the pool"):
        ops.store_kv(kc, vc, torch.tensor([40 * PS]), k[:1], v[:1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_torch_path(ops, dtype):
    from sgagent.engine.model.llama import RMSNorm

    g = torch.Generator().manual_seed(2)
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=g) * 0.5 + 1)
    for rows in (1, 5, 64):
        x = (torch.randn(rows, 576, generator=g) * 3).to(dtype)
        for layout in ("contiguous", "transposed"):
            xi = x if layout == "contiguous" else x.t().contiguous().t()  # as a small-batch projection hands it over
            got, want = norm(xi, ops), norm(xi)
            assert got.dtype == dtype and got.shape == want.shape
            if dtype == torch.bfloat16:  # same rounding order as transformers: round, then scale in bf16
                assert (got.float() - want.float()).abs().max() <= 2 ** -7 * want.float().abs().max()
                assert (got == want).float().mean() > 0.99
            else:
                assert (got - want).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(torch.zeros(2, 8, dtype=dtype), torch.ones(9, dtype=dtype), 1e-5)


async def test_engine_same_outputs_with_the_ops_on_and_off(engine):
    """Decodes, shared-prefix groups and short multi-token extends through the C++ ops; plain torch as the
    reference (float32: same tokens, logprobs within 1e-4)."""
    from sgagent.engine.attention.torch_backend import TorchAttention

    prefix = "".join(f"Q: What is {i} plus 4?\nA: {i + 4}\n\n" for i in range(14))
    prompts = [f"{prefix}Q: What is {i} plus 4?\nA:" for i in range(30, 36)] + ["Hello", "The sky is"]
    results = {}
    for on in (True, False):
        e = engine.with_config(cpu_kernels=on, kv_cache_bytes=64 << 20)
        try:
            assert isinstance(e.runner.attn, TorchAttention) and (e.runner.attn.ops is not None) == on
            rs = await asyncio.gather(*(e.generate(p, max_tokens=12, temperature=0, logprobs=True) for p in prompts))
            # a second turn on top of the first (cached prefix, new tokens after it) and a regex's forced run
            more = await e.generate(prompts[0] + rs[0].text + "\n\nQ: And 5 plus 4?\nA:", max_tokens=6,
                                    temperature=0, logprobs=True)
            forced = await e.generate(prompts[1], regex=r" The answer is [0-9]+\.", max_tokens=16, temperature=0,
                                      logprobs=True)
            results[on] = rs + [more, forced]
            assert e.stats()["pages_used"] == 0
        finally:
            await e.aclose()
    for a, b in zip(results[True], results[False]):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_a_failed_build_leaves_the_plain_torch_path(monkeypatch):
    """No compiler (or any build failure): cpu_ops() answers None instead of raising, so the engine steps with
    plain torch."""
    import torch.utils.cpp_extension as ext

    from sgagent.engine import cpu_ops as mod

    def no_compiler(*a, **k):
        raise RuntimeError("g++: command not found")

    monkeypatch.setattr(ext, "load", no_compiler)
    assert mod.cpu_ops.__wrapped__() is None  # the uncached function: the cached answer stays the real ops
