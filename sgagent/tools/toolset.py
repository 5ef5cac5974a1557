"""ToolSet: the tools offered to a model, how they are described to it, and running the calls it makes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from ..errors import ToolArgumentsError, ToolDefinitionError, UnknownToolError
from ..log import get_logger
from ..primitives.concurrency import gather
from ..primitives.roles import Message
from .schema import FINAL, step_schema
from .tool import Tool

_call_ids = itertools.count()

GENERIC_INSTRUCTIONS = (
    "You can use tools. To call one, reply with only a JSON object "
    '{{"name": <tool name>, "arguments": {{<arguments>}}}}{parallel}. Each tool\'s result comes back in the next '
    'message. When you know the answer, reply with {{"name": "final_answer", "arguments": {{"answer": <answer>}}}}.'
    "\n\nTools:\n{tools}"
)


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{next(_call_ids)}")


@dataclass
class ToolResult:
    call: ToolCall
    value: Any = None
    error: str | None = None  # "TypeName: message" when the tool raised, timed out or got invalid arguments

    @property
    def ok(self) -> bool:
        return self.error is None

    def content(self, max_chars: int | None = None) -> str:
        """What the model reads back; past `max_chars` it is cut, saying so, so one result cannot fill the context."""
        if self.error is not None:
            text = json.dumps({"error": self.error})
        elif isinstance(self.value, str):
            text = self.value
        else:
            try:
                text = json.dumps(self.value, default=str)
            except (TypeError, ValueError):
                text = str(self.value)
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars] + f" ...[{len(text) - max_chars} more characters cut]"
        return text


def tools_system_message(engine, specs: list[dict], content: str = "You are a helpful assistant.", *,
                         parallel: int = 1) -> Message:
    """A system message offering OpenAI-style function specs.

    A chat template with its own tool support gets the tool list to render its way; otherwise the tools
    and the call format are written into the message.
    """
    how = f"; or a JSON list of up to {parallel} such objects to call several tools at once" if parallel > 1 else ""
    native = engine.chat_template_has_tools
    listed = "(listed above)" if native else "\n".join(json.dumps(s["function"]) for s in specs)
    text = content + "\n\n" + GENERIC_INSTRUCTIONS.format(parallel=how, tools=listed)
    return Message("system", text, tools=tuple(specs) if native else None)


class ToolSet:
    def __init__(self, tools: Iterable, *, timeout: float | None = 30.0, max_result_chars: int | None = 4000):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else Tool(t)
            if t.name in self.tools or t.name == FINAL:
                raise ToolDefinitionError(f"tool name {t.name!r} is taken")
            self.tools[t.name] = t
        if not self.tools:
            raise ToolDefinitionError("a ToolSet needs at least one tool")
        self.timeout = timeout  # per call, unless the tool sets its own
        self.max_result_chars = max_result_chars  # what a result may add to the prompt
        self.log = get_logger("sgagent.tools")

    def __getitem__(self, name: str) -> Tool:
        try:
            return self.tools[name]
        except KeyError:
            raise UnknownToolError(f"unknown tool {name!r}; known: {sorted(self.tools)}") from None

    def __iter__(self):
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    # -- describing the tools ------------------------------------------------------------------
    def specs(self) -> list[dict]:
        return [t.spec() for t in self]

    def system(self, engine, content: str = "You are a helpful assistant.", *, parallel: int = 1) -> Message:
        """The first system message of a tool-using prompt (see `tools_system_message`)."""
        return tools_system_message(engine, self.specs(), content, parallel=parallel)

    def step_schema(self, *, parallel: int = 1, allow_answer: bool = True, allow_calls: bool = True) -> dict:
        return step_schema(list(self), parallel=parallel, allow_answer=allow_answer, allow_calls=allow_calls)

    # -- running calls -------------------------------------------------------------------------
    def parse(self, value) -> list[ToolCall]:
        """Calls from a decoded step (one call object or a list of them); UnknownToolError on a name not here."""
        items = value if isinstance(value, list) else [value]
        calls = []
        for item in items:
            if not isinstance(item, dict) or "name" not in item:
                raise ToolArgumentsError(f"a tool call is an object with name and arguments, not {item!r}")
            name = item["name"]
            if name != FINAL:
                self[name]
            calls.append(ToolCall(name, item.get("arguments", {})))
        return calls

    async def call(self, call: ToolCall) -> ToolResult:
        """Run one call; its failure (bad arguments, exception, timeout) becomes the result's error."""
        log = self.log.bind(tool=call.name, tool_call_id=call.id)
        try:
            t = self[call.name]
        except UnknownToolError as e:
            return ToolResult(call, error=f"UnknownToolError: {e}")
        limit = t.timeout if t.timeout is not None else self.timeout
        with structlog.contextvars.bound_contextvars(tool_call_id=call.id):
            try:
                with anyio.fail_after(limit):
                    value = await t.run(call.arguments)
            except ToolArgumentsError as e:
                log.info("tool.invalid_arguments", error=str(e))
                return ToolResult(call, error=f"ToolArgumentsError: {e}")
            except TimeoutError:
                log.info("tool.timeout", seconds=limit)
                return ToolResult(call, error=f"TimeoutError: {call.name} took longer than {limit} s")
            except Exception as e:  # the model reads the failure and may try again
                log.info("tool.error", error=type(e).__name__)
                return ToolResult(call, error=f"{type(e).__name__}: {e}")
        log.debug("tool.ok")
        return ToolResult(call, value=value)

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """All calls at once; results in call order (a call's failure is its result, so none cancels another)."""
        return await gather(*(self.call(c) for c in calls))
