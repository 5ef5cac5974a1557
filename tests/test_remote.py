"""Programs on a remote OpenAI-compatible endpoint: equal to the embedded engine, retried, typed errors.
Several replicas behind SGLang's router: tests/test_router.py."""

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

import sgagent
from sgagent.errors import ConstraintError, InvalidPromptError, RemoteError
from sgagent.remote import RemoteEngine
from sgagent.remote.replica import Replica

from recipes import few_shot_qa, json_extraction, judge, skeleton_of_thought
from sgagent.server import free_port, start


@pytest.fixture(scope="module")
async def server(engine):
    """A server over an engine of its own on the session's weights."""
    e = engine.with_config(kv_cache_bytes=256 << 20)
    srv = await start(e, model="smol")
    yield srv
    await srv.stop()
    await e.aclose()


@pytest.fixture(scope="module")
async def remote_engine(server):
    r = RemoteEngine(server.url)  # loading the tokenizer takes seconds: once per module
    yield r
    await r.aclose()


@pytest.fixture
def remote(remote_engine):
    served, dialect = remote_engine.served_model, remote_engine.dialect
    yield remote_engine
    remote_engine.served_model, remote_engine.dialect = served, dialect


async def run_recipes(backend):
    """A fork/join program with select, a JSON-schema program, a regex program and a select program."""
    judged = await judge.judged.run(engine=backend, question="Why is the sky blue?", criteria=judge.CRITERIA[:2])
    person = await json_extraction.extract.run(engine=backend, doc="Tom Becker is a 52 year old teacher in Hamburg.")
    sot = await skeleton_of_thought.answer.run(engine=backend, question="How to learn the piano?", points=2)
    q, o, _ = few_shot_qa.QUESTIONS[1]
    picked = await few_shot_qa.answer.run(engine=backend, question=q, options=o)
    return (judged["answer"], judged.return_value, person.return_value, sot.return_value, picked.return_value,
            picked.info["answer"]["scores"])


async def test_recipes_give_equal_greedy_results_embedded_and_remote(engine, remote):
    here = await run_recipes(engine)
    there = await run_recipes(remote)
    assert there[:5] == here[:5]
    assert there[5] == pytest.approx(here[5], abs=1e-3)
    assert remote.stats()["finished"] > 0 and remote.dialect == "sglang"


async def test_streaming_and_usage_through_the_remote_backend(engine, remote):
    result = []
    pieces = [p async for p in remote.stream("Once upon a time", max_tokens=12, temperature=0, result=result)]
    ref = await engine.generate("Once upon a time", max_tokens=12, temperature=0)
    assert "".join(pieces) == ref.text == result[0].text
    assert result[0].usage.completion_tokens == ref.usage.completion_tokens


def test_one_endpoint_several_replicas_go_behind_sglang_router():
    with pytest.raises(ValueError, match="sglang-router"):
        RemoteEngine(["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])


async def test_retries_5xx_and_connection_errors_then_fails_typed():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json={"ok": True})

    r = Replica("http://test/v1", transport=httpx.MockTransport(handler), backoff=0.001)
    assert await r.post("/completions", {}) == {"ok": True} and len(calls) == 3
    await r.aclose()

    def bad(request):
        calls.append("bad")
        return httpx.Response(400, json={"error": {"message": "regex is invalid", "param": "regex"}})

    r = Replica("http://test/v1", transport=httpx.MockTransport(bad), backoff=0.001)
    n = len(calls)
    with pytest.raises(ConstraintError):
        await r.post("/completions", {})
    assert len(calls) == n + 1  # a 4xx is the request's fault: not retried
    await r.aclose()

    r = Replica(f"http://127.0.0.1:{free_port()}/v1", retries=2, backoff=0.001)  # nothing listens there
    with pytest.raises(RemoteError):
        await r.post("/completions", {})
    await r.aclose()


async def test_constraints_go_over_the_wire_in_each_dialect(remote):
    remote.served_model = "smol"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for dialect, field in (("sglang", "json_schema"), ("vllm", "structured_outputs"), ("vllm_guided", "guided_json")):
        remote.dialect = dialect
        body, finish = remote._constraint({"json_schema": schema})
        assert field in body and finish('{"a": 1}') == {"a": 1}
    remote.dialect = "vllm"
    assert remote._constraint({"choices": ["x", "y"]})[0] == {"structured_outputs": {"choice": ["x", "y"]}}
    assert remote._constraint({"regex": "a+"})[0] == {"structured_outputs": {"regex": "a+"}}
    assert remote._constraint({"json_schema": schema})[0] == {"structured_outputs": {"json": schema}}
    remote.dialect = "vllm_guided"
    assert remote._constraint({"choices": ["x", "y"]})[0] == {"guided_choice": ["x", "y"]}
    assert remote._constraint({"regex": "a+"})[0] == {"guided_regex": "a+"}
    remote.dialect = "sglang"
    assert remote._constraint({"choices": ["x", "y"]})[0] == {"regex": "(x|y)"}
    remote.dialect = "plain"
    with pytest.raises(ConstraintError, match="takes no regex"):
        remote._constraint({"regex": "a+"})
    with pytest.raises(InvalidPromptError):
        await remote.generate("hi", max_tokens=2, stop_token_ids=[5])


async def test_remote_errors_are_typed(remote):
    with pytest.raises(sgagent.errors.PromptTooLongError):
        await remote.generate("word " * 9000, max_tokens=2)
    with pytest.raises(ConstraintError):
        await remote.generate("x", regex="(unclosed", max_tokens=2)


def _llama_server_available() -> bool:
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _llama_server_available(), reason="llama-cpp-python[server] (the bench extra) not installed")
async def test_a_program_runs_on_llama_cpps_own_server(engine):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", engine.model_path, "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        async with httpx.AsyncClient() as h:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await h.get(url + "/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "llama.cpp server did not start"
                await asyncio.sleep(0.5)
        async with RemoteEngine(url) as r:
            st = await judge.judged.run(engine=r, question="Why is the sky blue?", criteria=["clarity"])
            assert r.dialect == "plain" and st["answer"] and st.return_value["clarity"] in range(1, 6)
            with pytest.raises(ConstraintError):
                await r.generate("x", regex="a+", max_tokens=2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
