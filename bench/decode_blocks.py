"""Issue 25: float32 decode by the GGUF blocks (EngineConfig.gguf_blocks=True) against the dense float32 model.

python -m bench.decode_blocks [--runs 3] [--small]

Each size decodes 128 greedy tokens (EOS ignored) for that many sequences at once, every run on fresh prompts
(their first token changed) so no run reads another's cached prefix.
"""

from __future__ import annotations

import itertools

import sgagent

from .common import cli, machine, report, timed
from .engine_throughput import generate_all, prompts


async def main(runs: int, small: bool):
    sizes, new = ((1, 2), 8) if small else ((1, 8, 16), 128)
    print(f"# float32 decode, GGUF blocks vs dense, on {machine()}", flush=True)
    dense = sgagent.Engine(dtype="float32", gguf_blocks=False)
    blocks = sgagent.Engine(dtype="float32", gguf_blocks=True)
    async with dense, blocks:
        for n in sizes:
            seconds = {}
            for name, eng in (("dense", dense), ("blocks", blocks)):
                base = prompts(eng, n)
                fresh = itertools.count(1)

                async def run(eng=eng, base=base, fresh=fresh):
                    k = next(fresh)
                    return await generate_all(eng, [[p[0] + k] + p[1:] for p in base], new)

                await run()  # warm-up
                seconds[name], _ = await timed(run, runs)
            report("decode_blocks", sequences=n, new_tokens=new, dense_s=seconds["dense"],
                   blocks_s=seconds["blocks"], speedup=seconds["dense"] / seconds["blocks"], runs=runs)


if __name__ == "__main__":
    cli(main)
