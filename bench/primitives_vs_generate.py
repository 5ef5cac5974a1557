"""Issue 4: tree-of-thought and few-shot as programs vs the same prompts as independent engine.generate calls.

python -m bench.primitives_vs_generate [--runs 3] [--small]
"""

from __future__ import annotations

import argparse
import asyncio

import sgagent

from . import workloads as w
from .common import machine, report, timed


async def main(runs: int, small: bool) -> None:
    print(f"# primitives vs generate on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    n, ex, qs, depth = (4, 10, 1, 2) if small else (64, 40, 8, 3)
    cases = [("few_shot", lambda e: w.few_shot_raw(e, n=n, n_examples=ex),
              lambda e: w.few_shot_programs(e, n=n, n_examples=ex)),
             ("tree_of_thought", lambda e: w.tree_of_thought_raw(e, questions=qs, depth=depth),
              lambda e: w.tree_of_thought_programs(e, questions=qs, depth=depth))]
    for name, raw, prog in cases:
        res = {}
        for label, fn in (("generate", raw), ("program", prog)):
            async def once(fn=fn):
                e = base.with_config()
                try:
                    await fn(e)
                    return e.stats()
                finally:
                    await e.aclose()

            res[label], _ = await timed(once, runs)
        report(f"primitives_{name}", generate_s=res["generate"], program_s=res["program"],
               speedup=res["generate"] / res["program"], runs=runs)
    await base.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.small))
