"""Agent: an actor with a mailbox. Subclass it and write `handle`; the runtime delivers one message at a time."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import AgentRuntime

_message_ids = itertools.count()


@dataclass
class Envelope:
    message: Any
    sender: str | None
    reply: Any = None  # an asyncio future when the sender asked; None for a plain send
    id: str = field(default_factory=lambda: f"msg-{next(_message_ids)}")


class Agent(ABC):
    """Override `handle(message, sender)`; its return value answers an `ask`.

    `on_start` runs before the first message (and again after each restart, on the fresh instance);
    `on_stop` after the last. Inside, `self.send`, `self.ask` reach other agents by address and
    `self.state()` starts a program state on the runtime's shared engine.
    """

    address: str
    runtime: "AgentRuntime"

    async def on_start(self) -> None:
        pass

    @abstractmethod
    async def handle(self, message: Any, sender: str | None) -> Any:
        """Handle one message; the return value (or exception) answers an `ask`."""

    async def on_stop(self) -> None:
        pass

    @property
    def engine(self):
        return self.runtime.engine

    async def send(self, to: str, message: Any) -> None:
        await self.runtime.send(to, message, sender=self.address)

    async def ask(self, to: str, message: Any, timeout: float | None = None) -> Any:
        return await self.runtime.ask(to, message, timeout=timeout, sender=self.address)

    def state(self):
        """A fresh ProgramState on the shared engine. Its program is the agent (its address): the engine keeps the
        agent's KV while it awaits another agent or its next message, as between two calls of one program, and
        lets it go when the agent stops or crashes."""
        from ..primitives.state import ProgramState

        return ProgramState(self.engine, self.address, program_ends=False)
