"""Agents as actors: delivery, supervision, backpressure, and cleanup of their engine work."""

import asyncio
import random
from collections import Counter

import anyio
import pytest
import structlog

from sgagent import user
from sgagent.agents import Agent, AgentRuntime, Escalate, Restart, Stop
from sgagent.errors import AgentError, AgentFailedError, AgentNotFoundError, AgentStoppedError
from tests.conftest import settle


class Relay(Agent):
    """Forwards each message to a random peer until its hop budget is spent, then records it."""

    def __init__(self, n: int, received: Counter, rng: random.Random):
        self.n, self.received, self.rng = n, received, rng

    async def handle(self, message, sender):
        mid, hops = message
        if hops == 0:
            self.received[mid] += 1
            return
        await self.send(f"agent-{self.rng.randrange(self.n)}", (mid, hops - 1))


async def test_fifty_agents_exchange_a_thousand_messages_exactly_once():
    received: Counter = Counter()
    rng = random.Random(0)
    async with AgentRuntime(engine=object()) as rt:
        for i in range(50):
            await rt.spawn(f"agent-{i}", lambda: Relay(50, received, rng), mailbox_size=8)
        # 200 messages x 5 hops = 1,000 deliveries between agents, with small mailboxes under load
        async with anyio.create_task_group() as tg:
            for m in range(200):
                tg.start_soon(rt.send, f"agent-{m % 50}", (m, 4))
    # leaving the runtime drains every mailbox first
    assert sorted(received) == list(range(200)) and set(received.values()) == {1}


class Echo(Agent):
    async def handle(self, message, sender):
        if message == "crash":
            raise ValueError("asked to crash")
        if message == "who":
            return id(self)
        if message == "ctx":
            return structlog.contextvars.get_contextvars()
        return (message, sender)


async def test_ask_send_and_log_context():
    async with AgentRuntime(engine=object()) as rt:
        await rt.spawn("echo", Echo)
        assert await rt.ask("echo", "hi", sender="me") == ("hi", "me")
        ctx = await rt.ask("echo", "ctx")
        assert ctx["agent_id"] == "echo" and ctx["message_id"].startswith("msg-")
        with pytest.raises(AgentNotFoundError, match="nobody"):
            await rt.send("nobody", 1)
        with pytest.raises(AgentError, match="already"):
            await rt.spawn("echo", Echo)


async def test_restart_policy_gives_a_fresh_instance_then_escalates_past_its_limit():
    with pytest.raises(AgentFailedError, match="restart limit"):
        async with AgentRuntime(engine=object()) as rt:
            await rt.spawn("echo", Echo, policy=Restart(max_restarts=2, within=60))
            first = await rt.ask("echo", "who")
            with pytest.raises(ValueError, match="asked to crash"):
                await rt.ask("echo", "crash")  # the asker sees the failure...
            second = await rt.ask("echo", "who")  # ...and a new instance takes the mailbox
            assert first != second and rt.stats("echo")["restarts"] == 1
            with pytest.raises(ValueError):
                await rt.ask("echo", "crash")
            assert rt.stats("echo")["restarts"] == 2
            await rt.send("echo", "crash")  # the third failure in the window is one too many
            await anyio.sleep(5)
            pytest.fail("the runtime should have been cancelled by the escalation")


async def test_stop_and_escalate_policies():
    async with AgentRuntime(engine=object()) as rt:
        await rt.spawn("fragile", Echo, policy=Stop())
        await rt.spawn("other", Echo)
        with pytest.raises(ValueError):
            await rt.ask("fragile", "crash")
        await anyio.sleep(0.01)
        with pytest.raises((AgentStoppedError, AgentNotFoundError)):
            await rt.ask("fragile", "hi")
        assert await rt.ask("other", "hi") == ("hi", None)  # siblings are untouched

    with pytest.raises(AgentFailedError, match="asked to crash"):
        async with AgentRuntime(engine=object()) as rt:
            await rt.spawn("critical", Echo, policy=Escalate())
            await rt.spawn("bystander", Echo)
            await rt.send("critical", "crash")
            await anyio.sleep(5)


class Slow(Agent):
    def __init__(self, log):
        self.log = log

    async def handle(self, message, sender):
        await anyio.sleep(0.01)
        self.log.append(message)


async def test_full_mailbox_makes_senders_wait():
    log = []
    peak = 0
    async with AgentRuntime(engine=object()) as rt:
        await rt.spawn("slow", lambda: Slow(log), mailbox_size=4)

        async def producer():
            for i in range(40):
                await rt.send("slow", i)

        async def watch():
            nonlocal peak
            while len(log) < 40:
                peak = max(peak, rt.stats("slow")["queued"])
                await anyio.sleep(0.002)

        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            tg.start_soon(watch)
        # 40 sends could not all land at once: the producer waited for room, memory stayed bounded
        assert anyio.current_time() - t0 > 0.3
    assert peak <= 4 and log == list(range(40))


async def test_ask_timeout_and_shutdown_without_drain_fail_pending_asks():
    async with AgentRuntime(engine=object()) as rt:
        await rt.spawn("slow", lambda: Slow([]), mailbox_size=100)
        with pytest.raises(TimeoutError):
            await rt.ask("slow", 1, timeout=0.001)
        pending = [asyncio.ensure_future(rt.ask("slow", i)) for i in range(20)]
        await anyio.sleep(0.02)
        await rt.shutdown(drain=False)
        with anyio.fail_after(10):  # every queued ask is answered, none left hanging
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
        assert any(isinstance(o, AgentStoppedError) for o in outcomes)
        assert all(o is None or isinstance(o, AgentStoppedError) for o in outcomes)
        assert rt.addresses() == []


class Writer(Agent):
    """Shares one system prompt with every other writer; each message is one generation on the engine."""

    SYSTEM = "You are a terse assistant in a team of writers. Answer in one short sentence. " * 4

    async def handle(self, message, sender):
        s = self.state()
        s += user(self.SYSTEM + "\n" + message)
        return await s.gen("out", max_tokens=int(message.split()[-1]), temperature=0.0)


async def test_agents_share_prefixes_and_stopping_frees_their_requests(fresh):
    async with AgentRuntime(fresh) as rt:
        for i in range(6):
            await rt.spawn(f"w{i}", Writer)
        outs = await asyncio.gather(*(rt.ask(f"w{i}", "Say something about the sea, take 8") for i in range(6)))
        assert len(set(outs)) == 1  # greedy, same prompt
        s = fresh.stats()
        assert s["cached_tokens"] >= 4 * 40, s  # the shared system prompt was computed once or twice, not 6x
        # long generations, then stop one agent mid-flight and shut the rest down without draining
        pending = [asyncio.ensure_future(rt.ask(f"w{i}", "Write a long story, take 200")) for i in range(6)]
        await anyio.sleep(1.0)
        await rt.stop("w0")
        with pytest.raises(AgentStoppedError):
            await pending[0]
        await rt.shutdown(drain=False)
        await asyncio.gather(*pending, return_exceptions=True)
    await settle(fresh)
