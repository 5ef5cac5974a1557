"""The llguidance backend: which constraints go to it, what it enforces, what it leaves to the check after,
closed objects, and Lark/GBNF grammars through gen(grammar=...), the primitives and the server's fields."""

import json
import re

import jsonschema
import pytest
import torch

import sgagent
from sgagent.engine.constrained import GrammarState, SchemaViolationError, apply_masks
from sgagent.engine.constrained.grammar import CompiledGrammar
from sgagent.errors import InvalidGrammarError, UnsupportedSchemaError

SQL = r"""
start: "SELECT " cols " FROM " NAME where? ";"
cols: NAME (", " NAME)*
where: " WHERE " NAME " = " NUMBER
NAME: /[a-z_]+/
NUMBER: /[0-9]+/
"""
SQL_RE = r"SELECT [a-z_]+(, [a-z_]+)* FROM [a-z_]+( WHERE [a-z_]+ = [0-9]+)?;"
GBNF = 'root ::= "answer: " ("yes" | "no")'


@pytest.fixture
def e(fresh):
    return fresh


async def compiled(e, spec):
    return (await e._compiler().constraint_for(spec))[0]


async def test_schemas_and_grammars_go_to_llguidance_regexes_and_choices_to_outlines(e):
    assert isinstance(await compiled(e, {"json_schema": {"type": "integer"}}), CompiledGrammar)
    assert isinstance(await compiled(e, {"grammar": SQL}), CompiledGrammar)
    assert not isinstance(await compiled(e, {"regex": "[0-9]+"}), CompiledGrammar)
    assert not isinstance(await compiled(e, {"choices": ["a", "b"]}), CompiledGrammar)
    s = e.stats()
    assert s["constraint_compiles_llguidance"] >= 2 and s["constraint_compiles_outlines"] >= 2
    # the outlines-only configuration keeps the old path for schemas
    old = e.with_config(constraint_backend="outlines")
    try:
        assert not isinstance(await compiled(old, {"json_schema": {"type": "integer"}}), CompiledGrammar)
        with pytest.raises(InvalidGrammarError, match="llguidance"):
            await old.generate("x", grammar=SQL, max_tokens=4)
    finally:
        await old.aclose()


async def test_bounds_formats_and_closed_objects_are_enforced_token_by_token(e):
    tok = e.tokenizer
    ints = await compiled(e, {"json_schema": {"type": "integer", "minimum": 3, "maximum": 7}})
    assert [ints.accepts(tok.encode(t, add_special_tokens=False)) for t in ("5", "3", "7", "9", "2", "-5")] == \
        [True, True, True, False, False, False]
    date = await compiled(e, {"json_schema": {"type": "string", "format": "date"}})
    assert date.accepts(tok.encode('"2026-12-04"', add_special_tokens=False))
    assert not date.accepts(tok.encode('"yesterday"', add_special_tokens=False))
    obj = {"type": "object", "properties": {"a": {"type": "integer"}}}
    closed = await compiled(e, {"json_schema": obj})
    assert closed.accepts(tok.encode('{"a":1}', add_special_tokens=False))
    assert not closed.accepts(tok.encode('{"a":1,"b":2}', add_special_tokens=False))
    open_ = e.with_config(constraint_closed_objects=False)
    try:
        assert (await compiled(open_, {"json_schema": obj})).accepts(tok.encode('{"a":1,"b":2}', add_special_tokens=False))
    finally:
        await open_.aclose()


async def test_what_llguidance_cannot_enforce_is_checked_after_or_refused_by_name(e):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "uniqueItems": True}}, "required": ["tags"]}
    before = e.stats()["constraint_validated_after"]
    r = await e.generate("Tags as JSON: ", json_schema=schema, max_tokens=40, temperature=0)
    jsonschema.validate(r.parsed, schema)
    assert e.stats()["constraint_validated_after"] == before + 1
    strict = e.with_config(constraint_unenforced="refuse")
    try:
        with pytest.raises(UnsupportedSchemaError, match=r"'uniqueItems' at /properties/tags/uniqueItems"):
            await strict.generate("x", json_schema=schema, max_tokens=4)
        with pytest.raises(UnsupportedSchemaError, match=r"'not' at /properties/a/not"):
            await strict.generate("x", json_schema={"type": "object", "properties": {"a": {"not": {"type": "string"}}}})
    finally:
        await strict.aclose()


async def test_property_counts_on_optional_keys_are_checked_after_not_by_a_wrong_grammar(e):
    # llguidance's lenient compile of such counts drops the listed properties: {"a": true} was refused
    schema = {"type": "object", "minProperties": 1, "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}},
              "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}}
    c = await compiled(e, {"json_schema": schema})
    assert c.unenforced and "min/maxProperties" in c.unenforced[0]
    for ok in ['{"a":true}', '{"b":false}', '{"a":false,"b":true,"c":3}', '{"c":3}']:
        assert c.accepts(c.vocab.encode(ok)), ok
    assert not c.accepts(c.vocab.encode('{"c":"x"}'))
    # the count is the check after's: an output of fewer keys is refused, never returned
    with pytest.raises(SchemaViolationError, match="minProperties|fewer properties|does not have enough"):
        await e.generate('The object {"a": true} in compact JSON: ', json_schema={**schema, "minProperties": 6},
                         max_tokens=40, temperature=0)


async def test_grammar_mask_is_the_set_of_tokens_the_parser_takes(e):
    state = await e._constraint_state({"grammar": SQL})
    assert isinstance(state, GrammarState)
    assert state.start(room=8)  # "SELECT " is forced before anything is sampled
    logits = torch.zeros(2, e.model_config.vocab_size)
    apply_masks(logits, [state, None])
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert 0 < len(allowed) < e.model_config.vocab_size and torch.isfinite(logits[1]).all()
    for t in allowed[:50]:
        m = state.m.deep_copy()
        assert m.consume_token(t)
    refused = [t for t in range(e.model_config.vocab_size) if t not in set(allowed)][:50]
    for t in refused:
        assert not state.m.deep_copy().consume_token(t)


async def test_gen_with_a_lark_or_gbnf_grammar(e):
    msgs = [{"role": "user", "content": "Write an SQL query that lists the names of users with id 3."}]
    r = await e.generate(messages=msgs, grammar=SQL, max_tokens=40, temperature=0)
    assert re.fullmatch(SQL_RE, r.text), r.text
    r = await e.generate("Is the sky blue? ", grammar=GBNF, max_tokens=8, temperature=0.8, seed=3)
    assert r.text in ("answer: yes", "answer: no")
    with pytest.raises(InvalidGrammarError):
        await e.generate("x", grammar="start: undefined_rule", max_tokens=4)
    with pytest.raises(InvalidGrammarError):
        await e.generate("x", grammar="   ", max_tokens=4)


async def test_a_program_generates_under_a_grammar(e):
    @sgagent.program
    async def query(s):
        s += sgagent.user("Write an SQL query selecting the name of every city.")
        async with s.assistant():
            await s.gen("sql", grammar=SQL, max_tokens=40, temperature=0)

    st = await query.run(engine=e)
    assert re.fullmatch(SQL_RE, st["sql"]), st["sql"]
