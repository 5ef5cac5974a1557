"""Incremental rendering with the model's own chat template.

A state grows by appending; a message is rendered as the difference between the template applied to the
history with and without it, so a state built message by message equals the template applied once to all
of them, and the text of a role block in progress is a prefix of its final rendering (its KV is reused).
"""

from __future__ import annotations

_SENTINEL = "\x00sgagent-content\x00"


class ChatRenderer:
    def __init__(self, engine):
        self.engine = engine
        self.tools: list[dict] | None = None  # passed to templates that render tool lists themselves

    def _render(self, history: list[dict], gen: bool = False) -> str:
        if not history and not gen:
            return ""
        return self.engine.render(history, add_generation_prompt=gen, tools=self.tools)

    def message(self, history: list[dict], msg: dict) -> str:
        before = self._render(history)
        after = self._render(history + [msg])
        return after[len(before):] if after.startswith(before) else after

    def role_prefix(self, history: list[dict], role: str) -> str:
        """What the template puts before a `role` message's content at this point of the history."""
        if role == "assistant":
            before = self._render(history)
            after = self._render(history, gen=True)
            if after.startswith(before):
                return after[len(before):]
        delta = self.message(history, {"role": role, "content": _SENTINEL})
        return delta.split(_SENTINEL, 1)[0]
