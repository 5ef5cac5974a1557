"""The llama.cpp baseline runs its model in a child process and computes there what llama.cpp computes here.

Needs llama-cpp-python (the bench extra, `make peers`); CI does not install it, as it compiles llama.cpp.
"""

import asyncio
import importlib.util
import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python (the bench extra) not installed")


@pytest.fixture(scope="module")
def llama_backend(engine):
    from bench.baselines import LlamaCppBackend

    backend = LlamaCppBackend(engine)
    yield backend
    backend.close()


def greedy_in_process(path: str, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        first = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        out = []
        for _ in range(n):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            out.append(int(logits.argmax()))
            llm.eval([out[-1]])
        return out, first
    finally:
        llm.close()


async def test_the_child_gives_llama_cpps_own_greedy_tokens_and_logits(engine, llama_backend):
    assert llama_backend.llm.proc.pid != os.getpid() and llama_backend.llm.proc.poll() is None
    prompt = "The three primary colors are"
    ids = engine.tokenize(prompt, add_generation_prompt=False)
    want, first = greedy_in_process(engine.model_path, ids, 12)
    r = await llama_backend.generate(prompt, max_tokens=12, temperature=0.0, ignore_eos=True)
    assert r.token_ids == want
    logits, _ = await asyncio.to_thread(llama_backend.llm.feed, ids)
    assert np.allclose(logits.numpy(), first, atol=1e-4)


async def test_the_child_reuses_the_common_prefix_and_scores_continuations(engine, llama_backend):
    llama_backend.reset()
    base = "Question: what is the capital of France?\nAnswer:"
    await llama_backend.generate(base, max_tokens=2, temperature=0.0)
    r = await llama_backend.generate(base + " Paris", max_tokens=2, temperature=0.0)
    assert r.usage.cached_tokens >= len(engine.tokenize(base, add_generation_prompt=False)) - 1
    scores = await llama_backend.score(base, [" Paris", " Berlin is"])
    assert [len(s) for s in scores] == [len(engine.tokenizer.encode(c, add_special_tokens=False))
                                        for c in (" Paris", " Berlin is")]
    assert all(lp < 0 for s in scores for lp in s)
    assert sum(scores[0]) > sum(scores[1])  # the model knows its capitals


async def test_a_dead_child_is_an_error_not_a_hang(engine):
    from bench.baselines import LlamaCppBackend

    backend = LlamaCppBackend(engine)
    backend.llm.proc.kill()
    backend.llm.proc.wait()
    with pytest.raises(RuntimeError, match="worker exited"):
        await asyncio.wait_for(backend.generate("Hello", max_tokens=2), timeout=60)
    backend.close()
