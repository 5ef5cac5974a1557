"""Deterministic inference (EngineConfig.deterministic, on by default): a request's tokens are the ones it gets
alone on an empty engine, whatever runs beside it, wherever its prompt's chunks fall and whether its prefix came
from the radix cache; in bfloat16 as in float32."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

import sgagent
from sgagent.engine.cpu_ops import cpu_ops
from sgagent.engine.model.invariance import invariant_numerics
from sgagent.engine.model.llama import multiply
from sgagent.engine.model.quantized import Q4_1, Q8_0, QuantWeight, pack

from conftest import assert_quiescent

WORDS = ("river stone lantern market garden engine letter window signal harbor meadow copper orbit ledger "
         "violet summit thread canyon pocket ember").split()


@pytest.fixture
def engines(request, engine, bf16):
    return {"float32": engine, "bfloat16": bf16}


# -- the kernels ---------------------------------------------------------------------------------
# counts where one padded product per step was measured to reduce rows otherwise (model/invariance.py)
ROWS = [1, 2, 3, 4, 5, 17, 64, 129, 192, 260, 385, 600, 1160]


def _rows_alone_and_together(f, x):
    """Rows of f over the first M rows, for every M in ROWS, against the same rows computed alone: every row up
    to 64, then every fifth (each one alone is a product of its own)."""
    picked = sorted(set(range(64)) | set(range(64, max(ROWS), 5)) | {m - 1 for m in ROWS})
    alone = {i: f(x[i : i + 1])[0] for i in picked}
    for m in ROWS:
        together = f(x[:m])
        differ = [i for i in picked if i < m and (together[i] != alone[i]).any()]
        assert not differ, (m, differ[:8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(576, 576), (3072, 576), (576, 1536)])
def test_dense_projection_rows_are_batch_invariant(dtype, n, k):
    # the shapes of the default model's projections; MKL's and oneDNN's kernels are measured not to be invariant
    # (model/invariance.py): padded_project's fixed blocks are what make these equal
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(max(ROWS), k, generator=g).to(dtype)
    with invariant_numerics(True):
        _rows_alone_and_together(lambda t: multiply(t, w, None, None), x)
        _rows_alone_and_together(lambda t: multiply(t, w, None, None, bias), x)
        # column-major rows, as an attention output can be: oneDNN's bf16 kernel (AVX2) reduces those otherwise
        _rows_alone_and_together(lambda t: multiply(t, w, None, None), x.t().contiguous().t())


@pytest.mark.parametrize("qtype", [Q4_1, Q8_0])
def test_gguf_block_projection_rows_are_batch_invariant(qtype):
    ops = cpu_ops()
    assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    rng = torch.Generator().manual_seed(qtype)
    n, k = 576, 576
    block = 20 if qtype == Q4_1 else 34
    rows = torch.randint(0, 256, (n, k // 32 * block), generator=rng, dtype=torch.uint8).numpy()
    # fp16 scales (and Q4_1 minimums) of a sane size: random bytes there would be NaN or huge
    scales = (torch.rand(n, k // 32, 1, generator=rng) * 0.02).half().view(torch.uint8).numpy()
    r = rows.reshape(n, k // 32, block)
    r[..., 0:2] = scales
    if qtype == Q4_1:
        r[..., 2:4] = (-torch.rand(n, k // 32, 1, generator=rng) * 0.1).half().view(torch.uint8).numpy()
    packed = pack(QuantWeight(qtype, r.reshape(n, -1)))
    x = torch.randn(max(ROWS), k, generator=rng).to(torch.bfloat16)
    dense = torch.zeros(n, k, dtype=torch.bfloat16)  # never read: the blocks serve every row count
    with invariant_numerics(True):
        _rows_alone_and_together(lambda t: multiply(t, dense, packed, ops), x)
    # the fast path would have switched to the dense weights past 384 rows
    assert not torch.equal(multiply(x[:385], dense, packed, ops)[0], multiply(x[:1], dense, packed, ops)[0])


# -- the engine: random mixes against each request alone ------------------------------------------
def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


class Recorder:
    """Runs a mix's calls on one engine and keeps each call with its tokens, to replay it alone later."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    async def gen(self, prompt=None, **kw):
        r = await self.engine.generate(prompt, **kw)
        self.calls.append(((prompt, kw), r.token_ids))
        return r


async def random_mix(rec: Recorder, seed: int) -> None:
    """Shared prefixes with branches arriving together, multi-turn chats, regex and choice constraints, seeded
    sampling, and prompts longer than the step budget, started at staggered moments."""
    rng = random.Random(seed)
    prefixes = [_text(rng, rng.randint(20, 160)) for _ in range(3)]

    async def later(coro):
        await asyncio.sleep(rng.random() * 0.3)
        return await coro

    async def branches(prefix):
        await asyncio.gather(*(rec.gen(prefix + " " + _text(rng, rng.randint(1, 6)), max_tokens=rng.randint(3, 10),
                                       temperature=0, ignore_eos=True) for _ in range(rng.randint(2, 4))))

    async def chat():
        msgs = [{"role": "system", "content": _text(rng, 12)}]
        for _ in range(rng.randint(2, 3)):
            msgs.append({"role": "user", "content": _text(rng, rng.randint(5, 40))})
            r = await rec.gen(messages=list(msgs), max_tokens=rng.randint(4, 10), temperature=0)
            msgs.append({"role": "assistant", "content": r.text})

    jobs = [branches(p) for p in prefixes]
    jobs += [chat() for _ in range(2)]
    jobs.append(rec.gen(prefixes[0] + " the colour is", max_tokens=16, temperature=0,
                        regex=r" (red|green|blue|dark [a-z]{2,5})\."))
    jobs.append(rec.gen(prefixes[1] + " answer:", max_tokens=4, temperature=0, choices=[" yes", " no", " maybe"]))
    jobs.append(rec.gen(prefixes[2] + " " + _text(rng, 4), max_tokens=8, temperature=0.9, top_p=0.95,
                        seed=rng.randint(0, 1 << 30), ignore_eos=True))
    jobs.append(rec.gen(_text(rng, 300), max_tokens=6, temperature=0, ignore_eos=True))  # > the step budget
    jobs.append(rec.gen(prefixes[2] + " " + _text(rng, 200), max_tokens=5, temperature=0, ignore_eos=True))
    await asyncio.gather(*(later(j) for j in jobs))


async def replay_alone(engine, calls) -> list[list[int]]:
    """Each call alone on an engine with nothing cached and the default step budget (no chunking)."""
    alone = engine.with_config(radix_cache=False, kv_cache_bytes=32 << 20)
    try:
        return [(await alone.generate(prompt, **kw)).token_ids for (prompt, kw), _ in calls]
    finally:
        await alone.aclose()


# one mix per case, each from its own seed, so four cases cover four different mixes
@pytest.mark.parametrize("dtype,radix,seed", [("float32", True, 0), ("float32", False, 1),
                                              ("bfloat16", True, 2), ("bfloat16", False, 3)])
async def test_random_mixes_give_each_request_its_tokens_alone(engines, dtype, radix, seed):
    base = engines[dtype]
    # a small step budget chunks the long prompts and makes the mix's requests share steps in many ways
    e = base.with_config(radix_cache=radix, max_batch_tokens=256, kv_cache_bytes=64 << 20)
    rec = Recorder(e)
    try:
        assert e.stats()["deterministic"]
        await random_mix(rec, seed)
        if radix:
            assert e.stats()["cached_tokens"] > 0
        assert_quiescent(e)
    finally:
        await e.aclose()
    got = [tokens for _, tokens in rec.calls]
    want = await replay_alone(base, rec.calls)
    differ = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not differ, f"{len(differ)} of {len(got)} requests differ from their run alone: {differ}"
    assert len(got) >= 14


async def test_seeded_sampling_is_the_same_alone_and_in_a_batch_of_32(bf16):
    prompts = [f"Write a line about the {WORDS[i % len(WORDS)]}:" for i in range(32)]
    kw = [dict(max_tokens=6, temperature=1.0, top_k=50, top_p=0.9, seed=1000 + i, ignore_eos=True) for i in range(32)]
    e = bf16.with_config(kv_cache_bytes=16 << 20)
    try:
        together = await asyncio.gather(*(e.generate(p, **k) for p, k in zip(prompts, kw)))
    finally:
        await e.aclose()
    alone = await replay_alone(bf16, [((p, k), None) for p, k in zip(prompts, kw)])
    assert [r.token_ids for r in together] == alone
    # the seeds matter: different seeds on one prompt do not all agree
    assert len({tuple(t) for t in alone}) > 16


async def test_deterministic_off_is_reported_and_still_serves(engine):
    e = engine.with_config(deterministic=False, kv_cache_bytes=16 << 20)
    try:
        assert not e.stats()["deterministic"]
        r = await e.generate("The capital of France is", max_tokens=4, temperature=0)
        assert len(r.token_ids) == 4
    finally:
        await e.aclose()
