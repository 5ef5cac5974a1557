"""The default model's projections on CPU: multiplied by the GGUF file's Q4_1/Q8_0 blocks (quant_linear) vs by the
dense weights, at decode- and prefill-sized row counts, in each dtype where the engine takes the blocks by
default: bf16 on an AMX CPU (against oneDNN's dense bf16, model.llama.project), float32 on an AVX-512 one
(against MKL's dense float32 both ways the engine can run it: one product, and the batch-invariant one of 16-row
blocks, model/invariance.py, which the deterministic default uses).

Every fused matrix of the 30 layers (qkv, o, gate_up, down) and the tied lm_head, with the real weights (not
cache-resident: 97 MB of blocks, 271 MB of bf16, 540 MB of float32); the ways interleaved, median of --runs.

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


def _measure(mats, ops, rows: int, runs: int, dtype: torch.dtype) -> dict[str, float]:
    from sgagent.engine.model.invariance import padded_project
    from sgagent.engine.model.llama import project

    xs = {k: torch.randn(rows, k, dtype=dtype) for k in {w.shape[1] for w, _ in mats}}
    ways = {"blocks": lambda: [p(xs[w.shape[1]], ops) for w, p in mats],
            "dense": lambda: [project(xs[w.shape[1]], w) for w, _ in mats]}
    if dtype == torch.float32:
        ways["dense_invariant"] = lambda: [padded_project(xs[w.shape[1]], w) for w, _ in mats]
    t = {name: [] for name in ways}
    for _ in range(runs):
        for name, fn in ways.items():
            t[name].append(_time(fn))
    return {name: statistics.median(v) for name, v in t.items()}


async def main(runs: int, small: bool) -> None:
    import sgagent
    from sgagent.engine import compute
    from sgagent.engine.model.llama import Linear

    print(f"# GGUF blocks vs dense projections, {machine()}")
    for dtype in ("bfloat16", "float32"):
        engine = sgagent.Engine(kv_cache_bytes=16 << 20, dtype=dtype)
        ops, model = engine.runner.cpu_ops, engine.runner.model
        if model.packed is None:
            why = "AMX" if dtype == "bfloat16" else "AVX-512"
            report("gguf_blocks", dtype=dtype, skipped=f"no {why} here (or no C++ ops): the engine keeps dense weights")
            await engine.aclose()
            continue
        mats = [(m.weight, m.packed) for m in model.modules() if isinstance(m, Linear) and m.packed is not None]
        mats.append((model.lm_weight, model.packed))
        if small:
            mats = mats[:8] + mats[-1:]
        for rows in (1, 16, 64) if small else (1, 4, 16, 32, 64, 128, 256, 384, 512, 1024):
            # on the engine's compute thread: torch's OpenMP team is per calling thread, and a second team would
            # share the cores with the first
            t = compute.call(_measure, mats, ops, rows, runs, engine.runner.dtype)
            extra = {f"{k}_ms": v * 1e3 for k, v in t.items() if k not in ("blocks", "dense")}
            extra.update({f"speedup_vs_{k}": v / t["blocks"] for k, v in t.items() if k not in ("blocks", "dense")})
            report("gguf_blocks", dtype=dtype, rows=rows, matrices=len(mats), blocks_ms=t["blocks"] * 1e3,
                   dense_ms=t["dense"] * 1e3, speedup=t["dense"] / t["blocks"], **extra, runs=runs)
        await engine.aclose()


if __name__ == "__main__":
    cli(main, runs=5)
