"""The tool loop: the model calls tools (constrained JSON), they run concurrently, results go back, repeat.

It ends when the model calls `final_answer`, or at the step budget, where one last step allows only the
final answer so the loop always ends with one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import IncompleteGenerationError
from ..primitives.roles import tool_result, user
from .schema import FINAL
from .toolset import ToolCall, ToolResult, ToolSet


CUT = "Your last reply was cut off at the token limit before its JSON was complete. Reply with a shorter call."


@dataclass
class ToolStep:
    calls: list[ToolCall]
    results: list[ToolResult] = field(default_factory=list)
    error: str | None = None  # set when the step's call was cut at max_tokens and never ran


@dataclass
class ToolLoopResult:
    answer: str | None
    steps: list[ToolStep]
    reason: str  # "answer" | "budget" (forced after max_steps tool steps) | "length" (cut at max_tokens)

    @property
    def calls(self) -> list[ToolCall]:
        return [c for s in self.steps for c in s.calls]


async def tool_loop(s, tools: ToolSet, *, max_steps: int = 4, min_steps: int = 0, parallel: int = 1,
                    max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
                    name: str | None = None, **sampling) -> ToolLoopResult:
    """Run the tool loop on program state `s` (which already holds tools.system(...) and the task).

    Every step is an assistant message holding the call JSON; every result a tool message, rendered by the
    chat template. The first `min_steps` steps must call tools (the final answer is not offered yet). The
    answer is also stored in `s[name]` when a name is given.
    """
    if not 0 <= min_steps <= max_steps:
        raise ValueError(f"min_steps must be within 0..max_steps ({min_steps=}, {max_steps=})")
    steps: list[ToolStep] = []
    reason = "answer"
    answer = None
    for step_no in range(max_steps + 1):
        last = step_no == max_steps
        schema = tools.step_schema(parallel=parallel, allow_calls=not last, allow_answer=step_no >= min_steps)
        cut = False
        async with s.assistant():
            try:
                value = await s.gen(json_schema=schema, max_tokens=max_tokens, temperature=temperature,
                                    seed=None if seed is None else seed + step_no, **sampling)
            except IncompleteGenerationError as e:
                # an answer cut at max_tokens is still an answer (as plain gen would return it); a cut call
                # cannot run, so the model is told and the step counts against the budget
                answer = _cut_answer(e.text)
                if answer is not None:
                    s += json.dumps({"name": FINAL, "arguments": {"answer": answer}})
                    reason = "length"
                    break
                if last:
                    raise
                s += e.text
                cut = True
        if cut:
            steps.append(ToolStep([], error=CUT))
            s.log.info("tool.step_cut", step=step_no, max_tokens=max_tokens)
            s += user(CUT)
            continue
        calls = tools.parse(value)
        if len(calls) == 1 and calls[0].name == FINAL:
            answer = calls[0].arguments["answer"]
            reason = "budget" if last else "answer"
            break
        step = ToolStep(calls)
        s.log.info("tool.step", step=step_no, tools=[c.name for c in calls], tool_call_ids=[c.id for c in calls])
        step.results = await tools.run(calls)
        for r in step.results:
            s += tool_result(r.content(tools.max_result_chars), name=r.call.name, tool_call_id=r.call.id)
        steps.append(step)
    if name is not None:
        s._set(name, answer, {"tool_steps": len(steps), "reason": reason})
    return ToolLoopResult(answer, steps, reason)


_ANSWER_START = re.compile(r'\s*\{\s*"name"\s*:\s*"%s"\s*,\s*"arguments"\s*:\s*\{\s*"answer"\s*:\s*"' % FINAL)


def _cut_answer(partial: str) -> str | None:
    """The answer string of a final-answer step cut short, or None when the step was not one."""
    m = _ANSWER_START.match(partial)
    if m is None:
        return None
    body = partial[m.end():]
    for end in range(len(body), max(len(body) - 6, -1), -1):  # drop a half-written escape at the cut
        try:
            return json.loads('"' + body[:end] + '"')
        except json.JSONDecodeError:
            continue
    return None
