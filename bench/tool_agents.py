"""Issue 6: 32 agents on one engine, same system prompt and tools, 4 tool steps each; prefix reuse on vs off.

Every call is checked against its tool's own argument model: the share of well-formed calls must be 100%.

python -m bench.tool_agents [--runs 3] [--small]
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import anyio

import sgagent
from sgagent import user
from sgagent.agents import Agent, AgentRuntime
from sgagent.errors import IncompleteGenerationError, ToolArgumentsError
from sgagent.tools import ToolSet, tool, tool_loop

from .common import cli, machine, report


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather in a city.

    Args:
        city: the city's name
        unit: temperature unit
    """
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "sky": "clear"}


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def search(query: str, limit: int = 3) -> list[str]:
    """Search the web and return result titles."""
    await anyio.sleep(0.01)  # a network round trip: tools of different agents overlap
    return [f"{query}: result {i}" for i in range(min(limit, 10))]  # the model picks limit


@tool
def convert(amount: float, currency: Literal["EUR", "USD", "JPY"]) -> float:
    """Convert an amount of US dollars to another currency."""
    return amount * {"EUR": 0.9, "USD": 1.0, "JPY": 150.0}[currency]


TOOLS = ToolSet([get_weather, add, search, convert])
SYSTEM = ("You are a careful research assistant. Use the tools to gather facts step by step before you "
          "answer. Keep the final answer short.")
TASKS = ["Plan a day in Paris: check the weather, find museums, and budget 120 dollars in euros.",
         "What is 17 plus 25, and what is the weather in Tokyo?",
         "Find news about Mars rovers and convert 40 dollars to yen.",
         "Is it warm in Rome? Also add 123 and 456.",
         "Search for the tallest building and check the weather there."]


class ToolAgent(Agent):
    def __init__(self, steps: int, max_tokens: int):
        self.steps, self.max_tokens = steps, max_tokens

    async def handle(self, message, sender):
        i, task = message
        s = self.state()
        s += TOOLS.system(self.engine, SYSTEM)
        s += user(task)
        return await tool_loop(s, TOOLS, max_steps=self.steps, min_steps=self.steps, max_tokens=self.max_tokens,
                               temperature=0.7, seed=i)


def well_formed(results) -> tuple[int, int]:
    good = total = 0
    by_name = {t.name: t for t in TOOLS}
    for r in results:
        for c in r.calls:
            total += 1
            try:
                by_name[c.name].validate(c.arguments)
                good += 1
            except (KeyError, ToolArgumentsError):
                pass
    return good, total


async def workload(engine, agents: int, steps: int, max_tokens: int) -> list:
    async with AgentRuntime(engine) as rt:
        for a in range(agents):
            await rt.spawn(f"agent-{a}", lambda: ToolAgent(steps, max_tokens))
        return await sgagent.gather(*(rt.ask(f"agent-{a}", (a, TASKS[a % len(TASKS)])) for a in range(agents)))


async def warm_up(e) -> None:
    for kw in ({}, {"allow_answer": False}, {"allow_calls": False}):
        try:
            await e.generate("x", json_schema=TOOLS.step_schema(**kw), max_tokens=1)
        except IncompleteGenerationError:
            pass  # one token is all it needed to compile


async def main(runs: int, small: bool) -> None:
    print(f"# tool-calling agents on {machine()}")
    agents, steps, max_tokens = (4, 2, 64) if small else (32, 4, 64)
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    times, stats, good, total = {}, {}, 0, 0
    for radix in (True, False):
        walls = []
        for _ in range(runs):
            e = base.with_config(radix_cache=radix)
            await warm_up(e)  # compiling the step FSMs is not what this measures
            t0 = time.perf_counter()
            results = await workload(e, agents, steps, max_tokens)
            walls.append(time.perf_counter() - t0)
            stats[radix] = e.stats()
            await e.aclose()
            g, n = well_formed(results)
            good, total = good + g, total + n
            assert all(len(r.steps) == steps for r in results), [len(r.steps) for r in results]
        times[radix] = statistics.median(walls)
    on, off = stats[True], stats[False]
    report("tool_agents", agents=agents, tool_steps=steps, on_s=times[True], off_s=times[False],
           ratio=times[False] / times[True], calls=total, well_formed=good / max(total, 1),
           hit_rate=on["cache_hit_rate"], prefill_tokens_on=on["prompt_tokens"] - on["cached_tokens"],
           prefill_tokens_off=off["prompt_tokens"] - off["cached_tokens"], runs=runs)
    if good != total:
        raise SystemExit(f"{total - good} of {total} tool calls were malformed")
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
