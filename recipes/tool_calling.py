"""A tool-calling loop: typed Python tools, schema-constrained calls, results fed back until an answer.

Shows: `@tool` deriving each tool's schema from type hints, `tool_loop` constraining every call to the
offered tools' schemas (always well-formed), tools running concurrently, and errors returned to the model.
"""

from typing import Literal

from sgagent import ProgramState, user
from sgagent.tools import ToolSet, tool, tool_loop

RATES = {"EUR": 0.92, "GBP": 0.79, "JPY": 151.0}


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather in a city.

    Args:
        city: the city's name
        unit: temperature unit
    """
    temp = 18 + len(city) % 10
    return {"city": city, "temperature": temp if unit == "celsius" else round(temp * 9 / 5 + 32), "unit": unit}


@tool
def convert(amount: float, currency: Literal["EUR", "GBP", "JPY"]) -> float:
    """Convert US dollars into another currency."""
    return round(amount * RATES[currency], 2)


TOOLS = ToolSet([get_weather, convert], timeout=10)


async def main(engine, task: str = "What is the weather in Lisbon, and what are 50 dollars in euros?",
               max_steps: int = 3):
    s = ProgramState(engine)
    s += TOOLS.system(engine, "Use the tools to answer. Call one tool at a time.")
    s += user(task)
    r = await tool_loop(s, TOOLS, max_steps=max_steps, max_tokens=96, temperature=0.0)
    for step in r.steps:
        for res in step.results:
            print(f"{res.call.name}({res.call.arguments}) -> {res.content()}")
    print(f"answer ({r.reason}): {r.answer}")
    return {"calls": [(c.name, c.arguments) for c in r.calls], "answer": r.answer, "reason": r.reason}
