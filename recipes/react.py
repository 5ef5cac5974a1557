"""ReAct: the model alternates a free-text thought with a schema-constrained action, and reads observations.

Shows: mixing unconstrained generation (the thought) and constrained generation (the action, one of the
tools' call schemas or the final answer) inside one assistant turn, and tool results as observations.
"""

import json
from typing import Annotated, Literal

from pydantic import Field

from sgagent import ProgramState, user
from sgagent.tools import FINAL, ToolSet, tool

FACTS = {"eiffel tower": "The Eiffel Tower is 330 metres tall and stands in Paris.",
         "mount everest": "Mount Everest is 8,849 metres tall, on the Nepal-China border.",
         "great wall": "The Great Wall of China is over 21,000 km long."}


@tool
def lookup(topic: Annotated[str, Field(max_length=40)]) -> str:
    """Look up a short encyclopedia entry about a topic."""
    key = topic.lower().strip()
    return next((v for k, v in FACTS.items() if k in key or key in k), f"No entry for {topic!r}.")


@tool
def calculate(a: float, b: float, op: Literal["+", "-", "*", "/"]) -> float:
    """Apply op (one of + - * /) to a and b."""
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]


TOOLS = ToolSet([lookup, calculate], timeout=10)


async def main(engine, question: str = "How many times taller is Mount Everest than the Eiffel Tower?",
               max_steps: int = 3):
    s = ProgramState(engine)
    s += TOOLS.system(engine, "Think step by step. Each turn write 'Thought:' with one sentence, then the "
                              "JSON action.")
    s += user(question)
    trace = []
    for step in range(max_steps + 1):
        last = step == max_steps
        async with s.assistant():
            s += "Thought:"
            thought = await s.gen(max_tokens=40, stop="\n", temperature=0.0)
            s += "\n"
            action = await s.gen(json_schema=TOOLS.step_schema(allow_calls=not last), max_tokens=96,
                                 temperature=0.0)
        (call,) = TOOLS.parse(action)
        trace.append((thought.strip(), call.name, call.arguments))
        if call.name == FINAL:
            break
        (result,) = await TOOLS.run([call])
        s += user(f"Observation: {result.content()}")
    for thought, name, args in trace:
        print(f"Thought: {thought}\nAction: {name} {json.dumps(args)}")
    return {"trace": trace, "answer": trace[-1][2].get("answer") if trace[-1][1] == FINAL else None}
