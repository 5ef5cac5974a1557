"""Loopback ports for servers this process starts (tests, benchmarks, child replicas and routers), and waiting
until what was started there answers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

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
