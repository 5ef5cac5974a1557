"""Issue 24: what deterministic (batch-invariant) inference costs, and what it buys.

In one run, on one set of weights, deterministic on against off (the fastest kernels for each step's shape):
- batched throughput: 64 distinct 128-token prompts, 64 greedy tokens each;
- single stream: 128 greedy tokens from a short prompt;
- few-shot reuse: 64 questions on a 40-example prefix, radix cache on, from a cold cache;
each the median of --runs, interleaved (on, off, on, off, ...) so that the machine's drift hits both. Then the
few-shot workload's outputs with the radix cache on against off, for both settings: how many of the 64 answers
are token-identical (the bug the issue reports: 55/64, 48/64 here, before the change).

python -m bench.determinism [--runs 3] [--small]
"""

from __future__ import annotations

import statistics
import time

import sgagent

from . import workloads as w
from .common import cli, machine, report
from .engine_throughput import generate_all, prompts


async def _time(engine, fn) -> float:
    t0 = time.perf_counter()
    await fn(engine)
    return time.perf_counter() - t0


async def main(runs: int, small: bool) -> None:
    print(f"# deterministic inference on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    n, new, shots = (4, 8, 8) if small else (64, 64, 40)
    ps = prompts(base, n)
    single = base.tokenize("Once upon a time, in a quiet village by the sea,")
    work = {
        "batched": (lambda e: generate_all(e, ps, new), n * new, dict(radix_cache=False)),
        "single_stream": (lambda e: e.generate(single, max_tokens=16 if small else 128, temperature=0,
                                               ignore_eos=True), 16 if small else 128, dict(radix_cache=False)),
        "few_shot": (lambda e: w.few_shot_raw(e, n=n, n_examples=shots), n * 16, dict(radix_cache=True)),
    }
    assert base.stats()["deterministic"], "this engine cannot run batch-invariant here (see its log)"
    for name, (fn, tokens, over) in work.items():
        times = {True: [], False: []}
        for _ in range(runs + 1):  # the first round warms both up and is not counted
            for det in (True, False):
                e = base.with_config(deterministic=det, **over)  # a cold cache each time
                try:
                    times[det].append(await _time(e, fn))
                finally:
                    await e.aclose()
        on, off = (statistics.median(times[d][1:]) for d in (True, False))
        report(f"deterministic_{name}", on_s=on, off_s=off, on_tok_s=tokens / on, off_tok_s=tokens / off,
               cost=1 - off / on, runs=runs)

    # the few-shot answers with the cache on and off
    for det in (True, False):
        outs = {}
        for radix in (True, False):
            e = base.with_config(deterministic=det, radix_cache=radix)
            try:
                outs[radix] = [r.token_ids for r in await w.few_shot_raw(e, n=n, n_examples=shots)]
            finally:
                await e.aclose()
        same = sum(a == b for a, b in zip(outs[True], outs[False]))
        report("deterministic_radix_on_vs_off", deterministic=det, identical=same, requests=n,
               dtype=str(base.runner.dtype).split(".")[1])
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
