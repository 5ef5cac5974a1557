"""A live `sgagent serve` app on a loopback port, inside the test's event loop (shared by server/remote tests)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import uvicorn

from sgagent.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    engine: object
    port: int
    server: uvicorn.Server
    task: asyncio.Task

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start(engine, **app_options) -> LiveServer:
    port = free_port()
    config = uvicorn.Config(create_app(engine, **app_options), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return LiveServer(engine, port, server, task)
