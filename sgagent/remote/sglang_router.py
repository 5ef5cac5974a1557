"""SGLang's own router (the `sglang-router` package, Rust) in front of several `sgagent serve` replicas.

sgagent does not route across machines itself: this starts the real router as a child process and hands back
its URL, for `RemoteEngine(url + "/v1")`. Its cache-aware policy keeps a radix tree of the prompts it routed
(token ids, as RemoteEngine sends them) and sends a request to the worker holding its longest prefix.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ..errors import RemoteError
from ..log import get_logger
from ..ports import free_port, wait_until


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
    port = port or free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", host, "--port", str(port),
           "--worker-urls", *worker_roots, "--policy", policy, "--health-check-interval-secs", str(health_interval_s),
           "--prometheus-port", str(free_port()), "--log-level", "warn", *extra_args]
    out = open(log_file, "w") if log_file else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    log = get_logger("sgagent.remote").bind(router=url, policy=policy)
    try:
        async with httpx.AsyncClient(timeout=5.0) as h:
            async def healthy():
                r = await h.get(url + "/workers")
                return r.status_code == 200 and r.text.count('"is_healthy":true') >= len(worker_roots)

            await wait_until(healthy, f"sglang-router at {url}", startup_timeout, proc)
        log.info("router.ready", workers=len(worker_roots))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()
