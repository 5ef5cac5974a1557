"""Constrained decoding on the default model: regex, choices, JSON schema, jump-forward, errors, cache."""

import asyncio
import json
import re

import jsonschema
import pytest
import torch
from pydantic import BaseModel

from sgagent.engine.constrained import apply_masks
from sgagent.errors import (
    ConstraintError,
    IncompleteGenerationError,
    InvalidRegexError,
    UnsupportedSchemaError,
)
from conftest import settle


class Person(BaseModel):
    name: str
    age: int
    city: str


DOC = "Extract the person: Maria Lopez, 34 years old, lives in Madrid. Answer in JSON."


@pytest.fixture
def e(fresh):
    return fresh


async def test_vocabulary_maps_tokens_to_their_bytes(e):
    await e.generate("x", choices=["a"])  # builds the compiler
    v = e._compiler().vocab
    tok = e.tokenizer
    for text in [" hello", "naïve café", "\n\n", "{\"a\": 1}", "日本語"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(v.token_bytes[i] for i in ids) == text.encode()
    assert all(i not in v.token_bytes for i in tok.all_special_ids)
    assert v.eos_id == tok.eos_token_id and len(v.byte_token) > 200


@pytest.mark.parametrize("regex", [r"\(\d{3}\) \d{3}-\d{4}", r"(19|20)\d\d-(0[1-9]|1[0-2])-[0-2]\d",
                                   r"[a-z]{3,8}@[a-z]{3,6}\.(com|org)", r"\[(\d{1,3}, ){2}\d{1,3}\]", r"(yes|no|maybe)"])
async def test_regex_outputs_fully_match(e, regex):
    rs = await asyncio.gather(*(e.generate("Write it: ", regex=regex, max_tokens=40, temperature=0.9, seed=s)
                                for s in range(4)))
    for r in rs:
        assert re.fullmatch(regex, r.text), r.text


async def test_choices(e):
    choices = ["positive", "negative", "neutral"]
    for text in ["I love this phone!", "This is the worst day."]:
        r = await e.generate(messages=[{"role": "user", "content": f"Sentiment of: {text}"}], choices=choices,
                             temperature=0)
        assert r.text in choices and r.parsed == r.text


async def test_json_schema_as_pydantic_dict_and_string(e):
    msgs = [{"role": "user", "content": DOC}]
    r = await e.generate(messages=msgs, json_schema=Person, max_tokens=64, temperature=0)
    assert isinstance(r.parsed, Person) and r.parsed.age == 34
    schema = Person.model_json_schema()
    for form in (schema, json.dumps(schema)):
        r2 = await e.generate(messages=msgs, json_schema=form, max_tokens=64, temperature=0.7, seed=3)
        jsonschema.validate(r2.parsed, schema)
        assert r2.parsed == json.loads(r2.text)


async def test_jump_forward_saves_decode_steps_and_stays_valid(e):
    msgs = [{"role": "user", "content": DOC}]
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
        "country": {"type": "string", "enum": ["Spain", "France", "Other"]}, "employed": {"type": "boolean"}},
        "required": ["name", "age", "city", "country", "employed"]}
    on = await e.generate(messages=msgs, json_schema=schema, max_tokens=80, temperature=0)
    off_engine = e.with_config(jump_forward=False, kv_cache_bytes=32 << 20)
    try:
        off = await off_engine.generate(messages=msgs, json_schema=schema, max_tokens=80, temperature=0)
    finally:
        await off_engine.aclose()
    for r in (on, off):
        jsonschema.validate(json.loads(r.text), schema)
    assert on.decode_steps * 1.5 <= off.decode_steps, (on.decode_steps, off.decode_steps)
    assert e.stats()["jump_forward_tokens"] > 0


async def test_typed_errors_at_the_call(e):
    with pytest.raises(InvalidRegexError, match="unterminated|missing"):
        await e.generate("x", regex="(ab", max_tokens=4)
    with pytest.raises(UnsupportedSchemaError):
        await e.generate("x", json_schema={"type": 5})
    with pytest.raises(UnsupportedSchemaError):
        await e.generate("x", json_schema="{not json")
    with pytest.raises(ConstraintError):
        await e.generate("x", regex="a", choices=["a"])
    with pytest.raises(IncompleteGenerationError) as info:
        await e.generate(messages=[{"role": "user", "content": DOC}], json_schema=Person, max_tokens=4)
    assert info.value.text.startswith("{")
    await settle(e)


async def test_compiled_indexes_are_cached_and_shared(e):
    schema = {"type": "object", "properties": {"k": {"enum": ["low", "high", "cached-test"]}}, "required": ["k"]}
    before = e.stats()
    await asyncio.gather(*(e.generate(f"Value {i}: ", json_schema=schema, max_tokens=12, temperature=0)
                           for i in range(6)))
    s = e.stats()
    assert s["constraint_compiles"] - before.get("constraint_compiles", 0) == 1
    assert s["constraint_cache_hits"] - before.get("constraint_cache_hits", 0) >= 5
    assert s["constraint_compile_seconds"] > 0
    # an engine made with with_config (same weights and tokenizer) uses the same compiled index
    other = e.with_config(radix_cache=False)
    try:
        await other.generate("Value: ", json_schema=schema, max_tokens=12, temperature=0)
        assert other.stats()["constraint_compiles"] == s["constraint_compiles"]
    finally:
        await other.aclose()
    # different constraint settings (here the time limit) get a compiler of their own
    own = e.with_config(constraint_compile_timeout=5.0)
    try:
        await own.generate("Value: ", json_schema=schema, max_tokens=12, temperature=0)
        assert own.stats()["constraint_compiles"] == 1
    finally:
        await own.aclose()


async def test_batch_mask_equals_fsm_allowed_set(e):
    c1 = await e._constraint_state({"regex": r"[0-9]{2}"})
    c2 = await e._constraint_state({"choices": ["alpha", "beta"]})
    logits = torch.zeros(3, e.model_config.vocab_size)
    apply_masks(logits, [c1, None, c2])
    for row, c in ((0, c1), (2, c2)):
        allowed = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert allowed == set(c.guide.get_tokens())
    assert torch.isfinite(logits[1]).all()


async def test_constraint_cancellation_leaves_nothing(e):
    # a fixed length cannot end early: the cancel lands while it decodes (the index may already be cached)
    t = asyncio.create_task(e.generate("List: ", regex=r"[a-z]{300}", max_tokens=300))
    while e.stats()["decode_tokens"] < 2:
        await asyncio.sleep(0.05)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    await settle(e)


async def test_ignore_eos_under_a_constraint_ends_where_the_constraint_ends(e):
    r = await e.generate("Pick: ", choices=["yes", "no"], ignore_eos=True, max_tokens=8, temperature=0)
    assert r.text in ("yes", "no")
    r = await e.generate("List: ", regex=r"(item, )+item", ignore_eos=True, max_tokens=40, temperature=0)
    assert re.fullmatch(r"(item, )+item", r.text)
