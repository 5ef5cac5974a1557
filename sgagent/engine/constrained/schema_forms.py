"""Rewrites of JSON-schema forms that outlines-core 0.2 turns into a wrong regex, into equivalent forms it handles.

An empty schema (`{}`, or only annotations) means "any JSON value". At the top level outlines-core gets it
right, but nested (a property's value, `additionalProperties: {}`) it emits the alternation of value types
without a group around it, so the `|` escapes the surrounding object: `{"a":{}}`-shaped schemas then refuse
`{"a":"x"}` and accept a bare `null`. The rewrite spells "any value" as an explicit anyOf, which it groups.
The original schema is still what outputs are validated against.
"""

from __future__ import annotations

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
               "$schema", "$id"}
ANY_VALUE = {"anyOf": [{"type": t} for t in ("string", "number", "boolean", "null", "array", "object")]}

_ONE = ("additionalProperties", "items", "not", "contains", "propertyNames", "if", "then", "else")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions")


def _is_any(schema) -> bool:
    return isinstance(schema, dict) and set(schema) <= ANNOTATIONS


def _sub(schema):
    if _is_any(schema):
        return dict(ANY_VALUE)
    return fix_schema_forms(schema)


def fix_schema_forms(schema):
    """A copy of schema with every nested any-value schema spelled as an explicit anyOf."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = True if key == "additionalProperties" and _is_any(out[key]) else _sub(out[key])
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [_sub(s) for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            # definitions are reached through $ref, a nested position
            out[key] = {name: _sub(s) for name, s in out[key].items()}
    return out
