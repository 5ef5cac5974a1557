"""The JSON schema a tool-call step is constrained by: one call (or a list of calls) to one of the tools.

Each alternative fixes the tool's name with `const` and its arguments with that tool's own schema, so the FSM
lets the model pick a name and then only arguments that tool accepts. Tools' `$defs` are merged under
prefixed names so two tools may each have a model called `Item`.
"""

from __future__ import annotations

import copy

FINAL = "final_answer"


def _prefix_refs(node, prefix: str):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = "#/$defs/" + prefix + v[len("#/$defs/"):]
            else:
                out[k] = _prefix_refs(v, prefix)
        return out
    if isinstance(node, list):
        return [_prefix_refs(x, prefix) for x in node]
    return node


def call_alternative(name: str, parameters: dict, defs: dict) -> dict:
    params = copy.deepcopy(parameters)
    for k, v in params.pop("$defs", {}).items():
        defs[f"{name}__{k}"] = _prefix_refs(v, f"{name}__")
    params = _prefix_refs(params, f"{name}__")
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def final_answer_alternative() -> dict:
    return {"type": "object",
            "properties": {"name": {"const": FINAL},
                           "arguments": {"type": "object", "properties": {"answer": {"type": "string"}},
                                         "required": ["answer"], "additionalProperties": False}},
            "required": ["name", "arguments"], "additionalProperties": False}


def step_schema(tools, *, parallel: int = 1, allow_answer: bool = True, allow_calls: bool = True) -> dict:
    """One call `{"name", "arguments"}`, or with parallel > 1 a list of 1..parallel calls; or the final answer."""
    defs: dict = {}
    calls = [call_alternative(t.name, t.parameters, defs) for t in tools] if allow_calls else []
    options = []
    if calls:
        one = calls[0] if len(calls) == 1 else {"anyOf": calls}
        options.append(one if parallel <= 1 else {"type": "array", "items": one, "minItems": 1, "maxItems": parallel})
    if allow_answer:
        options.append(final_answer_alternative())
    if not options:
        raise ValueError("a step must allow tool calls, the final answer, or both")
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema
