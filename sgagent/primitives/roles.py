"""Chat role values: `s += system("...")`, `s += user("...")`, `s += assistant("...")`, tool results."""

from __future__ import annotations

from dataclasses import dataclass

from ..image_input import Image


@dataclass(frozen=True)
class Message:
    role: str
    content: str | tuple  # text, or parts: str and sgagent.image(...) values in order
    name: str | None = None  # the tool a "tool" message answers for
    tool_call_id: str | None = None
    tools: tuple | None = None  # on the first system message: tool specs for templates with tool support

    def as_dict(self) -> dict:
        d = {"role": self.role, "content": content_parts(self.content)}
        if self.name is not None:
            d["name"] = self.name
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d


def content_parts(content):
    """A message's content as the engine takes it: text as is, a mix of text and images as content parts."""
    if isinstance(content, str):
        return content
    return [{"type": "image", "image": p} if isinstance(p, Image) else {"type": "text", "text": p} for p in content]


def message_content(content):
    """Text, an image, or a list of both as a Message's content: a str when it is all text, else a tuple."""
    if isinstance(content, (Image, str)):
        content = [content]
    parts = tuple(content)
    if not all(isinstance(p, (str, Image)) for p in parts):
        raise TypeError("message content is text, or a list of text and sgagent.image(...) values")
    return "".join(parts) if all(isinstance(p, str) for p in parts) else parts


def system(content) -> Message:
    return Message("system", message_content(content))


def user(content) -> Message:
    """A user message: text, an image, or a list of both in order (`user([image(path), "What is this?"])`)."""
    return Message("user", message_content(content))


def assistant(content) -> Message:
    return Message("assistant", message_content(content))


def tool_result(content: str, name: str | None = None, tool_call_id: str | None = None) -> Message:
    return Message("tool", content, name=name, tool_call_id=tool_call_id)
