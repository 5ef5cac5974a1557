"""Shared-prefix attention in the torch backend: exact against a plain per-sequence reference, and on the model."""

import asyncio
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sgagent.engine.attention import lse, torch_backend as tb
from sgagent.engine.attention.prefix_groups import NATIVE_GROUP_OVERHEAD_TOKENS, prefix_groups
from sgagent.engine.attention.torch_backend import SHORT_QUERIES, TorchAttention
from sgagent.engine.batch import ForwardBatch
from sgagent.engine.cpu_ops import cpu_ops

PS, HKV, H, D = 4, 2, 6, 8


class Pool:
    def __init__(self, pages: int):
        self.page_size = PS
        self.k = torch.randn(1, pages * PS, HKV, D, dtype=torch.float64).float()
        self.v = torch.randn(1, pages * PS, HKV, D, dtype=torch.float64).float()


def random_tables(rng: random.Random, n: int, pool_pages: int):
    """Sequences that share page-aligned prefixes the way radix branches do, each with pages of its own after."""
    free = list(range(1, pool_pages))
    rng.shuffle(free)
    trunks = [[free.pop() for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 3))]
    tables, lens, owns = [], [], []
    for _ in range(n):
        trunk = rng.choice(trunks)
        shared = trunk[: rng.randint(0, len(trunk))]
        own = rng.randint(1, 6 * PS)  # tokens after the shared pages, the newest among them
        tables.append(shared + [free.pop() for _ in range((own + PS - 1) // PS)])
        lens.append(len(shared) * PS + own)
        owns.append(own)
    return tables, lens, owns


def reference(pool: Pool, q: torch.Tensor, pages: list[int], kv_len: int, q_len: int) -> torch.Tensor:
    """Attention of the last q_len positions, causal, straight from the pool in float64."""
    slots = torch.tensor([pages[p // PS] * PS + p % PS for p in range(kv_len)])
    k = pool.k[0][slots].double().repeat_interleave(H // HKV, 1)  # [L, H, D]
    v = pool.v[0][slots].double().repeat_interleave(H // HKV, 1)
    scores = torch.einsum("qhd,lhd->hql", q.double(), k) / D**0.5
    pos = torch.arange(kv_len - q_len, kv_len)[:, None]
    scores = scores.masked_fill(torch.arange(kv_len)[None, :] > pos, float("-inf"))
    return torch.einsum("hql,lhd->qhd", scores.softmax(-1), v).reshape(q_len, H * D)


def rows(T: int, heads: int, transposed: bool) -> torch.Tensor:
    """[T, heads, D] random; transposed: laid out the way a CPU projection returns it (W @ x^T, viewed back)."""
    if transposed:
        return torch.randn(heads * D, T).t().view(T, heads, D)
    return torch.randn(T, heads, D)


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("path", ["cpu-flash", "matmul", "cpp"])
@pytest.mark.parametrize("seed", range(12))
def test_decodes_appends_and_extends_match_a_per_sequence_reference(seed, path, transposed, monkeypatch):
    if path == "matmul":
        monkeypatch.setattr(lse, "_cpu_flash", None)
    ops = None
    if path == "cpp":  # the engine's C++ kernel, which attends each group's prefix itself
        ops = cpu_ops()
        assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    # group whatever is shared, however little; on the C++ path, groups the kernel attends, groups SDPA attends
    # (merged with the kernel's result) and both in one step
    monkeypatch.setattr(tb, "GROUP_OVERHEAD_TOKENS", 0)
    monkeypatch.setattr(tb, "NATIVE_GROUP_OVERHEAD_TOKENS", 0)
    monkeypatch.setattr(tb, "NATIVE_GROUP_ROWS", [10**6, 0, 30][seed % 3])  # seed 8: both kinds
    rng = random.Random(seed)
    pool = Pool(256)
    tables, lens, owns = random_tables(rng, rng.randint(2, 12), 256)
    batch = ForwardBatch()
    for t, n, own in zip(tables, lens, owns):
        # decodes, short appends (jump-forward) and longer prefill chunks; new tokens only go to own pages
        q_len = rng.choice([1, 1, 1, rng.randint(1, min(own, 5)), rng.randint(1, own)])
        batch.add([0] * q_len, n - q_len, t)
    T = batch.num_tokens
    q, k, v = rows(T, H, transposed), rows(T, HKV, transposed), rows(T, HKV, transposed)
    attn = TorchAttention(pool, H, share_prefixes=True, ops=ops)
    meta = attn.prepare(batch, torch.device("cpu"))
    out = attn(0, q, k, v, meta)  # writes this step's k/v into the pool first, as the model does
    short = [s for s in batch.seqs if s.q_len <= SHORT_QUERIES]
    sharing = any(a.pages[0] == b.pages[0] and min(a.prefix_len, b.prefix_len) >= PS
                  for i, a in enumerate(short) for b in short[i + 1 :])
    assert bool(meta.groups or meta.group_pages is not None) == sharing
    if ops is None:
        assert meta.group_pages is None
    for s in batch.seqs:
        want = reference(pool, q[s.row : s.row + s.q_len], s.pages, s.kv_len, s.q_len)
        torch.testing.assert_close(out[s.row : s.row + s.q_len].double(), want, atol=1e-5, rtol=1e-5)


def test_decodes_sharing_a_long_prefix_form_one_group():
    trunk = list(range(1, 51))
    tables = [trunk + [100 + i] for i in range(8)]
    groups = prefix_groups(tables, [50 * 16 + 4] * 8, 16)  # each one's newest token: position 804
    assert len(groups) == 1 and groups[0].members == list(range(8)) and groups[0].pages == 50
    assert prefix_groups([trunk + [200]], [50 * 16], 16) == []  # one sequence: nothing to share
    assert prefix_groups([[1, 2], [1, 3]], [19, 19], 16) == []  # one shared page saves less than a group costs


def test_group_cost_follows_how_members_would_read_the_prefix():
    # a tree-of-thought level: 8 branches sharing 4 pages (64 tokens) save 448 token reads, worth a group for the
    # C++ kernel (whose groups cost a task, no calls) and for plain torch (two calls and a merge)
    branches = [[1, 2, 3, 4, 10 + i] for i in range(8)]
    assert len(prefix_groups(branches, [4 * 16 + 4] * 8, 16, NATIVE_GROUP_OVERHEAD_TOKENS)) == 1
    assert len(prefix_groups(branches, [4 * 16 + 4] * 8, 16)) == 1
    # two branches sharing 2 pages save 32 reads: a group only where forming one costs less
    pair = [[1, 2, 10], [1, 2, 11]]
    assert len(prefix_groups(pair, [36, 36], 16, NATIVE_GROUP_OVERHEAD_TOKENS - 1)) == 1
    assert prefix_groups(pair, [36, 36], 16, NATIVE_GROUP_OVERHEAD_TOKENS) == []
    assert prefix_groups(pair, [36, 36], 16) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40))
def test_groups_share_only_full_pages_they_really_share(seed, n):
    rng = random.Random(seed)
    tables, lens, _ = random_tables(rng, n, 4096)
    groups = prefix_groups(tables, [n - 1 for n in lens], PS)  # decodes: the newest token is the query
    seen = set()
    for g in groups:
        assert len(g.members) >= 2 and g.pages >= 1
        assert not seen & set(g.members)
        seen |= set(g.members)
        first = tables[g.members[0]][: g.pages]
        for m in g.members:
            assert tables[m][: g.pages] == first
            assert g.pages <= (lens[m] - 1) // PS  # the page holding the newest token is never shared


async def test_engine_outputs_equal_with_shared_prefix_attention_on_and_off(engine):
    # ~700 shared tokens x 7 more members: a group on either path
    prefix = "".join(f"Q: What is {i} times 3?\nA: {3 * i}\n\n" for i in range(60))
    prompts = [f"{prefix}Q: What is {i} times 3?\nA:" for i in range(61, 69)]
    results, grouped = {}, {}
    for share in (True, False):
        e = engine.with_config(shared_prefix_attention=share, kv_cache_bytes=64 << 20)
        prepare, seen = e.runner.attn.prepare, []
        e.runner.attn.prepare = lambda *a, prepare=prepare, seen=seen: seen.append(prepare(*a)) or seen[-1]
        try:
            rs = await asyncio.gather(*(e.generate(p, max_tokens=8, temperature=0, logprobs=True) for p in prompts))
            results[share], grouped[share] = rs, any(m.groups or m.group_pages is not None for m in seen)
        finally:
            await e.aclose()
    assert grouped == {True: True, False: False}
    for a, b in zip(results[True], results[False]):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
