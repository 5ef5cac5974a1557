"""Issue 25: does RemoteEngine's client-side sticky router add anything to sglang-router's own cache affinity?

Two `sgagent serve` replicas in child processes (one core each). Programs of F families, each family behind a
long few-shot prefix of its own, two turns per program, run with run_batch through:
  one          a single replica (the hit rate that two replicas should keep);
  round_robin  sglang-router, round-robin (no affinity: the floor);
  sticky       both replicas directly, each program pinned to one by the client (bench/baselines/sticky.py,
               the routing RemoteEngine had before this measurement);
  router       sglang-router, cache-aware (RemoteEngine over the router's one URL).
Caches are flushed before every run; medians of --runs.

python -m bench.router_affinity [--runs 3] [--small]
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from sgagent import program, run_batch, system, user

from .common import cli, machine, report

TOPICS = ["bicycle repair", "Japanese trains", "sourdough baking", "tax forms", "house plants", "chess openings",
          "first aid", "guitar chords"]


def prefix(topic: str) -> str:
    shots = "".join(f"Q: A question about {topic}, number {k}?\nA: A short, concrete answer about {topic}.\n"
                    for k in range(14))
    return f"You answer questions about {topic}. Examples:\n{shots}"


@program
async def ask(s, topic: str, q: str, new: int):
    s += system(prefix(topic))
    s += user(q)
    async with s.assistant():
        first = await s.gen(max_tokens=new, temperature=0.0)
    s += user("Say more, briefly.")
    async with s.assistant():
        second = await s.gen(max_tokens=new, temperature=0.0)
    return first, second


async def flush(roots: list[str]) -> None:
    async with httpx.AsyncClient(timeout=30) as h:
        for root in roots:
            (await h.post(root + "/flush_cache")).raise_for_status()


async def run_config(name: str, replicas, args: list[dict], runs: int) -> dict:
    from sgagent.remote import RemoteEngine, sglang_router

    from .baselines.sticky import StickyEndpoints

    roots = [r.root for r in replicas]
    walls, rates, recomputed = [], [], []
    for _ in range(runs):
        await flush(roots)
        if name in ("router", "round_robin"):
            policy = "cache_aware" if name == "router" else "round_robin"
            async with sglang_router(roots, policy=policy) as url:
                stats, wall = await one_run(RemoteEngine(url + "/v1"), args)
        elif name == "one":
            stats, wall = await one_run(RemoteEngine(replicas[0].url), args)
        else:
            stats, wall = await one_run(StickyEndpoints([RemoteEngine(r.url) for r in replicas]), args)
        walls.append(wall)
        rates.append(stats["cache_hit_rate"])
        recomputed.append(stats["prompt_tokens"] - stats["cached_tokens"])
    wall = statistics.median(walls)
    return {"wall_s": wall, "hit_rate": statistics.median(rates),
            "recomputed_tokens": int(statistics.median(recomputed)), "programs_per_s": len(args) / wall}


async def one_run(remote, args: list[dict]) -> tuple[dict, float]:
    async with remote:
        for e in getattr(remote, "engines", [remote]):
            await e.generate("warm up", max_tokens=1)  # discovery and connections, outside the clock
            e.counters.update(dict.fromkeys(e.counters, 0))
        t0 = time.perf_counter()
        await run_batch(ask, args, engine=remote, concurrency=16, progress=False)
        return remote.stats(), time.perf_counter() - t0


async def main(runs: int, small: bool) -> None:
    from sgagent.server import ServerProcess

    families, per_family, new = (2, 4, 4) if small else (8, 8, 16)
    args = [{"topic": TOPICS[i % families], "q": f"Question {i}: what matters most?", "new": new}
            for i in range(families * per_family)]
    print(f"# router affinity on {machine()}: {len(args)} programs, {families} families, 2 replicas x 1 thread")
    replicas = [ServerProcess(kv_cache_mib=256, threads=1) for _ in range(2)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        results = {name: await run_config(name, replicas, args, runs)
                   for name in ("one", "round_robin", "sticky", "router")}
    finally:
        for r in replicas:
            r.stop()
    for name, res in results.items():
        report("router_affinity", config=name, programs=len(args), families=families, runs=runs, **res)
    r, s = results["router"], results["sticky"]
    report("router_affinity_ratio", sticky_over_router_hit=s["hit_rate"] / r["hit_rate"],
           router_over_sticky_throughput=r["programs_per_s"] / s["programs_per_s"],
           router_over_round_robin_throughput=r["programs_per_s"] / results["round_robin"]["programs_per_s"])


if __name__ == "__main__":
    cli(main, runs=3)
