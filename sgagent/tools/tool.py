"""@tool: a typed Python function (sync or async) as a tool with a JSON schema and argument validation.

The signature becomes a pydantic model, so everything pydantic understands works as a parameter type
(Optional, defaults, Literal and Enum, lists, dicts, nested models, dataclasses) and the same model both
writes the schema the decoder is constrained by and validates arguments before the function runs.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import anyio
import pydantic

from ..errors import ToolArgumentsError, ToolDefinitionError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a docstring with an optional Google-style Args: section."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    params: dict[str, str] = {}
    current, indent = None, None
    for line in rest.splitlines()[1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break  # the next section (Returns:, Raises:...)
        m = re.match(r"(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line.strip())
        if m and (indent is None or depth <= indent):
            current, indent = m.group(1), depth
            params[current] = m.group(2).strip()
        elif current:
            params[current] += " " + line.strip()
    return " ".join(head.split("\n\n")[0].split()), params


class Tool:
    """A callable the model may call: `name`, `description`, `parameters` (JSON schema), `validate`, `run`."""

    def __init__(self, fn: Callable, name: str | None = None, description: str | None = None,
                 timeout: float | None = None):
        if not callable(fn):
            raise ToolDefinitionError(f"a tool wraps a function, not {type(fn).__name__}")
        self.fn = fn
        self.name = name or fn.__name__
        if not _NAME.match(self.name):
            raise ToolDefinitionError(f"tool name {self.name!r} must match {_NAME.pattern}")
        doc, param_docs = _doc_parts(fn.__doc__ or "")
        self.description = description if description is not None else doc
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.model = self._arguments_model(fn, param_docs)
        self.parameters = self.model.model_json_schema()
        self.parameters.pop("title", None)

    def _arguments_model(self, fn, param_docs) -> type[pydantic.BaseModel]:
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as e:  # an unresolvable forward reference
            raise ToolDefinitionError(f"tool {self.name}: cannot resolve its type hints ({e})") from e
        fields: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ToolDefinitionError(f"tool {self.name}: *{p.name} cannot be described by a schema")
            if p.name not in hints:
                raise ToolDefinitionError(f"tool {self.name}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (hints[p.name], pydantic.Field(default, description=param_docs.get(p.name)))
        title = "".join(w.capitalize() for w in re.split(r"[_-]", self.name)) + "Arguments"
        try:
            model = pydantic.create_model(title, __config__=pydantic.ConfigDict(extra="forbid"), **fields)
            model.model_json_schema()
        except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as e:
            raise ToolDefinitionError(f"tool {self.name}: {e}") from e
        return model

    def spec(self) -> dict:
        """The OpenAI-style function description (what chat templates with tool support take)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments) -> dict[str, Any]:
        """Arguments as the function will receive them; ToolArgumentsError when they do not fit."""
        if not isinstance(arguments, dict):
            raise ToolArgumentsError(f"{self.name}: arguments must be a JSON object, not {type(arguments).__name__}")
        try:
            m = self.model.model_validate(arguments)
        except pydantic.ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
            raise ToolArgumentsError(f"{self.name}: invalid arguments: {problems}") from None
        return {k: getattr(m, k) for k in type(m).model_fields}

    async def run(self, arguments: dict) -> Any:
        """Validate, then call (a sync function runs in a worker thread so the loop keeps serving)."""
        kwargs = self.validate(arguments)
        if self.is_async:
            return await self.fn(**kwargs)
        # abandoned on timeout or cancel: a thread cannot be stopped, but the caller need not wait for it
        return await anyio.to_thread.run_sync(lambda: self.fn(**kwargs), abandon_on_cancel=True)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float | None = None):
    """Make a tool of a typed function: `@tool` or `@tool(name=..., timeout=...)`."""
    if fn is None:
        return lambda f: Tool(f, name, description, timeout)
    return Tool(fn, name, description, timeout)
