"""Prefix reuse in the engine: identical outputs on vs off, exact cached counts, no leaks, pool pressure."""

import asyncio
import random

import pytest

import sgagent
from conftest import assert_quiescent, settle

FEW_SHOT = "".join(f"Q: What is {i} plus {i + 1}?\nA: {2 * i + 1}\n\n" for i in range(12))


async def mixed_workload(e: sgagent.Engine) -> list[list[int]]:
    """Shared prefixes, multi-turn, forks and prefixes that end mid-page; greedy, so outputs must agree."""
    outs = []
    qs = [f"{FEW_SHOT}Q: What is {a} plus {b}?\nA:" for a, b in [(3, 9), (10, 4), (7, 7), (21, 1)]]
    outs += [r.token_ids for r in await asyncio.gather(*(e.generate(q, max_tokens=6, temperature=0) for q in qs))]
    msgs = [{"role": "system", "content": "You are terse."}]
    for turn in ["Name a planet.", "Name another one.", "Which is bigger?"]:
        msgs.append({"role": "user", "content": turn})
        r = await e.generate(messages=msgs, max_tokens=12, temperature=0)
        msgs.append({"role": "assistant", "content": r.text})
        outs.append(r.token_ids)
    trunk = e.tokenize("The old lighthouse keeper looked out at the sea and")
    forks = [trunk + e.tokenizer.encode(s, add_special_tokens=False) for s in [" sang", " wept", " laughed", " slept"]]
    outs += [r.token_ids for r in await asyncio.gather(*(e.generate(f, max_tokens=8, temperature=0) for f in forks))]
    for cut in (5, 17, 18, 31, 33):  # prefixes ending inside a page, then their extensions
        base = trunk[:cut]
        a = await e.generate(base, max_tokens=4, temperature=0)
        b = await e.generate(base + a.token_ids + trunk[cut:], max_tokens=4, temperature=0)
        outs += [a.token_ids, b.token_ids]
    return outs


async def test_work_counters_count_what_was_computed(engine):
    """computed_tokens / attended_pairs / decode_tokens: what the benchmarks' FLOP ceiling is built from."""
    e = engine.with_config(page_size=16, kv_cache_bytes=64 << 20)
    try:
        p = e.tokenize(FEW_SHOT)
        n = 5
        a = await e.generate(p, max_tokens=n, temperature=0, ignore_eos=True)
        s = e.stats()
        # the prompt under a causal mask, then one token a step over a growing context (the last one sampled
        # is never fed back)
        assert s["computed_tokens"] == len(p) + n - 1
        assert s["attended_pairs"] == len(p) * (len(p) + 1) // 2 + sum(range(len(p) + 1, len(p) + n))
        assert s["decode_tokens"] == n
        tail = e.tokenizer.encode(" and then", add_special_tokens=False)
        b = await e.generate(p + a.token_ids + tail, max_tokens=1, temperature=0)
        c, q = b.usage.cached_tokens, len(p) + n + len(tail) - b.usage.cached_tokens
        d = e.stats()
        assert d["computed_tokens"] - s["computed_tokens"] == q
        assert d["attended_pairs"] - s["attended_pairs"] == q * c + q * (q + 1) // 2
    finally:
        await e.aclose()


@pytest.mark.parametrize("page_size", [16, 4])
async def test_outputs_identical_with_reuse_on_and_off(engine, page_size):
    on = engine.with_config(radix_cache=True, page_size=page_size, kv_cache_bytes=64 << 20)
    off = engine.with_config(radix_cache=False, page_size=page_size, kv_cache_bytes=64 << 20)
    try:
        a = await mixed_workload(on)
        b = await mixed_workload(off)
        assert a == b
        assert on.stats()["cached_tokens"] > 0.4 * on.stats()["prompt_tokens"]
        assert off.stats()["cached_tokens"] == 0
        assert on.stats()["prefill_tokens"] < off.stats()["prefill_tokens"] * 0.6
        assert_quiescent(on)
        assert_quiescent(off)
    finally:
        await on.aclose()
        await off.aclose()


async def test_cached_tokens_exact_per_request(engine):
    e = engine.with_config(page_size=16, kv_cache_bytes=64 << 20)
    off = engine.with_config(page_size=16, kv_cache_bytes=64 << 20, radix_cache=False)
    try:
        p = e.tokenize(FEW_SHOT)
        a = await e.generate(p, max_tokens=5, temperature=0)
        assert a.usage.cached_tokens == 0
        follow = p + a.token_ids + e.tokenizer.encode(" and more", add_special_tokens=False)
        b = await e.generate(follow, max_tokens=3, temperature=0)
        # everything a computed is reused: its prompt and outputs less the last sampled token, the whole
        # pages in place and the partial last page (kept as a tail) by copy
        assert b.usage.cached_tokens == len(p) + len(a.token_ids) - 1
        c = await e.generate(p[:40] + [7, 7, 7], max_tokens=2, temperature=0)
        assert c.usage.cached_tokens == 40  # two whole pages, and 8 tokens copied out of the third
        d = await e.generate(p, max_tokens=2, temperature=0)  # same prompt: all but the last token reused
        assert d.usage.cached_tokens == len(p) - 1
        assert d.token_ids == a.token_ids[:2]
        for r, prompt in ((b, follow), (c, p[:40] + [7, 7, 7])):
            assert r.token_ids == (await off.generate(prompt, max_tokens=len(r.token_ids), temperature=0)).token_ids
        s = e.stats()
        assert s["cached_tokens"] == sum(r.usage.cached_tokens for r in (a, b, c, d))
        assert s["copied_tokens"] == sum(r.usage.cached_tokens % 16 for r in (b, c, d))
    finally:
        await e.aclose()
        await off.aclose()


async def test_requests_arriving_together_compute_shared_prefix_once(engine):
    e = engine.with_config(page_size=16, kv_cache_bytes=64 << 20)
    try:
        trunk = e.tokenize(FEW_SHOT)
        prompts = [trunk + e.tokenizer.encode(f"Q: What is {i} plus 2?\nA:", add_special_tokens=False) for i in range(8)]
        rs = await asyncio.gather(*(e.generate(p, max_tokens=2, temperature=0) for p in prompts))
        s = e.stats()
        tails = sum(len(p) - len(trunk) for p in prompts)
        # the trunk once, plus each tail and at most one partial page each
        assert s["prefill_tokens"] <= len(trunk) + tails + 8 * 16, s
        assert sum(r.usage.cached_tokens for r in rs) >= 7 * (len(trunk) // 16 * 16)
    finally:
        await e.aclose()


@pytest.mark.parametrize("past_page", [3, 14])
async def test_requests_sharing_a_prefix_join_its_step_unless_that_recomputes_too_much(engine, past_page):
    # the trunk ends `past_page` tokens into a page that no one can share: each follower computes those again
    # if it joins the step computing the trunk; 3 is cheap, 14 is more than its own 7-token tail
    e = engine.with_config(page_size=16, kv_cache_bytes=64 << 20)
    off = engine.with_config(page_size=16, kv_cache_bytes=64 << 20, radix_cache=False)
    try:
        trunk = e.tokenize(FEW_SHOT)[: 16 * 12 + past_page]
        prompts = [trunk + e.tokenizer.encode(f" {i} plus {i} is?", add_special_tokens=False) for i in range(6)]
        assert {len(p) - len(trunk) for p in prompts} == {7}
        rs = await asyncio.gather(*(e.generate(p, max_tokens=3, temperature=0) for p in prompts))
        # together: one step computes the trunk and every tail, one more decodes; else the trunk's step goes first
        assert e.stats()["steps"] == (3 if past_page == 3 else 4), e.stats()
        assert all(r.usage.cached_tokens >= 16 * 12 for r in rs[1:])
        for r, p in zip(rs, prompts):
            assert r.token_ids == (await off.generate(p, max_tokens=3, temperature=0)).token_ids
        assert_quiescent(e)
    finally:
        await e.aclose()
        await off.aclose()


@pytest.mark.parametrize("failure", ["lender cancelled", "step failed"])
async def test_pages_shared_within_a_step_survive_cancellation_and_failure(engine, failure):
    e = engine.with_config(page_size=16, kv_cache_bytes=64 << 20)
    off = engine.with_config(page_size=16, kv_cache_bytes=64 << 20, radix_cache=False)
    trunk = e.tokenize(FEW_SHOT)[: 16 * 12 + 2]  # a few tokens into a page: the followers join the lender's step
    prompts = [trunk + e.tokenizer.encode(f" Q: {i} plus 5?", add_special_tokens=False) for i in range(3)]
    loop, tasks, borrowed = asyncio.get_running_loop(), [], []
    step = e.runner.step

    def first_step_then(plan):
        if not borrowed:
            borrowed.extend(it.req.borrowed for it in plan.items)
            if failure == "step failed":
                raise RuntimeError("injected")
            loop.call_soon_threadsafe(tasks[0].cancel)  # lands while the step runs
        return step(plan)

    e.runner.step = first_step_then
    try:
        tasks.extend(asyncio.create_task(e.generate(p, max_tokens=4, temperature=0)) for p in prompts)
        got = await asyncio.gather(*tasks, return_exceptions=True)
        assert len(borrowed) == 3 and borrowed[0] == [] and all(len(b) == 12 for b in borrowed[1:])
        if failure == "step failed":
            assert all(isinstance(r, sgagent.errors.RequestAbortedError) for r in got)
        else:
            assert isinstance(got[0], asyncio.CancelledError)
            for r, p in zip(got[1:], prompts[1:]):
                assert r.token_ids == (await off.generate(p, max_tokens=4, temperature=0)).token_ids
        await settle(e)
        assert_quiescent(e)
    finally:
        await e.aclose()
        await off.aclose()


async def test_thousands_of_random_requests_leave_no_leak(tiny_models):
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_cache_bytes=2 << 20, page_size=4, max_batch_tokens=256, dtype="float32")
    rng = random.Random(7)
    prefixes = [e.tokenize(f"System prompt number {i}: be helpful. " * 3) for i in range(5)]
    sem = asyncio.Semaphore(64)
    counts = {"ok": 0, "cancelled": 0, "error": 0}

    async def one(i):
        async with sem:
            kind = rng.random()
            prompt = rng.choice(prefixes) + [rng.randrange(100, 5000) for _ in range(rng.randrange(1, 30))]
            if kind < 0.1:
                with pytest.raises(sgagent.errors.InvalidSamplingParamsError):
                    await e.generate(prompt, top_p=0)
                counts["error"] += 1
            elif kind < 0.3:
                t = asyncio.create_task(e.generate(prompt, max_tokens=30, ignore_eos=True))
                await asyncio.sleep(rng.random() * 0.02)
                t.cancel()
                try:
                    await t
                    counts["ok"] += 1
                except asyncio.CancelledError:
                    counts["cancelled"] += 1
            else:
                r = await e.generate(prompt, max_tokens=rng.randrange(1, 8), temperature=rng.choice([0, 0.8]))
                assert r.usage.completion_tokens >= 1
                counts["ok"] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(2000)))
        await settle(e)
        assert counts["cancelled"] > 50 and counts["error"] > 50 and counts["ok"] > 1000, counts
        assert_quiescent(e)
        assert e.stats()["evicted_pages"] > 0  # the pool was small enough to cycle the cache
    finally:
        await e.aclose()


async def test_pressure_twenty_times_the_pool(tiny_models):
    path, _ = tiny_models["qwen2"]
    big = sgagent.Engine(str(path), kv_cache_bytes=32 << 20, page_size=4, dtype="float32")
    small = big.with_config(kv_pages=30)
    rng = random.Random(3)
    shared = big.tokenize("Shared instructions for every request in this batch. ")
    prompts = [shared + [rng.randrange(100, 5000) for _ in range(rng.randrange(10, 40))] for _ in range(64)]
    try:
        want = [r.token_ids for r in await asyncio.gather(
            *(big.generate(p, max_tokens=20, temperature=0, ignore_eos=True) for p in prompts))]
        got = [r.token_ids for r in await asyncio.gather(
            *(small.generate(p, max_tokens=20, temperature=0, ignore_eos=True) for p in prompts))]
        total_pages = sum((len(p) + 20 + 3) // 4 for p in prompts)
        assert total_pages > 20 * small.runner.pool.capacity
        assert got == want
        assert small.stats()["preemptions"] > 0 or small.stats()["evicted_pages"] > 0
        assert_quiescent(small)
    finally:
        await big.aclose()
        await small.aclose()


async def test_preemption_on_the_default_model(engine):
    small = engine.with_config(kv_pages=14, page_size=16, radix_cache=False)
    prompts = [f"Story {i}: Once upon a time in a land far away, there lived a" for i in range(6)]
    try:
        want = [r.token_ids for r in await asyncio.gather(
            *(engine.generate(p, max_tokens=40, temperature=0, ignore_eos=True) for p in prompts))]
        got = [r.token_ids for r in await asyncio.gather(
            *(small.generate(p, max_tokens=40, temperature=0, ignore_eos=True) for p in prompts))]
        assert got == want
        assert small.stats()["preemptions"] > 0
        assert small.runner.pool.num_free == small.runner.pool.capacity
    finally:
        await small.aclose()
