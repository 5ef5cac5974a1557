"""Schema forms outlines-core mishandles are rewritten into equivalents: checked on the regex we compile."""

import re

import pytest

from sgagent.engine.constrained.compiler import spec_to_regex
from sgagent.engine.constrained.schema_forms import fix_schema_forms


def regex_for(schema) -> str:
    return spec_to_regex({"json_schema": schema})[1]


@pytest.mark.parametrize("any_schema", [{}, {"description": "anything at all"}])
def test_a_nested_any_value_schema_takes_every_value_and_nothing_bare(any_schema):
    r = regex_for({"type": "object", "properties": {"a": any_schema}, "required": ["a"]})
    for ok in ['{"a":"x"}', '{"a":1}', '{"a":-2.5e+3}', '{"a":true}', '{"a":null}', '{"a":[1,"x"]}', '{"a":{"b":1}}']:
        assert re.fullmatch(r, ok), ok
    for bad in ["null", '"x"', "1", '{"a":}', '{"b":1}']:
        assert not re.fullmatch(r, bad), bad


def test_additional_properties_given_as_an_empty_schema_allows_any_keys():
    r = regex_for({"type": "object", "additionalProperties": {}})
    assert re.fullmatch(r, '{"custom_key":"custom_value"}')
    assert re.fullmatch(r, "{}")
    assert not re.fullmatch(r, "null")


def test_the_rewrite_reaches_definitions_items_and_combinators_and_leaves_the_rest_alone():
    schema = {"type": "object", "definitions": {"free": {}},
              "properties": {"xs": {"type": "array", "items": {}}, "u": {"anyOf": [{"type": "integer"}, {}]},
                             "n": {"type": "integer", "minimum": 1}}}
    fixed = fix_schema_forms(schema)
    assert "anyOf" in fixed["definitions"]["free"] and "anyOf" in fixed["properties"]["xs"]["items"]
    assert "anyOf" in fixed["properties"]["u"]["anyOf"][1]
    assert fixed["properties"]["n"] == {"type": "integer", "minimum": 1}
    assert schema["definitions"]["free"] == {}  # the caller's schema is not modified
