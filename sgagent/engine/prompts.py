"""Prompts as token ids: text, ids or chat messages (by the model's own template). Shared by every backend."""

from __future__ import annotations

from ..errors import InvalidPromptError


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
        ids = list(prompt)
        if not all(isinstance(t, int) and 0 <= t < self.model_config.vocab_size for t in ids):
            raise InvalidPromptError("token ids must be ints within the vocabulary")
        return ids

    def render(self, messages, add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """Messages as text, by the model's own chat template (with its tool list where it has one)."""
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )

    @property
    def chat_template_has_tools(self) -> bool:
        """Whether the model's chat template renders a tool list itself (Qwen, Llama 3.1, Mistral...)."""
        template = self.tokenizer.chat_template or ""
        return "tools" in (template if isinstance(template, str) else str(template))
