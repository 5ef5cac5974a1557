"""Run each workload on each system, cold, `runs` times; keep the median time and the last run's numbers."""

from __future__ import annotations

import contextlib
import io
import statistics
import time

from .backends import Capped, Systems
from .workloads import Workload


async def run_once(systems: Systems, name: str, workload: Workload, n: int, small: bool, cap: int | None):
    backend = await systems.open(name)
    try:
        target = Capped(backend, cap) if cap else backend
        with contextlib.redirect_stdout(io.StringIO()):  # the recipes print their results
            if workload.prepare is not None:
                await workload.prepare(target, small)  # its tokens stay in the run's hit rate
            t0 = time.perf_counter()
            outputs = await workload.run(target, n, small)
            dt = time.perf_counter() - t0
        return dt, outputs, backend.stats()
    finally:
        await systems.close(name, backend)


async def measure(systems: Systems, workload: Workload, n: int, small: bool, runs: int, cap: int | None,
                  bar=None) -> dict:
    """{"workload", "programs", per system: {"seconds", "programs_per_s", "hit_rate", ...}, "ratios"}."""
    row = {"workload": workload.name, "what": workload.what, "systems": {}}
    if not small:
        # untimed: compiles the workload's constraints (kept by the base engine for every system) and warms kernels
        await run_once(systems, systems.names[0], workload, 1, True, cap)
    for name in systems.names:
        times, outputs, stats = [], [], {}
        for _ in range(runs):
            if bar is not None:
                bar.set_postfix_str(f"{workload.name} on {name}")
            dt, outputs, stats = await run_once(systems, name, workload, n, small, cap)
            times.append(dt)
            if bar is not None:
                bar.update(1)
        failed = [o for o in outputs if isinstance(o, BaseException)]
        if not outputs or len(failed) == len(outputs) or any(o is None for o in outputs):
            raise RuntimeError(f"{workload.name} on {name} produced no output: {failed[:1]}")
        t = statistics.median(times)
        row["programs"] = len(outputs)
        row["systems"][name] = {
            "seconds": t, "programs_per_s": (len(outputs) - len(failed)) / t, "runs": runs, "failed": len(failed),
            "hit_rate": stats.get("cache_hit_rate", 0.0), "prompt_tokens": stats.get("prompt_tokens", 0),
            "cached_tokens": stats.get("cached_tokens", 0),
        }
    ours = row["systems"].get("sgagent")
    row["ratios"] = ({f"vs_{k}": v["seconds"] / ours["seconds"] for k, v in row["systems"].items() if k != "sgagent"}
                     if ours else {})
    return row
