"""@program, Program.run and run_batch: running async agent programs on one engine."""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Sequence

import anyio
import structlog

from ..log import get_logger
from .state import ProgramState

_ids = itertools.count()
_default_engine = None


def set_default_engine(engine) -> None:
    global _default_engine
    _default_engine = engine


def default_engine():
    """The engine programs use when none is given: set with set_default_engine, else the default model."""
    global _default_engine
    if _default_engine is None:
        from ..engine import Engine

        _default_engine = Engine()
    return _default_engine


class Program:
    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__
        functools.update_wrapper(self, fn)

    async def run(self, *, engine=None, **kwargs) -> ProgramState:
        """Run once; returns the final state (its `return_value` is what the function returned)."""
        engine = engine or default_engine()
        pid = f"{self.name}-{next(_ids)}"
        state = ProgramState(engine, pid, program_ends=False)  # ended below, when the function returns
        log = get_logger("sgagent.program", program_id=pid)
        with structlog.contextvars.bound_contextvars(program_id=pid):
            log.debug("program.start", program=self.name)
            try:
                state.return_value = await self.fn(state, **kwargs)
            except BaseException as e:
                log.info("program.failed", program=self.name, error=type(e).__name__)
                raise
            finally:
                # the KV the embedded engine kept between its calls goes now (engine/retention.py); other
                # engines (remote, the benchmarks' baselines) keep nothing per program
                end = getattr(engine, "end_program", None)
                if end is not None:
                    end(pid)
            log.debug("program.finish", program=self.name)
        return state

    async def __call__(self, *, engine=None, **kwargs) -> ProgramState:
        return await self.run(engine=engine, **kwargs)


def program(fn: Callable) -> Program:
    """Mark `async def f(s, ...)` as a program: `await f.run(engine=..., **args)`."""
    return Program(fn)


async def run_batch(prog: Program, args: Sequence[dict], *, engine=None, concurrency: int = 64,
                    progress: bool = True, return_exceptions: bool = False) -> list:
    """Run prog once per argument dict, at most `concurrency` at a time; states in input order.

    With return_exceptions, a failed program's exception takes its place in the list instead of
    cancelling the batch.
    """
    engine = engine or default_engine()
    results: list = [None] * len(args)
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(args), desc=prog.name, unit="prog", file=sys.stderr,
                   disable=not sys.stderr.isatty())

    async def one(i: int, kw: dict):
        async with limiter:
            try:
                results[i] = await prog.run(engine=engine, **kw)
            except Exception as e:
                if not return_exceptions:
                    raise
                results[i] = e
            if bar is not None:
                bar.update(1)

    from .concurrency import gather

    try:
        await gather(*(one(i, kw) for i, kw in enumerate(args)))
    finally:
        if bar is not None:
            bar.close()
    return results
