"""Program-aware scheduling and KV retention (engine/programs.py, engine/retention.py): pins live while a program
awaits a tool and go at its end, error or cancellation; pins never wedge a small pool; outputs do not depend on
the policy; no program starves."""

from __future__ import annotations

import asyncio
import random

import pytest

import sgagent
from sgagent.engine.programs import calling

from conftest import assert_quiescent, settle

WORDS = ("river stone lantern market garden engine letter window signal harbor meadow copper orbit ledger "
         "violet summit thread canyon pocket ember").split()
SYSTEM = "You are an agent. Think, then call a tool, then read what it returns. " * 3


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def check_tree(e: sgagent.Engine) -> None:
    """The radix tree's accounting, with pins: every page owned once, the held/pinned/locked counts equal to the
    nodes' own, refs never larger below than above, and every pin on a node still in the tree."""
    tree, pool = e.scheduler.tree, e.runner.pool
    nodes = list(tree._nodes())
    owned = [p for n in nodes for p in n.pages]
    assert len(owned) == len(set(owned)) == tree.cached_pages
    own = [p for r in e.scheduler.running for p in r.pages[r.inserted // tree.ps:] if p not in r.borrowed]
    assert pool.num_free + tree.cached_pages + len(own) == pool.capacity  # running requests own the rest
    assert tree.locked_pages == sum(len(n.pages) for n in nodes if n.lock_ref > 0)
    assert tree.pinned_pages == sum(len(n.pages) for n in nodes if n.pin_ref > 0)
    assert tree.held_pages == sum(len(n.pages) for n in nodes if n.held)
    for n in nodes:
        assert all(n.lock_ref >= c.lock_ref and n.pin_ref >= c.pin_ref for c in n.children.values())
        if len(n.key) < tree.ps:
            assert not n.held  # tails are never locked nor pinned
    alive = set(map(id, nodes))
    ret = e.scheduler.retention
    assert all(id(p.node) in alive for p in ret.pins.values())
    assert sum(1 for n in nodes if n.pin_ref > 0 and not any(c.pin_ref for c in n.children.values())) <= len(ret.pins)


def check_every_step(e: sgagent.Engine) -> list[int]:
    """check_tree after every step of e; returns a one-item list counting the steps checked."""
    steps, after = [0], e.scheduler.after_step

    def checked(plan):
        after(plan)
        check_tree(e)
        steps[0] += 1

    e.scheduler.after_step = checked
    return steps


def assert_released(e: sgagent.Engine) -> None:
    s = e.stats()
    assert s["pins"] == 0 and s["pinned_pages"] == 0 and s["programs"] == 0, s
    assert_quiescent(e)


# -- lifecycles ----------------------------------------------------------------------------------
@sgagent.program
async def lifecycle(s, seed: int):
    """A random program: tool waits between calls, maybe a fork, maybe a failure or a cancellation midway."""
    rng = random.Random(seed)
    s += SYSTEM + f"Task {seed}: " + words(rng, rng.randint(3, 20))
    fate = rng.random()
    for step in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            branches = s.fork(rng.randint(2, 3))
            async with sgagent.join(branches) as g:
                for b in branches:
                    g.start(b.gen("idea", max_tokens=rng.randint(1, 4), temperature=0, ignore_eos=True))
        elif rng.random() < 0.2:
            await s.select("pick", choices=[" yes", " no"])
        else:
            await s.gen(f"t{step}", max_tokens=rng.randint(1, 6), temperature=rng.choice([0, 0.7]), ignore_eos=True)
        if fate < 0.15 and step == 1:
            raise RuntimeError("the tool failed")
        await asyncio.sleep(rng.random() * 0.03)  # the tool call
        s += f" Observation {step}: " + words(rng, rng.randint(2, 12))
    return s.text()


async def test_pins_follow_random_program_lifecycles(tiny_models):
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=48, page_size=4, max_batch_tokens=128, dtype="float32")
    steps = check_every_step(e)
    rng = random.Random(11)
    outcomes = {"ok": 0, "failed": 0, "cancelled": 0}
    pinned_while_waiting = []

    async def one(seed):
        task = asyncio.ensure_future(lifecycle.run(engine=e, seed=seed))
        if rng.random() < 0.15:
            await asyncio.sleep(rng.random() * 0.2)
            task.cancel()
        try:
            await task
            outcomes["ok"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
        except RuntimeError:
            outcomes["failed"] += 1

    async def watch():
        while True:
            pinned_while_waiting.append(e.stats()["pins"])
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(one(i) for i in range(80)))
        watcher.cancel()
        await settle(e)
        assert all(outcomes.values()), outcomes
        assert steps[0] > 20
        s = e.stats()
        assert s["pins_made"] > 20 and max(pinned_while_waiting) > 0, s
        assert_released(e)  # every program ended one way or another: no pin, no program left
    finally:
        watcher.cancel()
        await e.aclose()


async def test_pin_lives_between_calls_and_goes_at_the_end(tiny_models):
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32")
    seen = {}

    @sgagent.program
    async def two_calls(s):
        s += SYSTEM
        await s.gen("a", max_tokens=3, temperature=0, ignore_eos=True)
        seen["waiting"] = e.stats()
        await asyncio.sleep(0.01)
        s += " then"
        await s.gen("b", max_tokens=3, temperature=0, ignore_eos=True)
        seen["after"] = e.stats()

    try:
        await two_calls.run(engine=e)
        assert seen["waiting"]["pins"] == 1 and seen["waiting"]["pinned_pages"] > 0
        # the second call found its own pin and took it; the pin of that call lives until the program returned
        assert seen["after"]["pin_hits"] == 1 and seen["after"]["pins"] == 1
        assert_released(e)
        # what only that program used is the first to go
        tree = e.scheduler.tree
        assert any(n.done for n in tree._nodes())
    finally:
        await e.aclose()


async def test_a_state_nobody_holds_ends_its_program(tiny_models):
    from sgagent.primitives.state import ProgramState

    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32")
    try:
        kept, dropped = ProgramState(e), ProgramState(e)
        assert kept.program_id != dropped.program_id  # made up per state: two states are two programs
        for s in (kept, dropped):
            s += SYSTEM + s.program_id
            await s.gen("a", max_tokens=2, temperature=0)
        assert e.stats()["pins"] == 2
        del s, dropped
        await asyncio.sleep(0)  # the end is posted to the loop's next turn
        st = e.stats()
        assert st["pins"] == 1 and st["programs"] == 1, st
        del kept
        await asyncio.sleep(0)
        assert_released(e)
    finally:
        await e.aclose()


async def test_an_agent_is_one_program_across_its_messages(tiny_models):
    """An agent's per-message states are one program: its KV stays pinned while it awaits its next message (the
    next message then finds it), and goes when the agent stops."""
    from sgagent.agents import Agent, AgentRuntime

    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32")

    class Speaker(Agent):
        async def handle(self, message, sender):
            s = self.state()
            s += SYSTEM + message
            await s.gen("line", max_tokens=3, temperature=0, ignore_eos=True)
            return s["line"]

    try:
        async with AgentRuntime(e) as rt:
            await rt.spawn("speaker", Speaker)
            await rt.ask("speaker", " hello", timeout=60)
            await asyncio.sleep(0)
            st = e.stats()
            assert st["pins"] == 1 and st["programs"] == 1, st  # between two messages: kept
            await rt.ask("speaker", " hello again", timeout=60)
            assert e.stats()["pin_hit_tokens"] > len(SYSTEM) // 8  # the second message found the first's prefix
        assert_released(e)  # stopped with the runtime: its pin went
    finally:
        await e.aclose()


async def pinned_call(tiny_models, program_id: str):
    """An engine with one call of program_id done and its path pinned, and that pin."""
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32")
    with calling(program_id):
        await e.generate(SYSTEM, max_tokens=2, temperature=0)
    return e, next(iter(e.scheduler.retention.pins.values()))


async def test_a_pin_expires_after_its_ttl(tiny_models):
    e, pin = await pinned_call(tiny_models, "never-ends")
    try:
        assert e.stats()["pins"] == 1
        assert 0.25 <= pin.expires - pin.since <= 60.0
        pin.expires = pin.since  # as if its TTL had passed
        await e.generate("another request", max_tokens=1, temperature=0)  # a step runs, expiring it
        assert e.stats()["pins"] == 0 and e.stats()["pins_expired"] == 1
    finally:
        await e.aclose()


async def test_a_queued_call_keeps_its_pin_past_the_ttl(tiny_models):
    # the TTL covers the program's own wait; once its next call is queued, the engine's queue is what keeps it
    e, pin = await pinned_call(tiny_models, "p")
    try:
        with calling("p"):
            pin.expires = pin.since  # its TTL has passed by the time the next call is admitted...
            await e.generate(SYSTEM + " and then more", max_tokens=1, temperature=0)  # ...but it was queued first
        st = e.stats()
        assert st["pins_expired"] == 0 and st["pin_hit_tokens"] > 0
    finally:
        await e.aclose()


async def plain_running(e: sgagent.Engine, plain: str) -> tuple[list[bool], asyncio.Future]:
    """A plain request decoding 48 tokens, once it runs; and, per step from then on, whether others ran beside."""
    together, after = [], e.scheduler.after_step

    def watch(plan):
        after(plan)
        together.append(len(e.scheduler.running) > 1)

    e.scheduler.after_step = watch
    running = asyncio.ensure_future(e.generate(plain, max_tokens=48, temperature=0, ignore_eos=True))
    while not e.scheduler.running:
        await asyncio.sleep(0.001)
    return together, running


async def test_a_call_that_lost_its_kv_does_not_drop_the_pins_of_others(tiny_models):
    # it must compute its whole context again: taking other programs' pins for that would make them compute
    # theirs again too, and so on; it waits for room while other work runs
    path, _ = tiny_models["llama"]
    probe = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32")
    pages = lambda text: -(-len(probe.tokenizer.encode(text)) // 4) + 1
    a, b = SYSTEM + " Program A.", SYSTEM + " Program B, another context."
    long_c = " ".join(WORDS * 10)
    plain = "A plain request that decodes for a while."
    held = pages(a) + pages(b)
    kv = pages(long_c) + 4  # C fits alone, not beside the pins and the plain request
    assert kv >= held + pages("C starts short.") + pages(plain) + 48 // 4  # which fit beside each other
    await probe.aclose()
    e = sgagent.Engine(str(path), kv_pages=kv, page_size=4, dtype="float32", max_batch_tokens=4096)
    try:
        for pid, text in (("A", a), ("B", b), ("C", "C starts short.")):
            with calling(pid):
                await e.generate(text, max_tokens=2, temperature=0, ignore_eos=True)
        assert e.stats()["pins"] == 3
        together, running = await plain_running(e, plain)
        room = e.runner.pool.num_free + e.scheduler.tree.evictable_pages
        assert room < pages(long_c), (room, pages(long_c))  # C fits only if it drops pins
        with calling("C"):
            c = asyncio.ensure_future(e.generate(long_c, max_tokens=1, temperature=0))
        await running
        # it waited while the plain request ran, and dropped no pin for it
        assert not any(together) and e.stats()["pins_dropped"] == 0
        await c  # then it goes, in the plain request's room or by dropping pins (never a deadlock)
        for pid in "ABC":
            e.end_program(pid)
        await settle(e)
        assert_released(e)
    finally:
        await e.aclose()



async def newcomer_beside_running_work(path, **cfg) -> tuple[bool, int | None]:
    """A program ends having grown by ~100 tokens; program R is pinned; while a plain request decodes, newcomer
    N's first call arrives. Whether N ran beside the plain request, and the growth the engine expected."""
    tokens = sgagent.Engine(str(path), kv_pages=8, page_size=4).tokenizer.encode
    pages = lambda text: -(-len(tokens(text)) // 4)
    plain, first_n, r_text = "A plain request that decodes for a while.", "N starts short.", SYSTEM + " Program R."
    observation = " Observation: " + " ".join(WORDS * 5)
    e = sgagent.Engine(str(path), kv_pages=64, page_size=4, dtype="float32", max_batch_tokens=4096, **cfg)
    try:
        with calling("grower"):
            r = await e.generate("G starts.", max_tokens=2, temperature=0, ignore_eos=True)
            await asyncio.sleep(1.0)  # its tool: R's pin, made with no wait of its own, lives 2x this
            await e.generate("G starts." + r.text + observation, max_tokens=2, temperature=0, ignore_eos=True)
        e.end_program("grower")
        with calling("R"):
            await e.generate(r_text, max_tokens=2, temperature=0, ignore_eos=True)
        together, running = await plain_running(e, plain)
        growth = e.scheduler.programs.expected_growth()
        room = e.runner.pool.num_free + e.scheduler.tree.evictable_pages
        need = pages(first_n) + 1
        assert need + 8 <= room, (need, room)  # N fits beside the plain request with room to spare
        if growth is not None:
            assert growth >= 100 and room < need + 2 * -(-growth // 4), (growth, room)  # not with two programs' growth
        with calling("N"):
            n = asyncio.ensure_future(e.generate(first_n, max_tokens=2, temperature=0, ignore_eos=True))
        await running
        await n  # once nothing else runs it goes whatever the room
        for pid in "RN":
            e.end_program(pid)
        await settle(e)
        assert_released(e)
        return any(together), growth
    finally:
        await e.aclose()


async def test_a_newcomer_waits_for_room_to_grow_beside_the_resident_programs(tiny_models):
    path, _ = tiny_models["llama"]
    beside, growth = await newcomer_beside_running_work(path)
    assert growth is not None and not beside  # room for its growth and R's was not there: it waited
    beside, _ = await newcomer_beside_running_work(path, program_scheduling=False)
    assert beside  # today's policy admits it at once

# -- pressure and policy -------------------------------------------------------------------------
@sgagent.program
async def react(s, i: int, steps: int, delay_seed: int):
    rng = random.Random(delay_seed)
    s += SYSTEM + f"Question {i}: " + words(rng, 30)
    for k in range(steps):
        await s.gen(f"thought{k}", max_tokens=4, temperature=0, ignore_eos=True)
        await asyncio.sleep(0.005 + rng.random() * 0.03)  # the tool
        s += f"\nObservation {k}: " + words(rng, 25) + "\nThought:"
    return s.text()


async def run_react(e, n: int = 24, steps: int = 4):
    states = await sgagent.run_batch(react, [dict(i=i, steps=steps, delay_seed=i) for i in range(n)], engine=e,
                                     progress=False)
    return [st.return_value for st in states]


async def test_pinned_contexts_beyond_the_pool_complete_with_the_same_outputs(tiny_models):
    path, _ = tiny_models["llama"]
    big = sgagent.Engine(str(path), kv_pages=4096, page_size=4, dtype="float32",
                         program_scheduling=False, kv_retention=False)
    small = big.with_config(kv_pages=160, program_scheduling=True, kv_retention=True)
    steps = check_every_step(small)
    try:
        want = await run_react(big)
        got = await asyncio.wait_for(run_react(small), 300)
        s = small.stats()
        # 24 programs end near 24 * ~170 tokens: several times what 160 pages of 4 hold
        assert sum(len(small.tokenize(t)) for t in got) > 4 * 160 * 4
        assert got == want
        assert s["pins_dropped"] > 0 and s["pins_made"] > 0, s
        assert steps[0] > 0
        assert_released(small)
    finally:
        await small.aclose()
        await big.aclose()


async def test_outputs_identical_with_the_policy_on_and_off(engine):
    # the default model on a pool that holds about half the programs' contexts: pins are made, dropped and hit
    on = engine.with_config(kv_pages=60)
    off = engine.with_config(kv_pages=60, program_scheduling=False, kv_retention=False)
    try:
        a = await run_react(on, n=8, steps=3)
        b = await run_react(off, n=8, steps=3)
        assert a == b
        assert on.stats()["pin_hits"] > 0
        assert_released(on)
    finally:
        await on.aclose()
        await off.aclose()


# -- starvation ----------------------------------------------------------------------------------
async def test_an_old_program_is_served_under_a_flood_of_new_ones(tiny_models):
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=256, page_size=4, max_batch_tokens=64, max_running_requests=4,
                       dtype="float32")
    waited, started = [], asyncio.Event()

    @sgagent.program
    async def old(s):
        s += SYSTEM
        await s.gen(max_tokens=2, temperature=0, ignore_eos=True)
        started.set()
        await asyncio.sleep(0.05)  # a tool call, while the flood arrives
        for k in range(4):
            s += f" step {k}"
            before = e.counters["steps"]
            await s.gen(max_tokens=1, temperature=0)
            waited.append(e.counters["steps"] - before)
            await asyncio.sleep(0.01)

    @sgagent.program
    async def newcomer(s, i):
        s += f"New program {i}: " + SYSTEM
        await s.gen(max_tokens=6, temperature=0, ignore_eos=True)

    try:
        first = asyncio.ensure_future(old.run(engine=e))
        await started.wait()
        flood = asyncio.ensure_future(sgagent.run_batch(newcomer, [dict(i=i) for i in range(60)], engine=e,
                                                        progress=False))
        await first
        assert not flood.done()  # it was served while newcomers still queued
        await flood
        # its call goes before every newcomer's first: at most the steps of the requests already running
        assert max(waited) <= 8, waited
        assert_released(e)
    finally:
        await e.aclose()


async def test_a_newcomer_is_served_under_a_flood_of_continuing_programs(tiny_models):
    path, _ = tiny_models["llama"]
    e = sgagent.Engine(str(path), kv_pages=512, page_size=4, max_batch_tokens=32, max_running_requests=2,
                       dtype="float32", starvation_steps=16)
    stop = asyncio.Event()

    @sgagent.program
    async def busy(s, i):
        s += f"Busy {i}: " + SYSTEM
        while not stop.is_set():
            await s.gen(max_tokens=2, temperature=0, ignore_eos=True)

    try:
        runners = asyncio.ensure_future(sgagent.run_batch(busy, [dict(i=i) for i in range(8)], engine=e,
                                                          progress=False))
        await asyncio.sleep(0.3)  # all of them are continuing programs by now
        before = e.counters["steps"]
        await e.generate("a newcomer's first call", max_tokens=1, temperature=0)
        waited = e.counters["steps"] - before
        stop.set()
        await runners
        # it is skipped while continuing calls go first; after 16 skips the age guard puts it first among the
        # starving (behind older starving calls) and it takes the next free running slot
        assert 8 <= waited <= 2 * 16, waited
        assert_released(e)
    finally:
        stop.set()
        await e.aclose()


def test_programs_nobody_ends_are_forgotten_after_a_long_idle():
    from sgagent.engine import programs as P

    now = [0.0]
    table = P.ProgramTable(clock=lambda: now[0])
    for i in range(P.SWEEP_EVERY - 2):  # an agent's per-message states: never ended
        table.end_call(table.begin_call(P.ProgramCall(f"agent/{i}")), True)
    assert len(table.programs) == P.SWEEP_EVERY - 2
    busy = table.begin_call(P.ProgramCall("busy"))  # in flight: never forgotten
    now[0] += P.FORGET_IDLE_S + 1
    table.begin_call(P.ProgramCall("next"))  # the sweep runs every SWEEP_EVERY calls
    assert set(table.programs) == {"busy", "next"} and busy.in_flight == 1
