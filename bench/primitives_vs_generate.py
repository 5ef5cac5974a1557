"""Issue 4: tree-of-thought and few-shot as programs vs the same prompts as independent engine.generate calls.

python -m bench.primitives_vs_generate [--runs 3] [--small]
"""

from __future__ import annotations


import sgagent

from . import workloads as w
from .common import cli, machine, on_fresh_engine, report, timed


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
            res[label], _ = await timed(lambda fn=fn: on_fresh_engine(base, fn), runs)
        report(f"primitives_{name}", generate_s=res["generate"], program_s=res["program"],
               speedup=res["generate"] / res["program"], runs=runs)
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
