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


_OPEN = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "$ref",
         "if", "dependentSchemas", "dependencies")


def close_objects(schema):
    """A copy of schema where an object that lists its properties and says nothing of others takes no others.

    JSON Schema allows unlisted keys there, and a small model given the choice goes on inventing them; the
    engine emits the listed ones only, as outlines-core and XGrammar's strict mode do. Left open: objects whose
    keys other keywords may extend (composition, $ref, pattern properties), that require a key they do not
    list, and members of an allOf (directly, through a $ref, or as the branches of one), which would then refuse
    each other's keys.
    Outputs are still validated against the original schema.
    """
    return _close(schema, False, _all_of_refs(schema, set()), "#")


def _all_of_refs(node, found: set) -> set:
    if isinstance(node, dict):
        keys = ("allOf", "anyOf", "oneOf") if "properties" in node else ("allOf",)
        for member in (m for k in keys if isinstance(node.get(k), list) for m in node[k]):
            if isinstance(member, dict) and isinstance(member.get("$ref"), str):
                found.add(member["$ref"])
        for v in node.values():
            _all_of_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _all_of_refs(v, found)
    return found


def _close(schema, inside_all_of: bool, shared: set, path: str):
    if isinstance(schema, list):
        return [_close(s, inside_all_of, shared, f"{path}/{i}") for i, s in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas") and isinstance(value, dict):
            out[key] = {name: _close(s, f"{path}/{key}/{name}" in shared, shared, f"{path}/{key}/{name}")
                        for name, s in value.items()}
        elif key in ("enum", "const", "default", "examples", "required"):
            out[key] = value
        else:
            # a branch of a combined object sees its siblings' keys too: left open like an allOf member
            combined = key == "allOf" or (key in ("anyOf", "oneOf", "then", "else", "not")
                                          and (inside_all_of or "properties" in schema))
            out[key] = _close(value, combined, shared, f"{path}/{key}")
    props = out.get("properties")
    if (isinstance(props, dict) and not inside_all_of and not any(k in out for k in _OPEN)
            and set(out.get("required") or []) <= set(props)):
        out["additionalProperties"] = False
    return out


_DATA = ("enum", "const", "default", "examples", "required")
_COUNTS = ("minProperties", "maxProperties")


def drop_property_counts(schema):
    """A copy of schema without minProperties/maxProperties on open objects that list a property they do not
    require.

    llguidance (1.9) enforces those counts only on closed objects or where every listed property is required;
    compiled leniently it
    does not leave them unchecked but drops the object's listed properties, refusing valid instances such as
    `{"a": true}` for `{"properties": {"a": ...}, "minProperties": 1}`. Without the counts the grammar accepts
    a superset, and the validation of the finished output against the original schema checks them.
    """
    if isinstance(schema, list):
        return [drop_property_counts(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _MAP + ("dependentSchemas",) and isinstance(value, dict):
            out[key] = {name: drop_property_counts(s) for name, s in value.items()}
        else:
            out[key] = value if key in _DATA else drop_property_counts(value)
    props = out.get("properties")
    if (isinstance(props, dict) and not set(props) <= set(out.get("required") or [])
            and out.get("additionalProperties", True) is not False):
        for key in _COUNTS:
            out.pop(key, None)
    return out
