"""A CPU decode step with the engine's C++ ops (paged attention, K/V stores, the layer's element-wise work,
logits and the greedy argmax) vs plain torch (gather + SDPA, torch's element-wise ops): `cpu_kernels` on/off;
then, with the C++ ops, all layers in one C++ call (decode_layers) vs the same ops called layer by layer from
Python (`CausalLM.native_layers` on/off).

python -m bench.cpu_ops [--runs 3] [--small]

The same plan (B sequences decoding one token on top of ctx cached tokens) runs on two engines that share
the weights, steps interleaved on the one compute thread; the median step of each is reported.
"""

from __future__ import annotations

import statistics
import time

import sgagent
from sgagent.engine import compute
from sgagent.engine.request import SamplingParams
from sgagent.engine.scheduler import Req, StepPlan

from .common import cli, machine, report


def decode_plan(runner, batch: int, ctx: int) -> tuple[StepPlan, list[Req]]:
    ps = runner.pool.page_size
    plan, reqs = StepPlan(), []
    for i in range(batch):
        r = Req(f"r{i}", [100 + (i * 7 + j) % 5000 for j in range(ctx)], SamplingParams(temperature=0), 0)
        r.pages = runner.pool.alloc(-(-ctx // ps))
        plan.add(r, 1, ctx - 1)  # the last token is the one decoded; the ctx - 1 before it are "cached"
        reqs.append(r)
    return plan, reqs


def step_times(plans: dict, steps: int, before=None) -> dict:
    """Median seconds of runner.step(plan) for each key's (runner, plan), steps interleaved; before(key), if given,
    runs ahead of each step untimed."""
    times = {k: [] for k in plans}
    for _ in range(steps + 2):
        for k, (runner, plan) in plans.items():
            if before is not None:
                before(k)
            t0 = time.perf_counter()
            runner.step(plan)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v[2:]) for k, v in times.items()}  # the first two warm up


async def main(runs: int, small: bool) -> None:
    print(f"# CPU decode step, C++ ops vs plain torch, on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30, device="cpu")
    engines = {on: base.with_config(cpu_kernels=on) for on in (True, False)}
    if engines[True].runner.cpu_ops is None:
        report("cpu_ops", error="the C++ ops did not build here (see cpu_ops.unavailable)")
        return
    cases = [(4, 64)] if small else [(64, 160), (64, 300), (16, 300), (8, 800), (1, 300)]
    for batch, ctx in cases:
        plans, held = {}, []
        for on, e in engines.items():
            plan, reqs = decode_plan(e.runner, batch, ctx)
            plans[on] = (e.runner, plan)
            held.append((e.runner.pool, reqs))
        t = compute.call(step_times, plans, 4 * runs)
        report("cpu_ops", batch=batch, context=ctx, ops_ms=t[True] * 1e3, torch_ms=t[False] * 1e3,
               ratio=t[False] / t[True], dtype=str(base.runner.dtype).removeprefix("torch."), steps=4 * runs)
        for pool, reqs in held:
            for r in reqs:
                pool.free(r.pages)
    runner = engines[True].runner
    model = runner.model
    for batch, ctx in cases:
        plan, reqs = decode_plan(runner, batch, ctx)
        t = compute.call(step_times, {True: (runner, plan), False: (runner, plan)}, 4 * runs,
                         lambda native: setattr(model, "native_layers", native))
        model.native_layers = True
        report("decode_layers", batch=batch, context=ctx, one_call_ms=t[True] * 1e3, layer_loop_ms=t[False] * 1e3,
               ratio=t[False] / t[True], dtype=str(base.runner.dtype).removeprefix("torch."), steps=4 * runs)
        runner.pool.free([p for r in reqs for p in r.pages])
    for e in engines.values():
        await e.aclose()
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
