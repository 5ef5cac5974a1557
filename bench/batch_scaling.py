"""Decode throughput by batch size: n requests x 128 prompt tokens x 64 new tokens (greedy), n = 1 .. 256.

python -m bench.batch_scaling [--runs 3] [--small]

Shows where continuous batching stops paying (on a GPU: where CUDA-graph decode steps stop being launch-bound).
"""

from __future__ import annotations

import sgagent

from .common import cli, machine, report, timed
from .engine_throughput import generate_all, prompts


async def main(runs: int, small: bool) -> None:
    print(f"# batch scaling on {machine()}")
    engine = sgagent.Engine(radix_cache=False)  # distinct prompts: measure the engine, not the cache
    sizes, new = ((1, 4), 8) if small else ((1, 8, 32, 64, 128, 256), 64)
    ps = prompts(engine, max(sizes))
    for n in sizes:
        def go(n=n):
            return generate_all(engine, ps[:n], new)

        await go()  # warm-up
        t, _ = await timed(go, runs)
        report("batch_scaling", requests=n, new_tokens=new, seconds=t, tok_s=n * new / t,
               max_batch_tokens=engine.config.max_batch_tokens, runs=runs)
    await engine.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
