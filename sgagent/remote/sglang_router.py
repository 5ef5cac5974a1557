"""SGLang's own router (the `sglang-router` package, Rust) in front of several `sgagent serve` replicas.

sgagent does not route across machines itself: this starts the real router as a child process and hands back
its URL, for `RemoteEngine(url + "/v1")`. Its cache-aware policy keeps a radix tree of the prompts it routed
(token ids, as RemoteEngine sends them) and sends a request to the worker holding its longest prefix.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ..errors import RemoteError
from ..log import get_logger
from ..ports import ChildServer, free_port


class _Router(ChildServer):
    what = "sglang-router"

    def __init__(self, worker_roots: list[str], policy: str, host: str, port: int | None, health_interval_s: int,
                 extra_args: tuple[str, ...], log_file):
        super().__init__(port=port, host=host, log_file=log_file)
        self.worker_roots, self.policy = worker_roots, policy
        self.health_interval_s, self.extra_args = health_interval_s, extra_args

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sglang_router.launch_router", "--host", self.host, "--port", str(self.port),
                "--worker-urls", *self.worker_roots, "--policy", self.policy,
                "--health-check-interval-secs", str(self.health_interval_s),
                "--prometheus-port", str(free_port()), "--log-level", "warn", *self.extra_args]

    async def ready(self, h: httpx.AsyncClient) -> bool:
        r = await h.get(self.root + "/workers")
        return r.status_code == 200 and r.text.count('"is_healthy":true') >= len(self.worker_roots)


@asynccontextmanager
async def sglang_router(worker_roots: list[str], *, policy: str = "cache_aware", host: str = "127.0.0.1",
                        port: int | None = None, health_interval_s: int = 1, extra_args: tuple[str, ...] = (),
                        log_file: str | Path | None = None, startup_timeout: float = 60.0):
    """Run sglang-router over the workers (their roots, without /v1) until the block ends; yields its root URL.

    The router's Prometheus port defaults to a fixed 29000 and it panics when that is taken, so a free port is
    passed: several routers can run on one machine."""
    try:
        import sglang_router  # noqa: F401
    except ImportError as e:
        raise RemoteError("sglang-router is not installed: pip install 'sglang-router>=0.3,<0.4'") from e
    router = _Router(worker_roots, policy, host, port, health_interval_s, extra_args, log_file)
    try:
        await router.start(startup_timeout)
        get_logger("sgagent.remote").info("router.ready", router=router.root, policy=policy, workers=len(worker_roots))
        yield router.root
    finally:
        router.stop()
