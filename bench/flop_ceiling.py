"""Issue 3: how the tree-of-thought's reuse ratio and its FLOP ceiling move with the workload's shape.

Reuse removes prefill work and leaves decode work alone, so the shorter the prompts relative to the thoughts,
the lower the ceiling (bench.common.model_flops). One cold run each side per shape; the ratios are indicative.

python -m bench.flop_ceiling [--runs 1] [--small]
"""

from __future__ import annotations

import statistics

import sgagent

from . import workloads as w
from .common import cli, cold_run, machine, model_flops, report


async def main(runs: int, small: bool) -> None:
    print(f"# tree-of-thought FLOP ceiling on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    shapes = [(1, 8)] if small else [(1, 32), (8, 16), (8, 32), (8, 64), (8, 128)]
    for questions, new in shapes:
        times, flops = {}, {}
        for radix in (True, False):
            got = [await cold_run(base, lambda e: w.tree_of_thought_raw(e, questions=questions, depth=3, new=new),
                                  radix_cache=radix) for _ in range(runs)]
            times[radix] = statistics.median(t for t, _ in got)
            flops[radix] = model_flops(base.model_config, got[-1][1])
        report("tot_flop_ceiling", questions=questions, new=new, ratio=times[False] / times[True],
               flop_ratio=flops[False] / flops[True], gflop_on=flops[True] / 1e9, gflop_off=flops[False] / 1e9)
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=1)
