"""Generative agents: a few characters with personas and memories talk to each other as actors.

Shows: agents (actors with mailboxes) on one shared engine, `ask` between agents, each agent's memory
written into its prompt, and the shared system prompt reused across every agent's calls.
"""

import anyio

from sgagent import system, user
from sgagent.agents import Agent, AgentRuntime, Restart

WORLD = "A small seaside village. Everyone knows each other and meets at the market in the morning."
PEOPLE = {"ana": "Ana, the baker, cheerful and curious", "ben": "Ben, the fisherman, quiet and practical",
          "cai": "Cai, the schoolteacher, thoughtful and kind", "dee": "Dee, the mayor, busy and ambitious"}


class Villager(Agent):
    def __init__(self, persona: str):
        self.persona = persona
        self.memory: list[str] = []

    def prompt(self):
        s = self.state()
        s += system(f"{WORLD}\nYou are {self.persona}. Reply in one short sentence.")
        if self.memory:
            s += user("Things you remember:\n" + "\n".join(f"- {m}" for m in self.memory[-6:]))
        return s

    async def handle(self, message, sender):
        kind, text = message
        if kind == "start":  # text names the villager to talk to
            s = self.prompt()
            s += user(f"You meet {text} at the market. Say something to them.")
            async with s.assistant():
                line = await s.gen(max_tokens=32, stop="\n", temperature=0.7, seed=len(self.memory))
            reply = await self.ask(text, ("say", line.strip()), timeout=120)
            self.memory += [f"I told {text}: {line.strip()}", f"{text} replied: {reply}"]
            return line.strip(), reply
        s = self.prompt()
        s += user(f"{sender} says to you: {text}")
        async with s.assistant():
            reply = (await s.gen(max_tokens=32, stop="\n", temperature=0.7, seed=len(self.memory))).strip()
        self.memory += [f"{sender} told me: {text}", f"I replied: {reply}"]
        return reply


def round_robin(names: list[str], r: int) -> list[tuple[str, str]]:
    """Round r of the circle method: every agent in exactly one pair, every pair meets once per n-1 rounds."""
    rest = names[1:]
    k = r % len(rest)
    order = [names[0]] + rest[k:] + rest[:k]
    half = len(order) // 2
    return list(zip(order[:half], reversed(order[half:])))


async def main(engine, rounds: int = 2):
    names = list(PEOPLE)
    log = []
    async with AgentRuntime(engine) as rt:
        for n in names:
            await rt.spawn(n, lambda n=n: Villager(PEOPLE[n]), policy=Restart(max_restarts=2), mailbox_size=8)
        for r in range(rounds):
            pairs = round_robin(names, r)  # disjoint pairs: an agent asking while being asked would wait forever
            results = {}

            async def talk(a, b):
                results[a, b] = await rt.ask(a, ("start", b), timeout=300)

            async with anyio.create_task_group() as tg:
                for a, b in pairs:
                    tg.start_soon(talk, a, b)
            for (a, b), (line, reply) in results.items():
                print(f"[round {r + 1}] {a} -> {b}: {line}\n{'':>10}{b}: {reply}")
                log.append((r, a, b, line, reply))
    print(f"cache hit rate {engine.stats()['cache_hit_rate']:.0%}")
    return {"conversations": log}
