"""The OpenAI-compatible server, driven by the official `openai` client as a real client would."""

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from sgagent import cli

from conftest import settle
from sgagent.server import start

MODEL = "smol"


@pytest.fixture(scope="module")
async def live(engine):
    e = engine.with_config(kv_cache_bytes=256 << 20)
    srv = await start(e, model=MODEL, max_body_bytes=1 << 20)
    yield srv
    await srv.stop()
    await e.aclose()


@pytest.fixture
async def client(live):
    c = openai.AsyncOpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=600)
    yield c
    await c.close()


async def test_models_health_and_metrics(live, client):
    assert [m.id for m in (await client.models.list()).data] == [MODEL]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{live.port}") as h:
        assert (await h.get("/health")).json() == {"status": "ok"}
        await client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
        text = (await h.get("/metrics")).text
    for name in ("sgagent_requests_total", "sgagent_completion_tokens_total", "sgagent_cache_hit_rate",
                 "sgagent_waiting"):
        assert name in text
    assert 'sgagent_requests_total{endpoint="completions"}' in text


async def test_chat_completion_equals_the_engine_with_usage_and_logprobs(live, client, engine):
    messages = [{"role": "user", "content": "Name three colors."}]
    r = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                             logprobs=True)
    ref = await engine.generate(messages=messages, max_tokens=16, temperature=0)
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == ref.usage.prompt_tokens
    assert r.usage.completion_tokens == ref.usage.completion_tokens == len(choice.logprobs.content)
    assert all(t.logprob <= 0 for t in choice.logprobs.content)



async def test_top_logprobs_on_chat_and_completions_are_the_engines(client, engine):
    messages = [{"role": "user", "content": "Name a fruit."}]
    r = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                             logprobs=True, top_logprobs=3)
    ref = await engine.generate(messages=messages, max_tokens=6, temperature=0, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == len(ref.token_ids)
    for entry, alts in zip(content, ref.top_logprobs):
        assert [a.token for a in entry.top_logprobs] == [engine.tokenizer.decode([t]) for t, _ in alts]
        assert [a.logprob for a in entry.top_logprobs] == pytest.approx([v for _, v in alts], abs=1e-5)
        assert entry.token == entry.top_logprobs[0].token  # greedy
    r = await client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.tokens) == 4
    for tok, chosen, alts in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(alts) <= 2 and alts[tok] == pytest.approx(chosen) and chosen == max(alts.values())
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, top_logprobs=2)

async def test_streaming_chat_matches_the_whole_answer(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=20,
              temperature=0)
    whole = (await client.chat.completions.create(**kw)).choices[0].message.content
    pieces, reasons, usage = [], [], None
    async for chunk in await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(pieces) == whole
    assert reasons[-1] in ("stop", "length") and reasons.count(None) == len(reasons) - 1
    assert usage is not None and usage.completion_tokens > 0


async def test_structured_output_json_schema_and_json_object(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tom is 52 and lives in Hamburg. Give his name and age."}],
        max_tokens=60, temperature=0, response_format={"type": "json_schema",
                                                       "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Reply with a JSON object about a cat."}], max_tokens=48,
        temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: reported as such, never passed off as complete
        assert r.choices[0].finish_reason == "length"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}


async def test_tool_calls_are_constrained_by_the_tools_schemas(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME],
                                             tool_choice="required", max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    specs = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for call in choice.message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), specs[call.function.name])
    # a named tool_choice forces that tool
    r = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], max_tokens=80,
                                             tool_choice={"type": "function", "function": {"name": "get_time"}},
                                             temperature=0)
    assert {c.function.name for c in r.choices[0].message.tool_calls} == {"get_time"}
    # the call and its result go back in; "auto" may answer or call again, either way well-formed
    call = choice.message.tool_calls[0]
    follow = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18, "sky": "clear"}'}]
    r = await client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER, TIME], max_tokens=80,
                                             temperature=0)
    c = r.choices[0]
    assert (c.finish_reason == "tool_calls" and c.message.tool_calls) or isinstance(c.message.content, str)


async def test_n_branches_share_the_prompt_kv(live, client):
    before = live.engine.stats()
    prompt = "Write a short poem about the sea, the wind and the stars above the quiet harbour at night."
    r = await client.completions.create(model=MODEL, prompt=prompt, n=4, max_tokens=8, temperature=0.9, seed=7)
    after = live.engine.stats()
    assert len(r.choices) == 4 and len({c.text for c in r.choices}) > 1  # seeded branches differ
    prompt_len = r.usage.prompt_tokens
    assert after["prefill_tokens"] - before["prefill_tokens"] < 2 * prompt_len  # computed once, not 4 times


async def test_completions_regex_choice_and_echo_logprobs(client, engine):
    r = await client.completions.create(model=MODEL, prompt="Phone: ", max_tokens=20, temperature=0,
                                        extra_body={"regex": r"\d{3}-\d{4}"})
    assert __import__("re").fullmatch(r"\d{3}-\d{4}", r.choices[0].text)
    r = await client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0,
                                        extra_body={"guided_choice": [" blue", " green"]})
    assert r.choices[0].text in (" blue", " green")
    # grammars by SGLang's field (GBNF) and vLLM's (Lark)
    r = await client.completions.create(model=MODEL, prompt="Is it raining? ", max_tokens=8, temperature=0,
                                        extra_body={"ebnf": 'root ::= "answer: " ("yes" | "no")'})
    assert r.choices[0].text in ("answer: yes", "answer: no")
    r = await client.completions.create(model=MODEL, prompt="Count: ", max_tokens=12, temperature=0,
                                        extra_body={"guided_grammar": 'start: NUM ", " NUM ", " NUM\nNUM: /[0-9]/'})
    assert __import__("re").fullmatch(r"[0-9], [0-9], [0-9]", r.choices[0].text), r.choices[0].text
    prompt = "The capital of France is Paris"
    r = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lps = r.choices[0].logprobs.token_logprobs
    ids = engine.tokenizer.encode(prompt)
    assert r.choices[0].text == prompt and lps[0] is None and len(lps) == len(ids)
    (ref,) = await engine.score(ids[:-2], [engine.tokenizer.decode(ids[-2:])])
    assert lps[-2:] == pytest.approx(ref, abs=1e-3)


async def test_bad_requests_get_the_api_error_shape(live, client):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        await client.chat.completions.create(model="gpt-9", messages=msgs)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model=MODEL, prompt="x", extra_body={"regex": "(unclosed"})
    assert e.value.body["code"] == "invalid_constraint"
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model=MODEL, prompt="x", extra_body={"guided_grammar": "start: nowhere"})
    assert e.value.body["code"] == "invalid_constraint"
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 9000}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model=MODEL, messages=msgs, temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER],
                                             tool_choice={"type": "function", "function": {"name": "nope"}})
    async with httpx.AsyncClient(base_url=live.url) as h:
        r = await h.post("/completions", content=b"{" + b" " * (2 << 20) + b"}",
                         headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        r = await h.post("/completions", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()
    await settle(live.engine)


async def test_a_client_leaving_mid_stream_frees_its_request(live):
    e = live.engine
    before = e.stats()["aborted"]
    body = {"model": MODEL, "prompt": "Tell a very long story about a dragon.", "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as h:
        async with h.stream("POST", "/completions", json=body) as r:
            assert r.status_code == 200
            got = 0
            async for line in r.aiter_lines():
                got += line.startswith("data:")
                if got >= 3:
                    break  # leave: closing the response drops the connection
    await settle(e)
    assert e.stats()["aborted"] == before + 1


async def test_hundreds_of_concurrent_requests_none_lost(live):
    c = openai.AsyncOpenAI(base_url=live.url, api_key="unused", max_retries=0, timeout=600,
                           http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=300)))
    try:
        rs = await asyncio.gather(*(c.completions.create(model=MODEL, prompt=f"Item {i}: the number {i * 7} is",
                                                         max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
                                    for i in range(200)))
    finally:
        await c.close()
    assert len(rs) == 200 and all(r.usage.completion_tokens == 3 and r.choices[0].text for r in rs)
    await settle(live.engine)


def test_serve_binds_to_loopback_unless_told(monkeypatch):
    import inspect

    from sgagent.server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    seen = {}

    async def fake_serve(model, host, port, name, max_body, dtype, kv_mib, image_dir):
        seen.update(host=host, port=port, dtype=dtype, kv_mib=kv_mib)
        if image_dir is not None:
            seen["image_dir"] = image_dir

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert cli.main(["serve", "--port", "9123"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 9123, "dtype": "auto", "kv_mib": None}
    assert cli.main(["serve", "--dtype", "float32", "--kv-cache-mib", "64"]) == 0
    assert seen["dtype"] == "float32" and seen["kv_mib"] == 64
    assert cli.main(["serve", "--image-dir", "/srv/pictures"]) == 0 and seen["image_dir"] == "/srv/pictures"
