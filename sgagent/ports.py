"""Servers this process starts on loopback (tests, benchmarks, child replicas and routers): free ports, waiting
until what was started answers, and the child process that runs one."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from .errors import RemoteError


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(ready, what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll the async predicate `ready()` until true; a dead child or the deadline is a RemoteError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await ready():
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RemoteError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RemoteError(f"{what}: not ready after {timeout:.0f} s")
        await asyncio.sleep(0.2)


class ChildServer:
    """A server in a child process on a loopback port: started, waited for until `ready`, stopped or killed.
    A subclass gives its command (and, where needed, its environment and readiness check)."""

    what = "server"

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1", log_file: str | Path | None = None):
        self.port, self.host, self.log_file = port or free_port(), host, log_file
        self.proc: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    async def ready(self, h: httpx.AsyncClient) -> bool:
        return (await h.get(self.root + "/health")).status_code == 200

    async def start(self, timeout: float = 300.0):
        out = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.environment())
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own descriptor
        async with httpx.AsyncClient(timeout=5.0) as h:
            await wait_until(lambda: self.ready(h), f"{self.what} on port {self.port}", timeout, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        self.stop()
