"""Shared bits of the benchmarks: timing medians, ratio lines for people and JSON lines for machines."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    return f"{platform.machine()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def cli(main, runs: int = 3) -> None:
    """`--runs N --small` for a benchmark whose main is `async main(runs, small)`."""
    import argparse
    import asyncio

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=runs, help="repeats; the median is reported")
    ap.add_argument("--small", action="store_true", help="CI smoke size: checks numbers come out, not speeds")
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.small))


async def timed(fn, runs: int) -> tuple[float, object]:
    """Median wall time of `runs` awaits of fn(), and the last result."""
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


async def on_fresh_engine(base, fn, **overrides) -> dict:
    """Await fn(engine) on a new engine sharing base's weights (a cold cache); returns its stats."""
    return (await cold_run(base, fn, **overrides))[1]


async def cold_run(base, fn, **overrides) -> tuple[float, dict]:
    """Seconds of fn(engine) on a new engine sharing base's weights (a cold cache), the engine's start-up
    (pool, CUDA graphs) not counted; and its stats."""
    e = base.with_config(**overrides)
    try:
        t0 = time.perf_counter()
        await fn(e)
        return time.perf_counter() - t0, e.stats()
    finally:
        await e.aclose()


def model_flops(mc, stats: dict) -> float:
    """The floating-point work a run did, from an engine's counters: every computed token through the
    layers' projections, every (query, key) pair through attention, every sampled token through the LM head.
    Two runs' times can differ by more than their FLOPs only where one does its work at a better rate than the
    other: what bounds an on/off ratio (for prefix reuse, see bench/RESULTS.md)."""
    h, hd = mc.hidden_size, mc.head_dim
    body = mc.num_layers * (h * hd * (2 * mc.num_heads + 2 * mc.num_kv_heads) + 3 * h * mc.intermediate_size)
    attention = mc.num_layers * 2 * mc.num_heads * hd  # QK and PV, per pair
    return 2.0 * (stats["computed_tokens"] * body + stats["attended_pairs"] * attention
                  + stats["decode_tokens"] * h * mc.vocab_size)


def report(bench: str, **fields) -> None:
    """One human line and one JSON line (prefixed BENCH_JSON) per measurement."""
    human = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"[{bench}] {human}", flush=True)
    print("BENCH_JSON " + json.dumps({"bench": bench, **fields}), flush=True)
    out = os.environ.get("SGAGENT_BENCH_OUT")
    if out:
        with Path(out).open("a") as f:
            f.write(json.dumps({"bench": bench, **fields}) + "\n")


def isolated(fn, *args):
    """fn(*args) in a fresh spawned process, for baselines with their own thread pools: llama.cpp's OpenMP
    threads and torch's share two cores badly once both runtimes have started in one process (llama.cpp
    measured 3.5x slower after an engine had run beside it). fn must be importable by name."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def llama_cpp():
    """llama-cpp-python's Llama class when the bench extra is installed, else None."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    return Llama
