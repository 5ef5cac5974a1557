"""Issue 3: how the tree-of-thought's reuse ratio and its FLOP ceiling move with the workload's shape.

Reuse removes prefill work and leaves decode work alone, so the shorter the prompts relative to the thoughts,
the lower the ceiling (bench.common.model_flops). One cold run each side per shape by default: the ratios are
indicative, the ceilings exact.

python -m bench.flop_ceiling [--runs 1] [--small]
"""

from __future__ import annotations

import sgagent

from . import workloads as w
from .common import cli, machine
from .radix_reuse import compare


async def main(runs: int, small: bool) -> None:
    print(f"# tree-of-thought FLOP ceiling on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    for questions, new in [(1, 8)] if small else [(1, 32), (8, 16), (8, 32), (8, 64), (8, 128)]:
        await compare(base, f"tree_of_thought_q{questions}_new{new}",
                      lambda e, q=questions, n=new: w.tree_of_thought_raw(e, questions=q, depth=3, new=n), runs)
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=1)
