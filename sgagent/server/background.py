"""A server running as a task of the caller's event loop (tests, benchmarks, notebooks), ready when returned."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import uvicorn

from ..ports import free_port
from .app import create_app

__all__ = ["LiveServer", "free_port", "start"]


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


async def start(engine, port: int | None = None, **app_options) -> LiveServer:
    """Serve `engine` on 127.0.0.1 (a free port unless given); `await server.stop()` ends it."""
    port = port or free_port()
    config = uvicorn.Config(create_app(engine, **app_options), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return LiveServer(engine, port, server, task)
