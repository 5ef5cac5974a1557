"""Chat role values: `s += system("...")`, `s += user("...")`, `s += assistant("...")`, tool results."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None  # the tool a "tool" message answers for
    tool_call_id: str | None = None
    tools: tuple | None = None  # on the first system message: tool specs for templates with tool support

    def as_dict(self) -> dict:
        d = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str) -> Message:
    return Message("user", content)


def assistant(content: str) -> Message:
    return Message("assistant", content)


def tool_result(content: str, name: str | None = None, tool_call_id: str | None = None) -> Message:
    return Message("tool", content, name=name, tool_call_id=tool_call_id)
