"""Which replica serves a request: a program's requests (and its branches') stick to one replica, so its
prefix cache is hit; requests of no program, and a program's first, go to the least-loaded replica."""

from __future__ import annotations

from collections import OrderedDict

import structlog


def affinity_key() -> str | None:
    """The running program or agent, from the structlog context the primitives and agents bind."""
    ctx = structlog.contextvars.get_contextvars()
    return ctx.get("program_id") or ctx.get("agent_id")


class Router:
    def __init__(self, replicas: list, max_keys: int = 100_000):
        if not replicas:
            raise ValueError("at least one endpoint is needed")
        self.replicas = replicas
        self._sticky: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys

    def least_loaded(self) -> int:
        return min(range(len(self.replicas)), key=lambda i: (self.replicas[i].in_flight, i))

    def pick(self, key: str | None = None):
        key = key if key is not None else affinity_key()
        if key is None:
            return self.replicas[self.least_loaded()]
        i = self._sticky.get(key)
        if i is None:
            i = self.least_loaded()
            self._sticky[key] = i
            if len(self._sticky) > self._max_keys:
                self._sticky.popitem(last=False)
        else:
            self._sticky.move_to_end(key)
        return self.replicas[i]
