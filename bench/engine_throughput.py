"""Issue 2: batched throughput vs transformers generate, and single-stream decode vs llama.cpp.

python -m bench.engine_throughput [--runs 3] [--requests 64] [--new 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

import sgagent

from sgagent.engine import compute

from .baselines.hf import load_transformers_model
from .common import isolated, llama_cpp, machine, report, timed

TOPICS = ["rivers", "volcanoes", "bees", "glaciers", "comets", "forests", "deserts", "coral reefs"]


def prompts(engine, n: int, target: int = 128) -> list[list[int]]:
    out = []
    for i in range(n):
        text = f"Essay {i} about {TOPICS[i % len(TOPICS)]}. " + " ".join(
            f"Fact {j}: {TOPICS[(i + j) % len(TOPICS)]} matter to {TOPICS[(i * j + 1) % len(TOPICS)]}." for j in range(40))
        out.append(engine.tokenize(text)[:target])
    return out


async def generate_all(engine, ps: list[list[int]], new: int):
    """Every prompt at once, `new` greedy tokens each (EOS ignored): one batched run."""
    return await asyncio.gather(*(engine.generate(p, max_tokens=new, temperature=0, ignore_eos=True) for p in ps))


def hf_batched(model, pad_id: int, ps: list[list[int]], new: int) -> float:
    width = max(map(len, ps))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in ps], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=model.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=pad_id)
    if out.is_cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[1] == width + new
    return dt


def llama_single_stream(path: str, text: str, runs: int) -> tuple[int, float]:
    """(completion tokens, median seconds) of 128 greedy tokens from llama.cpp; run in its own process."""
    Llama = llama_cpp()
    llm = Llama(model_path=path, n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False)
    times = []
    for _ in range(runs):
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(text, max_tokens=128, temperature=0.0)
        times.append(time.perf_counter() - t0)
    return out["usage"]["completion_tokens"], sorted(times)[len(times) // 2]


async def main(runs: int, n: int, new: int) -> None:
    print(f"# engine throughput on {machine()}")
    engine = sgagent.Engine(radix_cache=False)  # distinct prompts: measure the engine, not the cache
    dtype = engine.runner.dtype
    ps = prompts(engine, n)

    async def ours():
        rs = await generate_all(engine, ps, new)
        assert all(len(r.token_ids) == new for r in rs)
        return rs

    single = engine.tokenize("Once upon a time, in a quiet village by the sea,")

    async def one():
        return await engine.generate(single, max_tokens=128, temperature=0, ignore_eos=True)

    await engine.generate(ps[0], max_tokens=2)  # warm-up
    await ours()  # warm-up at full size: on CUDA this captures the decode graphs
    t_ours, _ = await timed(ours, runs)
    t_one, _ = await timed(one, runs)
    toks = n * new
    pad = engine.tokenizer.pad_token_id or 0
    fields = dict(requests=n, prompt_tokens=len(ps[0]), new_tokens=new, sgagent_dtype=str(dtype).split(".")[1],
                  attention=type(engine.runner.attn).__name__, cuda_graphs=engine.runner.graphs is not None,
                  sgagent_tok_s=toks / t_ours)
    if engine.runner.device.type == "cuda":  # what the GPU path's parts give: graphs off, then torch attention
        for label, over in (("no_graphs", dict(cuda_graphs=False)), ("torch_attention", dict(attention_backend="torch"))):
            other = engine.with_config(**over)
            await generate_all(other, ps, new)  # warm-up
            t, _ = await timed(lambda: generate_all(other, ps, new), runs)
            fields[f"sgagent_{label}_tok_s"] = toks / t
            await other.aclose()
    # transformers in float32 (what the GGUF dequantizes to) and in the engine's own dtype when that differs
    for hf_dtype in dict.fromkeys([torch.float32, dtype]):
        hf = compute.call(load_transformers_model, engine, hf_dtype)
        compute.call(hf_batched, hf, pad, ps[:2], 2)  # warm-up
        # on the engine's compute thread: one OpenMP team for both, neither slowed by the other's
        t_hf = sorted(compute.call(hf_batched, hf, pad, ps, new) for _ in range(max(1, runs - 1)))
        t_hf = t_hf[len(t_hf) // 2]
        name = str(hf_dtype).split(".")[1]
        fields.update({f"transformers_{name}_tok_s": toks / t_hf, f"ratio_vs_{name}": t_hf / t_ours})
        del hf
    report("batched_vs_transformers", **fields, runs=runs)

    fields = dict(sgagent_tok_s=128 / t_one)
    if llama_cpp() is not None:
        ntok, t_llama = isolated(llama_single_stream, str(engine._src.path), engine.tokenizer.decode(single), runs)
        fields.update(llama_cpp_tok_s=ntok / t_llama, ratio=(128 / t_one) / (ntok / t_llama))
    else:
        fields.update(llama_cpp="not installed (pip install '.[bench]')")
    report("single_stream_vs_llama_cpp", **fields, runs=runs)
    await engine.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.requests, a.new))
