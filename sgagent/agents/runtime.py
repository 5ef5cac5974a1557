"""AgentRuntime: agents spawned under a supervisor (one anyio task group), sharing one engine.

Each agent has a bounded mailbox: `send` waits while it is full (backpressure) instead of growing memory.
A handler failure is answered by the agent's policy (restart with a fresh instance, stop, or escalate).
Stopping an agent cancels the message it is handling, and with it the agent's engine requests.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import anyio
import structlog

from ..errors import AgentError, AgentFailedError, AgentNotFoundError, AgentStoppedError
from ..log import get_logger
from .agent import Agent, Envelope
from .policy import Escalate, Policy, Restart, Stop


class _Crash(Exception):
    def __init__(self, error: BaseException):
        self.error = error


class _Cell:
    """The runtime's record of one agent: its mailbox, policy and the task that runs it."""

    def __init__(self, address: str, factory: Callable[[], Agent], policy: Policy, mailbox_size: int):
        self.address = address
        self.factory = factory
        self.policy = policy
        self.inbox, self.outbox = anyio.create_memory_object_stream[Envelope](mailbox_size)
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.current: Envelope | None = None
        self.handled = 0
        self.failures = 0
        self.restarts = 0


class AgentRuntime:
    def __init__(self, engine=None):
        self._engine = engine
        self._cells: dict[str, _Cell] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._in_flight = 0  # messages sent and not yet handled, for graceful shutdown
        self._idle: anyio.Event | None = None
        self.log = get_logger("sgagent.agents")

    @property
    def engine(self):
        if self._engine is None:
            from ..primitives.program import default_engine

            self._engine = default_engine()
        return self._engine

    # -- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> "AgentRuntime":
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool | None:
        try:
            if exc_type is None:
                await self.shutdown(drain=True)
            else:
                for cell in list(self._cells.values()):
                    cell.scope.cancel()
            return await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as eg:
            failed = eg.subgroup(AgentFailedError)
            if failed is not None:
                raise _first(failed) from None
            raise
        finally:
            self._tg = None

    async def spawn(self, address: str, factory: Callable[[], Agent] | type[Agent], *, policy: Policy | None = None,
                    mailbox_size: int = 64) -> str:
        """Start an agent at `address`; `factory()` makes an instance (again on every restart)."""
        if self._tg is None:
            raise AgentError("spawn inside `async with AgentRuntime(...)`")
        if address in self._cells:
            raise AgentError(f"an agent already lives at {address!r}")
        if mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        cell = _Cell(address, factory, policy if policy is not None else Restart(), mailbox_size)
        self._cells[address] = cell
        self._tg.start_soon(self._supervise, cell, name=f"agent:{address}")
        return address

    async def stop(self, address: str, *, drain: bool = False) -> None:
        """Stop one agent: after its mailbox empties (drain), or now, cancelling what it is doing."""
        cell = self._cell(address)
        if drain:
            cell.inbox.close()
        else:
            cell.scope.cancel()
        await cell.done.wait()

    async def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop every agent. drain: first wait (up to timeout) until no message is queued or being handled."""
        if drain:
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                while self._in_flight:
                    self._idle = self._idle or anyio.Event()
                    await self._idle.wait()
        for cell in list(self._cells.values()):
            cell.inbox.close()
            if not drain or self._in_flight:
                cell.scope.cancel()
        for cell in list(self._cells.values()):
            await cell.done.wait()

    def addresses(self) -> list[str]:
        return list(self._cells)

    def stats(self, address: str) -> dict:
        c = self._cell(address)
        s = c.outbox.statistics()
        return {"queued": s.current_buffer_used, "mailbox_size": s.max_buffer_size, "handled": c.handled,
                "failures": c.failures, "restarts": c.restarts, "busy": c.current is not None}

    # -- messaging -----------------------------------------------------------------------------
    def _cell(self, address: str) -> _Cell:
        try:
            return self._cells[address]
        except KeyError:
            raise AgentNotFoundError(f"no agent at {address!r}") from None

    async def _post(self, address: str, env: Envelope) -> None:
        cell = self._cell(address)
        self._in_flight += 1
        try:
            await cell.inbox.send(env)  # waits while the mailbox is full
        except BaseException as e:
            self._settled()
            if isinstance(e, (anyio.ClosedResourceError, anyio.BrokenResourceError)):
                raise AgentStoppedError(f"agent {address!r} is stopped") from None
            raise

    async def send(self, to: str, message: Any, *, sender: str | None = None) -> None:
        """Deliver without waiting for the answer (waits only for room in the mailbox)."""
        await self._post(to, Envelope(message, sender))

    async def ask(self, to: str, message: Any, *, timeout: float | None = None, sender: str | None = None) -> Any:
        """Deliver and wait for the handler's return value (or its exception); TimeoutError past timeout."""
        reply = asyncio.get_running_loop().create_future()
        with anyio.fail_after(timeout):
            await self._post(to, Envelope(message, sender, reply))
            return await reply

    def _settled(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    # -- supervision ---------------------------------------------------------------------------
    async def _supervise(self, cell: _Cell) -> None:
        log = self.log.bind(agent_id=cell.address)
        try:
            with cell.scope:
                while True:
                    agent = cell.factory()
                    agent.address, agent.runtime = cell.address, self
                    try:
                        with structlog.contextvars.bound_contextvars(agent_id=cell.address):
                            await agent.on_start()
                        log.debug("agent.start", restarts=cell.restarts)
                        async for env in cell.outbox:
                            await self._deliver(cell, agent, env)
                    except _Crash as crash:
                        if self._after_crash(cell, crash.error, log):
                            continue
                        break
                    except Exception as e:  # on_start failed: the same policy applies
                        if self._after_crash(cell, e, log):
                            continue
                        break
                    else:
                        break  # mailbox closed and drained
                with structlog.contextvars.bound_contextvars(agent_id=cell.address):
                    await agent.on_stop()
        finally:
            if cell.current is not None:
                self._reply(cell.current, error=AgentStoppedError(f"agent {cell.address!r} stopped"))
                cell.current = None
                self._settled()
            while True:
                try:
                    env = cell.outbox.receive_nowait()
                except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.EndOfStream):
                    break
                self._reply(env, error=AgentStoppedError(f"agent {cell.address!r} stopped"))
                self._settled()
            # closed only once emptied (a closed stream hands out nothing): senders still waiting for room
            # get AgentStoppedError; with no await since the loop above, nothing slipped in between
            cell.outbox.close()
            cell.inbox.close()
            self._cells.pop(cell.address, None)
            self._end_program(cell)
            cell.done.set()
            log.debug("agent.stop", handled=cell.handled, failures=cell.failures)

    def _end_program(self, cell: _Cell) -> None:
        # the agent's states make one program (Agent.state): its pinned KV goes with a crash (a restarted
        # instance starts from fresh memory) and with the agent's stop
        end = getattr(self._engine, "end_program", None)
        if end is not None:
            end(cell.address)

    def _after_crash(self, cell: _Cell, error: BaseException, log) -> bool:
        """True: restart. False: stop. Raises AgentFailedError to escalate."""
        cell.failures += 1
        self._end_program(cell)
        log.warning("agent.crash", error=f"{type(error).__name__}: {error}", policy=type(cell.policy).__name__)
        if isinstance(cell.policy, Restart):
            if cell.policy.allow():
                cell.restarts += 1
                return True
            raise AgentFailedError(f"agent {cell.address!r} failed {cell.failures} times, past its restart "
                                   f"limit ({cell.policy.max_restarts} in {cell.policy.within} s)") from error
        if isinstance(cell.policy, Stop):
            return False
        assert isinstance(cell.policy, Escalate)
        raise AgentFailedError(f"agent {cell.address!r} failed: {type(error).__name__}: {error}") from error

    async def _deliver(self, cell: _Cell, agent: Agent, env: Envelope) -> None:
        cell.current = env
        with structlog.contextvars.bound_contextvars(agent_id=cell.address, message_id=env.id):
            try:
                result = await agent.handle(env.message, env.sender)
            except Exception as e:
                cell.current = None
                self._reply(env, error=e)
                self._settled()
                raise _Crash(e) from e
        cell.current = None
        cell.handled += 1
        self._reply(env, result=result)
        self._settled()

    @staticmethod
    def _reply(env: Envelope, result=None, error: BaseException | None = None) -> None:
        if env.reply is None or env.reply.done():
            return
        if error is not None:
            env.reply.set_exception(error)
        else:
            env.reply.set_result(result)


def _first(eg: BaseExceptionGroup) -> BaseException:
    e = eg.exceptions[0]
    return _first(e) if isinstance(e, BaseExceptionGroup) else e
