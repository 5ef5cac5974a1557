"""Partial values of a JSON document still being generated, for streaming structured output.

Each value is a prefix-consistent view of the final one: every object holds a subset of the final object's keys,
every array a prefix of the final array, every string a prefix of the final string, and every number, boolean
and null its final value. pydantic-core parses the incomplete text (`allow_partial`); a number or literal that
the text ends in may still grow (`12` -> `123`, `tru` -> `true`), so the text is cut before it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import from_json

# the characters a number or true/false/null can end the text with; cutting them from a trailing string only
# shortens that string, which keeps it a prefix
_GROWING_TAIL = re.compile(r"[-+0-9.eEtrufalsn]+$")


class PartialValues:
    """feed(text so far) -> the new partial value, or None when it is unchanged.

    For a pydantic model class the values are `model_construct`ed from the fields already complete (the last
    field seen may still change, so it waits for the next one or the end); otherwise they are dicts and lists,
    with trailing strings as far as they go."""

    def __init__(self, schema: Any):
        self.model = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
        self._last: Any = None

    def feed(self, text: str) -> Any:
        value = self._parse(text)
        if value is None or value == self._last:
            return None
        self._last = value
        if self.model is not None:
            return self.model.model_construct(**value)
        return value

    def _parse(self, text: str) -> Any:
        head = _GROWING_TAIL.sub("", text.rstrip())
        if not head.strip():
            return None
        try:
            value = from_json(head, allow_partial=True if self.model else "trailing-strings")
        except ValueError:
            return None
        if self.model is not None:
            if not isinstance(value, dict):
                return None
            value = dict(list(value.items())[:-1])  # the last field seen may not be complete yet
            return value or None
        return value


def is_prefix(partial: Any, final: Any) -> bool:
    """Whether `partial` is a prefix-consistent view of `final` (the contract of PartialValues)."""
    if isinstance(partial, BaseModel):
        partial = partial.model_dump(exclude_unset=True)
    if isinstance(final, BaseModel):
        final = final.model_dump()
    if isinstance(partial, dict):
        return isinstance(final, dict) and all(k in final and is_prefix(v, final[k]) for k, v in partial.items())
    if isinstance(partial, list):
        return (isinstance(final, list) and len(partial) <= len(final)
                and all(is_prefix(a, b) for a, b in zip(partial, final)))
    if isinstance(partial, str):
        return isinstance(final, str) and final.startswith(partial)
    return partial == final and type(partial) is type(final)


def text_or_values(open_text, prompt, messages, result: list | None, text: bool, sampling: dict) -> AsyncIterator:
    """An engine's stream: open_text(prompt, messages, result, sampling)'s text pieces, or with json_schema= (and
    not text) the partial values as they change and then the validated value."""
    schema = None if text else sampling.get("json_schema")
    if schema is None:
        return open_text(prompt, messages, result, sampling)
    done = result if result is not None else []
    return partial_stream(open_text(prompt, messages, done, sampling), schema, done)


async def partial_stream(pieces: AsyncIterator[str], schema: Any, done: list) -> AsyncIterator:
    values, so_far = PartialValues(schema), ""
    async for piece in pieces:
        so_far += piece
        if (value := values.feed(so_far)) is not None:
            yield value
    yield done[-1].parsed
