"""What a supervisor does when an agent's handler raises: restart it, stop it, or escalate to the runtime."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Restart:
    """A fresh agent instance (from its factory) takes over the same mailbox.

    More than `max_restarts` failures within `within` seconds escalate: the runtime fails with
    AgentFailedError, as an Erlang supervisor gives up on a crash loop.
    """

    max_restarts: int = 3
    within: float = 60.0
    _times: deque = field(default_factory=deque, repr=False)

    def allow(self) -> bool:
        now = time.monotonic()
        self._times.append(now)
        while self._times and now - self._times[0] > self.within:
            self._times.popleft()
        return len(self._times) <= self.max_restarts


@dataclass
class Stop:
    """The agent stops; messages still in its mailbox fail with AgentStoppedError."""


@dataclass
class Escalate:
    """The failure stops the whole runtime: every agent is cancelled and AgentFailedError is raised."""


Policy = Restart | Stop | Escalate
