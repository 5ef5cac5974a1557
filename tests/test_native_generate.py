"""SGLang's native /generate on `sgagent serve`: what sglang-router forwards to a worker."""

import httpx
import pytest

from sgagent.server import start


@pytest.fixture(scope="module")
async def root(engine):
    e = engine.with_config(kv_cache_bytes=128 << 20)
    srv = await start(e, model="smol")
    yield srv.url[: -len("/v1")]
    await srv.stop()
    await e.aclose()


async def test_generate_greedy_equals_the_engine_with_logprobs(root, engine):
    prompt = "The capital of France is"
    ref = await engine.generate(prompt, max_tokens=6, temperature=0)
    async with httpx.AsyncClient(timeout=300) as h:
        r = await h.post(root + "/generate", json={
            "input_ids": engine.tokenize(prompt), "return_logprob": True, "top_logprobs_num": 2,
            "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == ref.text
    meta = body["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 6}
    assert [t[1] for t in meta["output_token_logprobs"]] == body["output_ids"]
    assert all(len(row) == 2 for row in meta["output_top_logprobs"])


async def test_batch_bad_constraint_and_unsupported_penalty_are_400(root):
    async with httpx.AsyncClient(timeout=300) as h:
        r = await h.post(root + "/generate", json={
            "text": ["Hello", "One two"], "sampling_params": {"max_new_tokens": 3, "temperature": 0}})
        assert r.status_code == 200 and len(r.json()) == 2
        r = await h.post(root + "/generate", json={"text": "x", "sampling_params": {"regex": "(unclosed"}})
        assert r.status_code == 400
        r = await h.post(root + "/generate", json={"text": "x", "sampling_params": {"frequency_penalty": 1.0}})
        assert r.status_code == 400
        assert (await h.get(root + "/model_info")).json()["is_generation"] is True
        assert (await h.post(root + "/flush_cache")).status_code == 200
