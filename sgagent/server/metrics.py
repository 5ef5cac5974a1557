"""GET /metrics: Prometheus text, with its own registry so two apps in one process do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self, engine):
        self.registry = r = CollectorRegistry()
        self._requests = Counter("sgagent_requests", "API requests", ["endpoint"], registry=r)
        self._errors = Counter("sgagent_request_errors", "API requests answered with an error", ["status"],
                               registry=r)
        self._prompt = Counter("sgagent_prompt_tokens", "prompt tokens of completed requests", registry=r)
        self._completion = Counter("sgagent_completion_tokens", "generated tokens", registry=r)
        self._cached = Counter("sgagent_cached_prompt_tokens", "prompt tokens served from the prefix cache",
                               registry=r)

        def stat(key: str):
            return lambda: float(engine.stats()[key])

        for key, what in [("cache_hit_rate", "share of prompt tokens reused from the prefix cache"),
                          ("waiting", "requests waiting for KV pages"), ("running", "requests in the batch"),
                          ("pages_free", "free KV pages"), ("pages_cached", "KV pages held by the prefix cache")]:
            Gauge(f"sgagent_{key}", what, registry=r).set_function(stat(key))

    def request(self, endpoint: str) -> None:
        self._requests.labels(endpoint).inc()

    def error(self, status: int) -> None:
        self._errors.labels(str(status)).inc()

    def tokens(self, usage: dict) -> None:
        self._prompt.inc(usage.get("prompt_tokens", 0))
        self._completion.inc(usage.get("completion_tokens", 0))
        self._cached.inc((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    def text(self) -> bytes:
        return generate_latest(self.registry)
