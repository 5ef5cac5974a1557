"""The suite's workloads, modelled on the SGLang paper's evaluation and written with the recipes' programs.

Each workload runs `n` programs on a backend (an `sgagent.Engine` or a baseline with the same surface) and
returns one output per program. `small` is the CI smoke shape: fewer branches and turns, same code paths.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from sgagent import run_batch

from recipes import (generative_agents, hellaswag, judge, json_extraction, multi_turn_chat, react,
                     skeleton_of_thought, tree_of_thought)
from recipes import few_shot_qa

from . import data


async def _batch(engine, prog, args: list[dict]) -> list:
    """One output per program; a program that failed (e.g. a constrained step cut by max_tokens) gives its error."""
    states = await run_batch(prog, args, engine=engine, progress=False, return_exceptions=True)
    return [st if isinstance(st, BaseException) else st.return_value for st in states]


async def few_shot(engine, n: int, small: bool):
    return await _batch(engine, few_shot_qa.answer, [{"question": q, "options": o} for q, o, _ in data.mmlu_items(n)])


async def warm_few_shot(engine, small: bool):
    """Untimed: one question, so the 5-shot prefix the timed ones share is cached before the clock starts."""
    await few_shot(engine, 1, small)


async def hellaswag_select(engine, n: int, small: bool):
    shots = data.hellaswag_shots()
    return await _batch(engine, hellaswag.complete, [{"context": shots + c, "endings": e, "method": "normalized"}
                                                     for c, e in data.hellaswag_items(n)])


async def react_agent(engine, n: int, small: bool):
    runs = await asyncio.gather(*(react.main(engine, question=q, max_steps=1 if small else 2)
                                  for q in data.react_questions(n)), return_exceptions=True)
    return [r if isinstance(r, BaseException) else r["trace"] for r in runs]


async def tree_of_thought_search(engine, n: int, small: bool):
    width, depth = (2, 1) if small else (3, 2)
    return await _batch(engine, tree_of_thought.solve, [{"question": q, "width": width, "depth": depth}
                                                        for q in data.puzzle_questions(n)])


async def skeleton_of_thought_answer(engine, n: int, small: bool):
    return await _batch(engine, skeleton_of_thought.answer, [{"question": q, "points": 2 if small else 3}
                                                             for q in data.how_questions(n)])


async def llm_judge(engine, n: int, small: bool):
    criteria = judge.CRITERIA[:2] if small else judge.CRITERIA
    return await _batch(engine, judge.judged, [{"question": q, "criteria": criteria} for q in data.how_questions(n)])


async def json_decode(engine, n: int, small: bool):
    return await _batch(engine, json_extraction.extract, [{"doc": d} for d in data.person_docs(n)])


async def multi_turn_short(engine, n: int, small: bool):
    turns = 2 if small else 6
    return await _batch(engine, multi_turn_chat.chat, [{"opener": o, "turns": turns, "max_tokens": 8}
                                                       for o in data.chat_openers(n)])


async def multi_turn_long(engine, n: int, small: bool):
    turns = 2 if small else 4
    return await _batch(engine, multi_turn_chat.chat, [{"opener": o, "turns": turns, "max_tokens": 128}
                                                       for o in data.chat_openers(n)])


async def generative_agents_talk(engine, n: int, small: bool):
    return (await generative_agents.main(engine, rounds=n))["conversations"]


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    run: Callable[..., Awaitable[list]]
    full: int  # programs at full size (for generative agents: rounds of two conversations)
    small: int
    prepare: Callable[..., Awaitable[None]] | None = None  # untimed, on the same system, before the clock


WORKLOADS = {w.name: w for w in [
    Workload("few_shot", "MMLU-style 5-shot questions, answer picked with select (cold: nothing cached)", few_shot,
             64, 2),
    Workload("few_shot_warm", "the same, the shared 5-shot prefix cached before the clock", few_shot, 64, 2,
             prepare=warm_few_shot),
    Workload("hellaswag", "HellaSwag-style: 2-shot context, 4 endings scored with select", hellaswag_select, 64, 2),
    Workload("react", "ReAct agent: thought, constrained tool call, observation", react_agent, 8, 1),
    Workload("tree_of_thought", "3 proposals a level x 2 levels, each verified with select", tree_of_thought_search, 4, 1),
    Workload("skeleton_of_thought", "regex outline, then 3 points expanded in parallel", skeleton_of_thought_answer, 8, 1),
    Workload("judge", "one answer, 4 criteria judged in parallel branches", llm_judge, 8, 1),
    Workload("json", "JSON extraction with a 4-field schema", json_decode, 32, 1),
    Workload("multi_turn_short", "6 turns, 8-token replies", multi_turn_short, 16, 2),
    Workload("multi_turn_long", "4 turns, 128-token replies", multi_turn_long, 8, 1),
    Workload("generative_agents", "4 villagers with memories, paired conversations per round", generative_agents_talk, 3, 1),
]}
