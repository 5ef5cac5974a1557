"""The one thread that runs every engine's torch work: weight loading and model steps.

torch's CPU kernels run on an OpenMP team that belongs to the thread that calls them. When a second thread
starts calling them (say, steps on a worker after weights were loaded on the main thread), the two teams
share the cores and each step takes up to twice as long (measured: a batch-64 decode step, 133 ms on one
thread vs 250 ms when loading and stepping ran on different threads). So all engines send their work here,
and the event loop thread stays free of parallel torch work.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_here = threading.local()  # .compute is True on the compute thread


def _mark() -> None:
    _here.compute = True


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="sgagent-compute", initializer=_mark)
        return _executor


def call(fn, *args):
    """fn(*args) on the compute thread, waiting for it (for set-up, never from the event loop's hot path).
    Called from the compute thread itself, it runs fn at once (a queued call would wait for itself)."""
    if getattr(_here, "compute", False):
        return fn(*args)
    return _pool().submit(fn, *args).result()


async def run(fn, *args):
    """Await fn(*args) on the compute thread. Cancelling the awaiting task still lets fn finish first, so a
    step's results and the pages it used are never abandoned mid-write."""
    fut = asyncio.wrap_future(_pool().submit(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            await asyncio.wait([fut])
        raise
