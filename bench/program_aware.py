"""Issue 22: program-aware scheduling and KV retention under memory pressure, all four policies in one run.

64 ReAct-style tool-loop programs of 6 steps on the default model; each tool call sleeps a seeded 50-500 ms and
returns an observation that grows the context to ~1.5-2k tokens. The KV pool is sized to hold the final contexts
of a fraction of the programs at once (--hold, default 0.35). Per policy: program throughput, p50/p95 program
completion time, cache hit rate, and prompt tokens recomputed (prefill beyond what an unbounded cache computes,
measured on a pool that holds everything). Then both policies with a pool that holds everything (no loss), and
the SGLang-paper suite's multi-turn and generative-agents workloads on a small pool.

python -m bench.program_aware [--runs 1] [--small] [--programs 64] [--hold 0.35] [--suite-pages 48] [--suite-only]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import sgagent

from .common import machine, report

POLICIES = {
    "today": dict(program_scheduling=False, kv_retention=False),
    "scheduling": dict(program_scheduling=True, kv_retention=False),
    "retention": dict(program_scheduling=False, kv_retention=True),
    "both": dict(program_scheduling=True, kv_retention=True),
}
WORDS = ("river stone lantern market garden engine letter window signal harbor meadow copper orbit ledger violet "
         "summit thread canyon pocket ember falcon quarry beacon willow tunnel saddle ribbon cobalt hollow").split()
SYSTEM = ("You are a research agent. At each step think briefly, then name one tool call; the tool's observation "
          "follows. Tools: search(query), lookup(term), calculate(expression). ") * 6


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@sgagent.program
async def react_program(s, i: int, steps: int, question_words: int, observation_words: int, think: int):
    rng = random.Random(i)
    s += SYSTEM + f"\nQuestion {i}: " + _text(rng, question_words) + "\nThought:"
    t0 = time.perf_counter()
    for k in range(steps):
        await s.gen(f"thought{k}", max_tokens=think, temperature=0, ignore_eos=True)
        await asyncio.sleep(rng.uniform(0.05, 0.5))  # the tool call
        s += f"\nObservation {k}: " + _text(rng, observation_words) + "\nThought:"
    return time.perf_counter() - t0


async def workload(engine, n: int, shape: dict) -> list[float]:
    states = await sgagent.run_batch(react_program, [dict(i=i, **shape) for i in range(n)], engine=engine,
                                     concurrency=n, progress=False)
    return [st.return_value for st in states]


async def measure(base, n: int, shape: dict, policy: str, pages: int | None, runs: int) -> dict:
    times, out = [], None
    for _ in range(runs):
        e = base.with_config(kv_pages=pages, **POLICIES[policy])
        try:
            t0 = time.perf_counter()
            done = await workload(e, n, shape)
            wall = time.perf_counter() - t0
            st = e.stats()
        finally:
            await e.aclose()
        times.append(wall)
        if out is None or wall == statistics.median(times):
            out = dict(wall=wall, p50=statistics.median(done), p95=statistics.quantiles(done, n=20)[18],
                       hit_rate=st["cache_hit_rate"], prefill=st["prefill_tokens"], pins_dropped=st.get("pins_dropped", 0),
                       pin_hits=st.get("pin_hits", 0), preemptions=st["preemptions"])
    out["wall"] = statistics.median(times)
    out["programs_per_s"] = n / out["wall"]
    return out


async def suite_small_pool(base, pages: int, runs: int) -> None:
    from .suite.workloads import WORKLOADS

    for name in ("multi_turn_short", "multi_turn_long", "generative_agents"):
        w = WORKLOADS[name]
        res = {}
        for policy in ("today", "both"):
            walls, hits = [], []
            for _ in range(runs):
                e = base.with_config(kv_pages=pages, **POLICIES[policy])
                try:
                    t0 = time.perf_counter()
                    await w.run(e, w.full, False)
                    walls.append(time.perf_counter() - t0)
                    hits.append(e.stats()["cache_hit_rate"])
                finally:
                    await e.aclose()
            res[policy] = (statistics.median(walls), statistics.median(hits))
        report(f"program_aware_suite_{name}", pages=pages, today_s=res["today"][0], both_s=res["both"][0],
               speedup=res["today"][0] / res["both"][0], today_hit_rate=res["today"][1],
               both_hit_rate=res["both"][1], runs=runs)


async def main(a) -> None:
    base = sgagent.Engine()
    if a.suite_only:
        await suite_small_pool(base, a.suite_pages, a.runs)
        return await base.aclose()
    n = 4 if a.small else a.programs
    shape = (dict(steps=2, question_words=40, observation_words=20, think=4) if a.small
             else dict(steps=6, question_words=500, observation_words=110, think=16))
    ps = base.runner.pool.page_size
    # a program's final context, from the prompt it ends with (one program alone)
    probe = base.with_config(kv_pages=4096)
    try:
        await workload(probe, 1, shape)
        final_ctx = probe.scheduler.tree.depth(max(probe.scheduler.tree._nodes(), key=probe.scheduler.tree.depth))
    finally:
        await probe.aclose()
    everything = n * (final_ctx // ps + 2) + 64
    pages = max(int(a.hold * n * final_ctx / ps), 4 * (final_ctx // ps + 2))
    print(f"# program_aware on {machine()}: {n} programs x {shape['steps']} steps, final context ~{final_ctx} "
          f"tokens; pool {pages} pages of {ps} = "
          f"{pages * ps / (n * final_ctx):.0%} of all final contexts", flush=True)
    ideal = (await measure(base, n, shape, "both", everything, 1))["prefill"]
    print(f"# prompt tokens an unbounded cache computes: {ideal}", flush=True)
    t = None
    for p in a.policies:  # "today" first: the others' ratios are against it
        r = await measure(base, n, shape, p, pages, a.runs)
        t = t or r
        report("program_aware_pressure", policy=p, programs=n, pool_fraction=pages * ps / (n * final_ctx),
               programs_per_s=r["programs_per_s"], throughput_vs_today=r["programs_per_s"] / t["programs_per_s"],
               p50_s=r["p50"], p95_s=r["p95"], p95_vs_today=t["p95"] / r["p95"], hit_rate=r["hit_rate"],
               recomputed_tokens=r["prefill"] - ideal, pins_dropped=r["pins_dropped"], pin_hits=r["pin_hits"],
               preemptions=r["preemptions"], runs=a.runs)
    roomy = {p: await measure(base, n, shape, p, everything, a.runs) for p in ("today", "both") if a.roomy}
    if roomy:
        report("program_aware_roomy", programs=n, pool_fraction=1.0,
               today_programs_per_s=roomy["today"]["programs_per_s"],
               both_programs_per_s=roomy["both"]["programs_per_s"],
               ratio=roomy["both"]["programs_per_s"] / roomy["today"]["programs_per_s"], runs=a.runs)
    if not a.small and a.suite_pages:
        await suite_small_pool(base, a.suite_pages, a.runs)
    await base.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1, help="repeats per policy; the median is reported")
    ap.add_argument("--small", action="store_true", help="CI smoke size: checks numbers come out, not speeds")
    ap.add_argument("--programs", type=int, default=64)
    ap.add_argument("--hold", type=float, default=0.35, help="share of all programs' final contexts the pool holds")
    ap.add_argument("--suite-pages", type=int, default=48, help="pool of the suite workloads' small-pool runs (0: skip them)")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated, today first (the ratios are against the first)")
    ap.add_argument("--suite-only", action="store_true", help="only the suite workloads' small-pool runs")
    ap.add_argument("--no-roomy", dest="roomy", action="store_false", help="skip the pool-holds-everything runs")
    a = ap.parse_args()
    a.policies = a.policies.split(",")
    assert all(p in POLICIES for p in a.policies), f"policies are {list(POLICIES)}"
    asyncio.run(main(a))
