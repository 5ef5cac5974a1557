"""Running branches together under structured concurrency (anyio task groups).

An exception in one branch cancels the others and is raised at the join as itself (not wrapped in an
exception group when it is the only one); cancelling the caller cancels every branch, and with them their
engine requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import anyio


def _unwrap(eg: BaseExceptionGroup) -> BaseException:
    errors = [e for e in _leaves(eg) if not isinstance(e, anyio.get_cancelled_exc_class())]
    return errors[0] if len(errors) == 1 else eg


def _leaves(eg: BaseExceptionGroup):
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


async def gather(*aws: Awaitable):
    """Run awaitables concurrently; results in order. The first failure cancels the rest and is raised."""
    results = [None] * len(aws)

    async def one(i, aw):
        results[i] = await aw

    try:
        async with anyio.create_task_group() as tg:
            for i, aw in enumerate(aws):
                tg.start_soon(one, i, aw)
    except BaseExceptionGroup as eg:
        err = _unwrap(eg)
        if err is eg:
            raise
        raise err from None
    return results


class join:
    """`async with sgagent.join(branches) as group:` start branch work with `group.start(coro)`.

    On exit every started coroutine has finished; variables the branches set after the fork are joined
    back into the parent as lists (one value per branch, in order).
    """

    def __init__(self, branches: Sequence):
        self.branches = list(branches)
        self._aws: list[Awaitable] = []

    def start(self, aw: Awaitable) -> None:
        self._aws.append(aw)

    async def __aenter__(self) -> "join":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            for aw in self._aws:
                close = getattr(aw, "close", None)
                if close:
                    close()  # never started: no "coroutine was never awaited" noise
            return False
        await gather(*self._aws)
        if self.branches:
            parent = self.branches[0]._parent
            if parent is not None:
                parent._join_back(self.branches)
        return False
