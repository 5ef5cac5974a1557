"""Issue 3: prefix reuse on vs off on few-shot, multi-turn and tree-of-thought; few-shot vs llama.cpp.

multi_turn has the shape of SGLang's multi-turn benchmark (256-512-token user turns, 4-8-token replies);
multi_turn_chatty has one-line user turns and 24-token replies. flop_ratio is the off/on ratio of the arithmetic
each run did (bench.common.model_flops, from the engines' counters): reuse removes prefill work and never decode
work, so it bounds `ratio` but for the memory traffic a shared prefix saves in decode attention (RESULTS.md).

python -m bench.radix_reuse [--runs 1] [--small]
"""

from __future__ import annotations

import statistics
import time

import sgagent

from . import workloads as w
from .common import cli, cold_run, isolated, llama_cpp, machine, model_flops, report


async def compare(base, name: str, fn, runs: int) -> float:
    times, stats = {}, {}
    for radix in (True, False):
        got = [await cold_run(base, fn, radix_cache=radix) for _ in range(runs)]
        times[radix] = statistics.median(t for t, _ in got)
        stats[radix] = got[-1][1]
    flops = {radix: model_flops(base.model_config, s) for radix, s in stats.items()}
    # flop_ratio: the ratio if time were the arithmetic alone; reuse removes prefill work, never decode work
    report(f"radix_{name}", on_s=times[True], off_s=times[False], ratio=times[False] / times[True],
           hit_rate=stats[True]["cache_hit_rate"], flop_ratio=flops[False] / flops[True], runs=runs)
    return times[True]


def llama_few_shot(path: str, n: int, new: int, n_examples: int) -> float | None:
    Llama = llama_cpp()
    if Llama is None:
        return None
    import torch

    llm = Llama(model_path=path, n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False)
    prefix = w.few_shot_prefix(n_examples)
    t0 = time.perf_counter()
    for q in w.few_shot_questions(n):  # llama-cpp-python keeps the previous prompt's KV: the prefix is reused
        llm.create_completion(prefix + q, max_tokens=new, temperature=0.0)
    return time.perf_counter() - t0


async def main(runs: int, small: bool) -> None:
    print(f"# radix reuse on {machine()}")
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    # --small: a CI smoke run that checks numbers come out, not speeds
    n, ex, convs, turns, qs, depth = (4, 10, 2, 3, 1, 2) if small else (64, 40, 16, 6, 8, 3)
    q_len = (32, 64) if small else (256, 512)
    t_on = await compare(base, "few_shot", lambda e: w.few_shot_raw(e, n=n, n_examples=ex), runs)
    await compare(base, "multi_turn", lambda e: w.multi_turn_raw(e, convs=convs, turns=turns, q_len=q_len), runs)
    await compare(base, "multi_turn_chatty", lambda e: w.multi_turn_chatty_raw(e, convs=convs, turns=turns), runs)
    await compare(base, "tree_of_thought", lambda e: w.tree_of_thought_raw(e, questions=qs, depth=depth), runs)
    t_llama = isolated(llama_few_shot, base.model_path, n, 16, ex) if llama_cpp() else None
    if t_llama is not None:
        report("few_shot_vs_llama_cpp", sgagent_s=t_on, llama_cpp_s=t_llama, ratio=t_llama / t_on)
    else:
        report("few_shot_vs_llama_cpp", llama_cpp="not installed (pip install '.[bench]')")
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=1)
