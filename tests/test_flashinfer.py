"""The flashinfer backend against the torch backend on CUDA (skipped, for that reason only, without CUDA)."""

import pytest
import torch

import sgagent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="flashinfer needs CUDA")

PROMPTS = ["Once upon a time", "The capital of France is", "def add(a, b):\n    return"]


async def test_flashinfer_matches_torch_backend_on_cuda():
    pytest.importorskip("flashinfer")
    fi = sgagent.Engine(device="cuda", dtype="bfloat16", attention_backend="flashinfer", kv_cache_bytes=1 << 30)
    tb = fi.with_config(attention_backend="torch")
    try:
        assert type(fi.runner.attn).__name__ == "FlashInferAttention"
        for p in PROMPTS:
            a = await fi.generate(p, max_tokens=16, temperature=0, logprobs=True, ignore_eos=True)
            b = await tb.generate(p, max_tokens=16, temperature=0, logprobs=True, ignore_eos=True)
            assert a.token_ids[:4] == b.token_ids[:4]
            assert a.logprobs[0] == pytest.approx(b.logprobs[0], abs=0.05)
        # a mixed batch with shared prefixes and decodes through the paged wrapper
        import asyncio

        rs = await asyncio.gather(*(fi.generate(PROMPTS[0] + f" {i}", max_tokens=8, temperature=0) for i in range(16)))
        assert all(r.usage.completion_tokens > 0 for r in rs)
    finally:
        await fi.aclose()
        await tb.aclose()
