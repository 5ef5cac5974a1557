"""Prompts as token ids: text, ids or chat messages (by the model's own template). Shared by every backend."""

from __future__ import annotations

from ..errors import InvalidPromptError, UnsupportedInputError
from ..image_input import Image
from .images import MultimodalPrompt


def _is_image(part) -> bool:
    return isinstance(part, Image) or (isinstance(part, dict) and part.get("type") in ("image", "image_url"))


def _image_source(part):
    if isinstance(part, Image):
        return part
    if part["type"] == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return part.get("image")


def message_images(messages) -> list:
    """The image content parts' sources (an Image, a path, bytes, a data URL...), in prompt order."""
    return [_image_source(p) for m in messages if isinstance(m.get("content"), (list, tuple))
            for p in m["content"] if _is_image(p)]


def for_template(m: dict, multimodal: bool) -> dict:
    """A message as templates take it. A vision-language model's template reads content as a list of parts
    ({"type": "image"} where an image goes); a text-only one reads a string."""
    content = m.get("content")
    if isinstance(content, (list, tuple)):
        parts = []
        for p in content:
            if _is_image(p):
                if not multimodal:
                    raise UnsupportedInputError("this engine's model is text-only: it takes no images")
                parts.append({"type": "image"})
            elif isinstance(p, str):
                parts.append({"type": "text", "text": p})
            elif isinstance(p, dict) and p.get("type") == "text":
                parts.append({"type": "text", "text": p.get("text", "")})
            else:
                raise InvalidPromptError(f"unknown content part {p!r:.80}")
        content = parts if multimodal else "".join(p["text"] for p in parts)
    elif multimodal and isinstance(content, str):
        content = [{"type": "text", "text": content}]
    return {**m, "content": content}


class Prompting:
    """Needs `self.tokenizer` and `self.model_config` (for the vocabulary size)."""

    def tokenize(self, prompt=None, messages=None, add_generation_prompt: bool = True) -> list[int]:
        if (prompt is None) == (messages is None):
            raise InvalidPromptError("pass exactly one of prompt (str or token ids) or messages")
        if messages is not None:
            text = self.render(messages, add_generation_prompt)
            return self.tokenizer.encode(text, add_special_tokens=False)
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, MultimodalPrompt):
            return list(prompt.ids)
        ids = list(prompt)
        if not all(isinstance(t, int) and 0 <= t < self.model_config.vocab_size for t in ids):
            raise InvalidPromptError("token ids must be ints within the vocabulary")
        return ids

    def render(self, messages, add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """Messages as text, by the model's own chat template (with its tool list where it has one)."""
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(
            [for_template(m, getattr(self, "vision", None) is not None) for m in messages], tokenize=False,
            add_generation_prompt=add_generation_prompt, **extra)

    @property
    def chat_template_has_tools(self) -> bool:
        """Whether the model's chat template renders a tool list itself (Qwen, Llama 3.1, Mistral...)."""
        template = self.tokenizer.chat_template or ""
        return "tools" in (template if isinstance(template, str) else str(template))
