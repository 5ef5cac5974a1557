"""`sgagent serve` replicas behind SGLang's own router (sglang-router, cache-aware policy): programs run through it
with the cache hit rate of one replica, and a replica killed mid-run costs no hang."""

import asyncio

import httpx
import pytest

from sgagent import program, run_batch, system, user
from sgagent.errors import RemoteError
from sgagent.remote import RemoteEngine, sglang_router
from sgagent.server import ServerProcess, start

# two families of programs, each behind a long system prompt of its own (~390 tokens)
FAMILIES = ["You are a support agent for a bicycle shop. " + "Policies: returns within 30 days, repairs take a "
            "week, helmets are not refundable, we sell road, gravel and city bikes. " * 12,
            "You are a travel planner for Japan. " + "Know trains, temples, food markets, seasons and etiquette; "
            "answer briefly and concretely. " * 12]
ARGS = [{"family": i % 2, "q": f"Question number {i}: what do you recommend?"} for i in range(16)]


@program
async def ask(s, family: int, q: str):
    s += system(FAMILIES[family])
    s += user(q)
    async with s.assistant():
        first = await s.gen(max_tokens=8, temperature=0.0)
    s += user("And one more detail?")
    async with s.assistant():
        second = await s.gen(max_tokens=8, temperature=0.0)
    return first, second


@pytest.fixture(scope="module")
async def pair(engine):
    """Two in-process replicas, each an engine of its own (own KV pool and radix cache) on the session's weights."""
    engines = [engine.with_config(kv_cache_bytes=96 << 20) for _ in range(2)]
    servers = [await start(e, model="smol") for e in engines]
    yield engines, servers
    for s in servers:
        await s.stop()
    for e in engines:
        await e.aclose()


async def flush(roots):
    async with httpx.AsyncClient() as h:
        for root in roots:
            assert (await h.post(root + "/flush_cache")).status_code == 200


async def test_programs_through_the_router_keep_a_single_replicas_hit_rate(pair):
    engines, servers = pair
    roots = [s.url[: -len("/v1")] for s in servers]
    async with RemoteEngine(servers[0].url) as one:
        alone = await run_batch(ask, ARGS, engine=one, progress=False)
        single = one.stats()["cache_hit_rate"]
    await flush(roots)
    before = [e.stats()["requests"] for e in engines]
    async with sglang_router(roots) as url, RemoteEngine(url + "/v1") as routed:
        states = await asyncio.wait_for(run_batch(ask, ARGS, engine=routed, progress=False), 300)
        through = routed.stats()
    served = [e.stats()["requests"] - b for e, b in zip(engines, before)]
    print(f"cache hit rate: one replica {single:.3f}, two behind sglang-router {through['cache_hit_rate']:.3f}; "
          f"requests per replica {served}")
    assert [st.return_value for st in states] == [st.return_value for st in alone]  # greedy: the same answers
    assert through["finished"] == 2 * len(ARGS) and all(n > 0 for n in served)  # both replicas worked
    # each family's prefix is computed on one replica only: nothing is lost to the split
    assert through["cache_hit_rate"] >= single - 0.02


async def running(h: httpx.AsyncClient, root: str) -> float:
    for line in (await h.get(root + "/metrics")).text.splitlines():
        if line.startswith("sgagent_running "):
            return float(line.split()[1])
    return 0.0


async def test_a_replica_killed_mid_run_fails_over_and_nothing_hangs(pair, tmp_path):
    _, servers = pair
    await flush([s.url[: -len("/v1")] for s in servers])
    async with ServerProcess(kv_cache_mib=96, threads=1, log_file=tmp_path / "replica.log") as victim:
        roots = [servers[0].url[: -len("/v1")], victim.root]
        async with sglang_router(roots) as url, RemoteEngine(url + "/v1", timeout=60) as routed, \
                httpx.AsyncClient(timeout=5) as h:
            async def kill_when_busy():
                while await running(h, victim.root) < 1:
                    await asyncio.sleep(0.02)
                victim.kill()

            killer = asyncio.create_task(kill_when_busy())
            results = await asyncio.wait_for(run_batch(ask, ARGS * 2, engine=routed, progress=False,
                                                       return_exceptions=True), 300)
            assert killer.done() and victim.proc.returncode is not None  # it died while serving requests
            failed = [r for r in results if isinstance(r, Exception)]
            print(f"killed one of two replicas mid-run: {len(results) - len(failed)} of {len(results)} programs "
                  f"completed, {len(failed)} failed: {sorted({type(e).__name__ for e in failed})}")
            assert all(isinstance(e, RemoteError) for e in failed)  # a clear error, never another kind or a hang
            assert len(failed) < len(results) // 2  # the survivor took the dead replica's work
            for _ in range(100):  # the router's health check takes the dead worker out
                if '"is_healthy":false' in (await h.get(url + "/workers")).text:
                    break
                await asyncio.sleep(0.2)
            after = await asyncio.wait_for(run_batch(ask, ARGS[:4], engine=routed, progress=False), 120)
            assert all(st.return_value for st in after)
