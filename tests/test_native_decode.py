"""A CPU step of decodes runs every decoder layer in one C++ call (csrc/decode_layers.cpp): the same ops in the
same order as model/llama.py's loop, so the same tokens and bit-identical logprobs, on GGUF blocks (bf16) and on
dense weights (float32), with biases (Qwen2), with and without prefix groups; models it does not take (q/k norms)
stay on the loop."""

from __future__ import annotations

import asyncio

import pytest
import torch

import sgagent
from sgagent.engine.cpu_ops import cpu_ops

PREFIX = "".join(f"Q: What is {i} plus 4?\nA: {i + 4}\n\n" for i in range(30))  # a long shared prefix: a group
BATCHES = [[f"{PREFIX}Q: What is {i} plus 4?\nA:" for i in range(31, 35)], ["def fib(n):", "Once upon a time"]]


async def both_ways(base: sgagent.Engine, batches, max_tokens: int = 12):
    """Each batch generated concurrently (batches one after another) with the native layers on, then off; and
    the attention arguments of every step that ran natively."""
    model = base.runner.model
    native_steps, real = [], model._native_decode
    model._native_decode = lambda *a: native_steps.append(real(*a)) or native_steps[-1]
    results = {}
    try:
        for native in (True, False):
            model.native_layers = native
            e = base.with_config(kv_cache_bytes=32 << 20)
            try:
                results[native] = [r for b in batches for r in await asyncio.gather(
                    *(e.generate(p, max_tokens=max_tokens, temperature=0, logprobs=True) for p in b))]
            finally:
                await e.aclose()
    finally:
        del model._native_decode
        model.native_layers = True
    return results, [s[1] for s in native_steps if s is not None]


@pytest.mark.parametrize("kind", ["bf16", "float32"])
async def test_native_layers_give_the_layer_by_layer_values(kind, bf16, engine):
    base = bf16 if kind == "bf16" else engine
    if kind == "bf16":  # where the CPU multiplies by GGUF blocks, the op does too
        assert (base.runner.model.packed is not None) == bool(base.runner.cpu_ops.quant_linear_fast())
    results, native = await both_ways(base, BATCHES)
    assert native, "no step ran natively"
    assert any(a[5].numel() > 0 for a in native), "no native step had a prefix group"
    assert any(a[5].numel() == 0 for a in native), "every native step had a prefix group"
    for a, b in zip(results[True], results[False]):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs


@pytest.mark.parametrize("arch, native", [("qwen2", True), ("qwen3", False)])
async def test_biases_run_natively_and_qk_norms_stay_on_the_loop(arch, native, tiny_models):
    path, _ = tiny_models[arch]
    e = sgagent.Engine(str(path), kv_cache_bytes=8 << 20, page_size=4, dtype="float32")
    try:
        layers = e.runner.model.model.layers
        assert all((l.self_attn.qkv_proj.bias is not None) == (arch == "qwen2") for l in layers)
        if arch == "qwen2":  # the random model's biases are zeros: give them values a dropped bias would show
            with torch.no_grad():
                for l in layers:
                    l.self_attn.qkv_proj.bias.normal_(0, 0.5)
        results, steps = await both_ways(e, [["Once upon a time", "def fib(n):"]], max_tokens=8)
    finally:
        await e.aclose()
    assert bool(steps) == native
    for a, b in zip(results[True], results[False]):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs


def test_decode_layers_refuses_a_short_weight_list():
    ops = cpu_ops()
    assert ops is not None, "the C++ ops did not build here (see the cpu_ops.unavailable log line)"
    x = torch.zeros(1, 64, dtype=torch.bfloat16)
    caches = torch.zeros(1, 16, 1, 16, dtype=torch.bfloat16)
    none = torch.zeros(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="4 weights"):
        ops.decode_layers(x, x, x, x, [torch.zeros(1, dtype=torch.uint8)] * 3, [3] * 3, [none] * 3, [x[0]] * 2, 1e-5,
                          4, 1, 128, 128, 0, caches, caches, torch.zeros(1, dtype=torch.long),
                          torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 4, dtype=torch.int32),
                          torch.zeros(0, 1, dtype=torch.long), none, none, 16, 0.25)
