"""Streaming structured output: partial values as tokens arrive, each a prefix-consistent view of the final value,
the last one validated; in the engine, in a program's stream_gen and through the server's openai parsing helper."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

import sgagent
from sgagent.engine.constrained.partial import PartialValues, is_prefix
from sgagent.server import start

from conftest import settle


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int
    coastal: bool
    districts: list[str] = Field(max_length=3)


DOCS = [
    {"a": 123, "b": [1.5, -2e3, True, None], "c": {"d": "hello \"world\"", "e": []}, "f": False},
    [{"x": "tru"}, "false", 0, {"y": [[1], [22, 333]]}],
    {"name": "Ñandú ✓", "n": -0.25, "nested": {"deeper": {"deepest": "z" * 30}}},
]


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("indent", [None, 2])
def test_every_prefix_of_a_document_gives_prefix_consistent_values(doc, indent):
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    pv, seen = PartialValues({"type": "object"}), []
    for i in range(1, len(text) + 1):
        v = pv.feed(text[:i])
        if v is not None:
            assert is_prefix(v, doc), (text[:i], v)
            seen.append(v)
    assert seen[-1] == doc  # the whole text gives the whole value
    assert len(seen) >= 5  # and values came out along the way, not only at the end


def test_model_values_hold_only_complete_fields():
    final = City(name="Porto", country="Portugal", population=231_800, coastal=True, districts=["Ribeira", "Foz"])
    text = final.model_dump_json()
    pv, seen = PartialValues(City), []
    for i in range(1, len(text) + 1):
        if (v := pv.feed(text[:i])) is not None:
            assert isinstance(v, City) and is_prefix(v, final)
            done = v.model_dump(exclude_unset=True)
            assert all(done[k] == getattr(final, k) for k in done)  # complete fields only, never a cut string
            seen.append(set(done))
    assert seen[0] == {"name"} and seen[-1] == {"name", "country", "population", "coastal"}  # the last waits


def test_is_prefix_refuses_what_is_not_one():
    assert not is_prefix({"a": 12}, {"a": 123})
    assert not is_prefix([1, 2], [1])
    assert not is_prefix({"a": "hex"}, {"a": "hello"})
    assert not is_prefix({"b": 1}, {"a": 1})
    assert not is_prefix(1, True) and not is_prefix(True, 1)


async def test_engine_stream_yields_partial_values_then_the_validated_one(engine):
    prompt = "Describe a coastal city as JSON with name, country, population, coastal and districts:\n"
    done = []
    values = [v async for v in engine.stream(prompt, json_schema=City, max_tokens=120, temperature=0, result=done)]
    final = values[-1]
    assert isinstance(final, City) and final == done[0].parsed  # validated: a City, not a construct
    assert len(values) >= 4
    for v in values[:-1]:
        assert is_prefix(v, final), (v, final)
    ref = await engine.generate(prompt, json_schema=City, max_tokens=120, temperature=0)
    assert ref.parsed == final and ref.text == done[0].text
    schema = City.model_json_schema()
    dicts = [v async for v in engine.stream(prompt, json_schema=schema, max_tokens=120, temperature=0)]
    assert dicts[-1] == final.model_dump() and all(is_prefix(v, dicts[-1]) for v in dicts)
    # text=True keeps the text stream (what the server sends)
    pieces = [p async for p in engine.stream(prompt, json_schema=City, max_tokens=120, temperature=0, text=True)]
    assert "".join(pieces) == ref.text


async def test_stream_gen_with_a_schema_sets_the_validated_value(engine):
    @sgagent.program
    async def city(s):
        s += "A coastal city as JSON:\n"
        seen = [v async for v in s.stream_gen("city", json_schema=City, max_tokens=120, temperature=0)]
        s += "\nDone."
        return seen

    st = await city.run(engine=engine)
    seen = st.return_value
    assert isinstance(st["city"], City) and seen[-1] == st["city"]
    assert all(is_prefix(v, st["city"]) for v in seen)
    body = st.text().split("A coastal city as JSON:\n", 1)[1]
    assert body.endswith("\nDone.") and City.model_validate_json(body[: -len("\nDone.")]) == st["city"]


async def test_cancelling_a_structured_stream_frees_the_request(engine):
    e = engine.with_config(kv_cache_bytes=32 << 20)
    try:
        stream = e.stream("A city as JSON:\n", json_schema=City, max_tokens=120, temperature=0)
        got = 0
        async for _ in stream:
            got += 1
            if got == 2:
                break
        await stream.aclose()
        await settle(e)
        assert got == 2
    finally:
        await e.aclose()


async def test_server_streams_json_text_and_the_openai_parse_helper_reads_it(engine):
    e = engine.with_config(kv_cache_bytes=64 << 20)
    srv = await start(e, model="smol")
    client = openai.AsyncOpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=600)
    try:
        messages = [{"role": "user", "content": "Describe Porto as a city record."}]
        async with client.chat.completions.stream(model="smol", messages=messages, response_format=City,
                                                  max_tokens=120, temperature=0) as s:
            deltas = [ev.delta async for ev in s if ev.type == "content.delta"]
            final = await s.get_final_completion()
        parsed = final.choices[0].message.parsed
        assert isinstance(parsed, City) and len(deltas) >= 4
        ref = await e.generate(messages=messages, json_schema=City, max_tokens=120, temperature=0)
        assert "".join(deltas) == ref.text and parsed == ref.parsed
    finally:
        await client.close()
        await srv.stop()
        await e.aclose()
