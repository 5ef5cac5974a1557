"""The main job: one agent program that shows the product on the default model.

It forks three branches that share the prompt (computed once) to propose plans concurrently, makes a tool
call whose JSON is constrained to the tool's schema, picks the plan that suits the forecast with `select`,
and ends with the engine's numbers: tokens/s and the prefix-cache hit rate.
"""

import time
from typing import Literal

import sgagent
from sgagent import ProgramState, program, system, user
from sgagent.tools import ToolSet, tool


@tool
def get_weather(city: str, day: Literal["saturday", "sunday"]) -> dict:
    """The weather forecast for a city on a day of the coming weekend."""
    return {"city": city, "day": day, "forecast": "sunny" if day == "saturday" else "rain", "high_c": 24}


TOOLS = ToolSet([get_weather])


@program
async def weekend(s, city: str, ideas: int):
    s += system("You are a concise travel planner.")
    s += user(f"I have a free Saturday in {city}. Suggest one activity, in one sentence.")
    branches = s.fork(ideas)  # every branch shares the prompt above, computed once

    async def idea(b, i):
        async with b.assistant():
            await b.gen("plan", max_tokens=40, stop="\n", temperature=0.7, top_p=0.9, seed=i)

    async with sgagent.join(branches) as group:
        for i, b in enumerate(branches):
            group.start(idea(b, i))

    # the weather comes from a tool; the call's JSON is constrained to the tool's schema
    t = ProgramState(s.engine, f"{s.program_id}/tool")
    t += TOOLS.system(s.engine, "You call tools for a travel planner.")
    t += user(f"Check the weather in {city} on Saturday.")
    async with t.assistant():
        call = await t.gen(json_schema=TOOLS.step_schema(allow_answer=False), max_tokens=48, temperature=0.0)
    (result,) = await TOOLS.run(TOOLS.parse(call))

    s += user("Plans:\n" + "\n".join(f"{'ABC'[i]}. {p.strip()}" for i, p in enumerate(s["plan"]))
              + f"\nForecast: {result.content()}\nWhich plan suits the weather best? Answer with the letter.")
    async with s.assistant():
        best = await s.select("best", choices=list("ABC"[:ideas]))
    return result, s["plan"], best


async def main(engine, city: str = "Lisbon", ideas: int = 3):
    t0 = time.perf_counter()
    st = await weekend.run(engine=engine, city=city, ideas=ideas)
    dt = time.perf_counter() - t0
    result, plans, best = st.return_value
    print(f"tool call: {result.call.name}({result.call.arguments}) -> {result.content()}")
    for i, p in enumerate(plans):
        print(f"plan {'ABC'[i]}: {p.strip()}")
    stats = engine.stats()
    print(f"best: {best}\n[{stats['decode_tokens']} tokens decoded in {dt:.1f} s "
          f"({stats['decode_tokens'] / dt:.1f} tokens/s); prefix cache hit rate {stats['cache_hit_rate']:.0%}]")
    return {"call": (result.call.name, result.call.arguments), "plans": plans, "best": best,
            "cache_hit_rate": stats["cache_hit_rate"]}
