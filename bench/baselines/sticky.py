"""The client-side routing sgagent once shipped, kept as a benchmark baseline: each program's requests (and its
branches') go to one endpoint, a new program to the endpoint with the fewest requests in flight. sglang-router's
cache-aware policy replaced it (bench/router_affinity.py measures both)."""

from __future__ import annotations

import structlog


class StickyEndpoints:
    """The engine surface over several RemoteEngines, one per replica, chosen per program."""

    def __init__(self, engines: list):
        self.engines = engines
        self._home: dict[str, object] = {}
        self._in_flight = {id(e): 0 for e in engines}

    def __getattr__(self, name):  # tokenizer, templates, max_context: the same on every replica
        return getattr(self.engines[0], name)

    def _pick(self):
        key = structlog.contextvars.get_contextvars().get("program_id")
        if key is None:
            return min(self.engines, key=lambda e: self._in_flight[id(e)])
        if key not in self._home:
            self._home[key] = min(self.engines, key=lambda e: self._in_flight[id(e)])
        return self._home[key]

    async def _counted(self, engine, call):
        self._in_flight[id(engine)] += 1
        try:
            return await call
        finally:
            self._in_flight[id(engine)] -= 1

    async def generate(self, prompt=None, **kw):
        e = self._pick()
        return await self._counted(e, e.generate(prompt, **kw))

    async def score(self, prompt=None, continuations=(), **kw):
        e = self._pick()
        return await self._counted(e, e.score(prompt, continuations, **kw))

    async def stream(self, prompt=None, **kw):
        e = self._pick()
        self._in_flight[id(e)] += 1
        try:
            async for piece in e.stream(prompt, **kw):
                yield piece
        finally:
            self._in_flight[id(e)] -= 1

    def stats(self) -> dict:
        parts = [e.stats() for e in self.engines]
        out = {k: sum(p[k] for p in parts) for k in ("requests", "finished", "prompt_tokens", "cached_tokens")}
        out["cache_hit_rate"] = out["cached_tokens"] / out["prompt_tokens"] if out["prompt_tokens"] else 0.0
        return out

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for e in self.engines:
            await e.aclose()
