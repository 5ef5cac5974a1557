"""Programs on remote OpenAI-compatible endpoints: equal to the embedded engine, routed, retried."""

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

import sgagent
from sgagent.errors import ConstraintError, InvalidPromptError, RemoteError
from sgagent.remote import RemoteEngine, Router
from sgagent.remote.replica import Replica

from recipes import few_shot_qa, json_extraction, judge, skeleton_of_thought
from sgagent.server import free_port, start


@pytest.fixture(scope="module")
async def replicas(engine):
    """Two servers (replicas) over one engine of their own on the session's weights."""
    e = engine.with_config(kv_cache_bytes=256 << 20)
    servers = [await start(e, model="smol") for _ in range(2)]
    yield servers
    for s in servers:
        await s.stop()
    await e.aclose()


@pytest.fixture(scope="module")
async def remote_engine(replicas):
    r = RemoteEngine([s.url for s in replicas])  # loading the tokenizer takes seconds: once per module
    yield r
    await r.aclose()


@pytest.fixture
def remote(remote_engine):
    served, dialect = remote_engine.served_model, remote_engine.dialect
    yield remote_engine
    remote_engine.router.__dict__.pop("pick", None)  # a test may spy on the routing
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


async def test_a_programs_requests_stick_to_one_replica_and_programs_spread(replicas, remote):
    seen = []
    real_pick = remote.router.pick

    def spy(key=None):
        replica = real_pick(key)
        seen.append((sgagent_program(), replica.base_url))
        return replica

    def sgagent_program():
        import structlog

        return structlog.contextvars.get_contextvars().get("program_id")

    remote.router.pick = spy
    states = await sgagent.run_batch(judge.judged, [{"question": f"Why is {x} useful?", "criteria": ["clarity", "concision"]}
                                                    for x in ("rain", "sleep", "salt", "music")],
                                     engine=remote, progress=False)
    assert all(st.return_value for st in states)
    by_program = {}
    for pid, url in seen:
        by_program.setdefault(pid, set()).add(url)
    assert len(by_program) == 4 and all(len(urls) == 1 for urls in by_program.values())
    assert len({url for urls in by_program.values() for url in urls}) == 2  # programs spread over replicas


def test_router_least_loaded_and_sticky():
    class R:
        def __init__(self, n):
            self.in_flight = n

    a, b = R(3), R(1)
    router = Router([a, b])
    assert router.pick() is b  # no program: least loaded
    assert router.pick("p1") is b
    b.in_flight = 10
    assert router.pick("p1") is b  # sticky despite load: its prefix is cached there
    assert router.pick("p2") is a


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
    for dialect, field in (("sglang", "json_schema"), ("vllm", "guided_json")):
        remote.dialect = dialect
        body, finish = remote._constraint({"json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
        assert field in body and finish('{"a": 1}') == {"a": 1}
    remote.dialect = "vllm"
    assert remote._constraint({"choices": ["x", "y"]})[0] == {"guided_choice": ["x", "y"]}
    assert remote._constraint({"regex": "a+"})[0] == {"guided_regex": "a+"}
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
