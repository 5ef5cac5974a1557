"""Session fixtures: the default model is loaded once; other engines share its weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio
import torch

import sgagent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on CI's two cores: one intra-op thread each, or they oversubscribe
    torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest_asyncio.fixture(scope="session")
async def engine():
    # float32 on every machine: exactness against transformers is checked in float32 (auto may pick bfloat16)
    e = sgagent.Engine(kv_cache_bytes=256 << 20, dtype="float32")
    yield e
    await e.aclose()


@pytest_asyncio.fixture(scope="module")
async def bf16():
    """A bfloat16 engine per module (the dtype auto picks on CPUs with native bf16), with its own weights."""
    e = sgagent.Engine(kv_cache_bytes=32 << 20, dtype="bfloat16")
    yield e
    await e.aclose()


@pytest_asyncio.fixture
async def fresh(engine):
    """An engine of its own (empty cache, own counters) on the session's weights."""
    e = engine.with_config(kv_cache_bytes=96 << 20)
    yield e
    await e.aclose()


@pytest.fixture(scope="session")
def hf_model(engine):
    """transformers' own reading of the same GGUF: an independent dequantization and forward."""
    from transformers import AutoModelForCausalLM

    p = Path(engine.model_path)
    m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return m.eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding with transformers' own forward and cache, never stopping early."""
    out, past, x = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]])
    return out


def hf_logprobs(model, prompt: list[int], continuation: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0].float()
    lp = logits.log_softmax(-1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)]


async def settle(e: sgagent.Engine, timeout: float = 30.0) -> None:
    """Wait until cancelled work has drained (a step in flight finishes first), then check for leaks."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while (e.scheduler.running or e.scheduler.waiting or e._in_flight) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert_quiescent(e)


def assert_quiescent(e: sgagent.Engine) -> None:
    """No request alive, no lock held, every page free or owned by the radix tree."""
    s = e.stats()
    assert s["running"] == 0 and s["waiting"] == 0, s
    assert s["pages_locked"] == 0, s
    assert s["pages_used"] == 0, s
    assert s["pages_free"] + s["pages_cached"] == s["pages_total"], s
    tree = e.scheduler.tree
    if tree is not None:
        assert all(n.lock_ref == 0 for n in tree._nodes())


TINY = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", use_sliding_window=False, head_dim=32),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, engine):
    """Random-weight models of each architecture, saved as HF folders with the default tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for name, extra in TINY.items():
        d = tmp_path_factory.mktemp(f"tiny-{name}")
        kw = dict(extra)
        mt = kw.pop("model_type")
        cfg = AutoConfig.for_model(
            mt, vocab_size=len(engine.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            eos_token_id=engine.tokenizer.eos_token_id, tie_word_embeddings=False, **kw,
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        with torch.no_grad():  # larger weights than the init gives: sharper, more varied greedy paths
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.2)
        model.save_pretrained(d)
        engine.tokenizer.save_pretrained(d)
        out[name] = (d, model.eval())
    return out
