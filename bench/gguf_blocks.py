"""The default model's projections on CPU: multiplied by the GGUF file's Q4_1/Q8_0 blocks (quant_linear, AMX) vs
by the dense bf16 weights (model.llama.project, oneDNN), at decode- and prefill-sized row counts.

Every fused matrix of the 30 layers (qkv, o, gate_up, down) and the tied lm_head, with the real weights (not
cache-resident: 97 MB of blocks, 271 MB of bf16); the two ways interleaved, median of --runs. The engine takes the
blocks up to model.llama.PACKED_ROWS rows.

python -m bench.gguf_blocks [--runs 5]
"""

from __future__ import annotations

import statistics
import time

import torch

from .common import cli, machine, report


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(mats, ops, rows: int, runs: int) -> tuple[float, float]:
    from sgagent.engine.model.llama import project

    xs = {k: torch.randn(rows, k, dtype=torch.bfloat16) for k in {w.shape[1] for w, _ in mats}}
    t = {"blocks": [], "dense": []}
    for _ in range(runs):
        t["blocks"].append(_time(lambda: [p(xs[w.shape[1]], ops) for w, p in mats]))
        t["dense"].append(_time(lambda: [project(xs[w.shape[1]], w) for w, _ in mats]))
    return statistics.median(t["blocks"]), statistics.median(t["dense"])


async def main(runs: int, small: bool) -> None:
    import sgagent
    from sgagent.engine import compute
    from sgagent.engine.model.llama import Linear

    print(f"# GGUF blocks vs dense bf16 projections, {machine()}")
    engine = sgagent.Engine(kv_cache_bytes=16 << 20, dtype="bfloat16")
    ops, model = engine.runner.cpu_ops, engine.runner.model
    if model.packed is None:
        report("gguf_blocks", skipped="no AMX here (or no C++ ops): the engine keeps dense weights")
        await engine.aclose()
        return
    mats = [(m.weight, m.packed) for m in model.modules() if isinstance(m, Linear) and m.packed is not None]
    mats.append((model.lm_weight, model.packed))
    if small:
        mats = mats[:8] + mats[-1:]
    for rows in (1, 16, 64) if small else (1, 4, 16, 32, 64, 128, 256, 384, 512, 1024):
        # on the engine's compute thread: torch's OpenMP team is per calling thread, and a second team would
        # share the cores with the first
        b, d = compute.call(_measure, mats, ops, rows, runs)
        report("gguf_blocks", rows=rows, matrices=len(mats), blocks_ms=b * 1e3, dense_ms=d * 1e3, speedup=d / b,
               runs=runs)
    await engine.aclose()


if __name__ == "__main__":
    cli(main, runs=5)
