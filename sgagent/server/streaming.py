"""Server-sent events from n concurrent engine streams, and cancelling work whose client went away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request

from ..errors import IncompleteGenerationError, SgagentError
from .errors import APIError, from_engine


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def merged(n: int, open_stream: Callable[[int], AsyncIterator[tuple]]) -> AsyncIterator[tuple]:
    """Items of n streams as they come; closing this generator (a client that left) cancels every stream,
    and each engine stream aborts its request on the way out."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int):
        try:
            async for item in open_stream(i):
                await queue.put(item)
        except Exception as e:  # reaches the client as an error event
            await queue.put(("error", i, e))
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    try:
        left = n
        while left:
            item = await queue.get()
            if item is done:
                left -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def engine_stream(engine, ids: list[int], kwargs: dict, spec: dict, i: int) -> AsyncIterator[tuple]:
    """("text", i, piece) items, then ("end", i, GenerateResult or IncompleteGenerationError)."""
    result: list = []
    try:
        async for piece in engine.stream(ids, result=result, text=True, **kwargs, **spec):
            yield ("text", i, piece)
    except IncompleteGenerationError as e:
        yield ("end", i, e)
        return
    yield ("end", i, result[0])


def error_event(e: Exception) -> str:
    err = from_engine(e) if isinstance(e, SgagentError) else e if isinstance(e, APIError) else \
        APIError(500, f"{type(e).__name__}: {e}", type_="server_error")
    return sse({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})


async def cancel_on_disconnect(request: Request, work: Awaitable, poll: float = 0.25):
    """Await `work`, cancelling it (and so its engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client closed the request", code="client_closed")
    finally:
        if not task.done():
            task.cancel()
