"""The agent workloads of the benchmarks, each written twice: as raw engine calls and as sgagent programs."""

from __future__ import annotations

import asyncio

import sgagent
from sgagent import program

OPS = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]


def few_shot_prefix(n_examples: int = 40) -> str:
    lines = []
    for i in range(n_examples):
        name, f = OPS[i % 3]
        a, b = 3 + i * 7 % 50, 2 + i * 5 % 20
        lines.append(f"Question: What is {a} {name} {b}?\nAnswer: {f(a, b)}\n")
    return "\n".join(lines) + "\n"


def few_shot_questions(n: int) -> list[str]:
    return [f"Question: What is {10 + i} {OPS[i % 3][0]} {i % 9 + 2}?\nAnswer:" for i in range(n)]


# -- raw engine calls ----------------------------------------------------------------------------
async def few_shot_raw(engine, n: int = 64, new: int = 16, n_examples: int = 40):
    prefix = few_shot_prefix(n_examples)
    return await asyncio.gather(*(engine.generate(prefix + q, max_tokens=new, temperature=0, ignore_eos=True)
                                  for q in few_shot_questions(n)))


TURNS = ["Hi! Can you help me plan a trip?", "I want to visit Japan in spring.", "What should I pack?",
         "How many days in Kyoto?", "Any food I must try?", "Thanks, summarize the plan."]

NOTES = ["The train from the airport leaves every twenty minutes and the ticket covers the first transfer.",
         "My budget for the hotel is modest, but I would pay more for a quiet room near the river.",
         "We will arrive on a Thursday morning and leave on the Tuesday evening after.",
         "Two of us like museums and gardens, one prefers markets, street food and long walks.",
         "Last time the temples were crowded by nine, so this time we want to start at dawn.",
         "A friend said the day pass for buses pays off after the third ride of the day.",
         "I keep a list of places with opening hours, prices and how long each visit takes.",
         "Rain is likely on one or two days, so indoor plans matter as much as the outdoor ones."]


def long_message(engine, rng, tokens: int) -> str:
    """A user turn of at least `tokens` tokens: travel notes in an order drawn from rng."""
    text = ""
    while len(engine.tokenize(text)) < tokens:
        text += rng.choice(NOTES) + " "
    return text.strip()


async def multi_turn_raw(engine, convs: int = 16, turns: int = 6, q_len=(256, 512), a_len=(4, 8), seed: int = 0):
    """The shape of SGLang's own multi-turn benchmark (benchmark/multi_turn_chat, "short output"): every turn
    sends a long user message (q_len tokens) and gets a short reply (a_len tokens, EOS ignored), so each turn's
    prompt is mostly the conversation so far."""
    import random

    rng = random.Random(seed)
    plans = [[(long_message(engine, rng, rng.randint(*q_len)), rng.randint(*a_len)) for _ in range(turns)]
             for _ in range(convs)]

    async def conv(i):
        msgs = [{"role": "system", "content": f"You are travel agent #{i}. Be concise."}]
        for text, new in plans[i]:
            msgs.append({"role": "user", "content": text})
            r = await engine.generate(messages=msgs, max_tokens=new, temperature=0, ignore_eos=True)
            msgs.append({"role": "assistant", "content": r.text})
        return msgs

    return await asyncio.gather(*(conv(i) for i in range(convs)))


async def multi_turn_chatty_raw(engine, convs: int = 16, turns: int = 6, new: int = 24):
    """Short user lines and 24-token replies: reuse saves little here, the replies' decode steps dominate."""
    async def conv(i):
        msgs = [{"role": "system", "content": f"You are travel agent #{i}. Be concise."}]
        for t in TURNS[:turns]:
            msgs.append({"role": "user", "content": t})
            r = await engine.generate(messages=msgs, max_tokens=new, temperature=0)
            msgs.append({"role": "assistant", "content": r.text})
        return msgs

    return await asyncio.gather(*(conv(i) for i in range(convs)))


QUESTIONS = ["How can a small town reduce traffic?", "How do I learn a language in a year?",
             "How could a library attract teenagers?", "How to cut a household's energy bill?",
             "How should a startup pick its first market?", "How can a school reduce food waste?",
             "How do I train for a first marathon?", "How can a museum fund a new wing?"]


async def tree_of_thought_raw(engine, questions: int = 8, branches: int = 2, depth: int = 3, new: int = 32):
    async def expand(prompt: str, level: int):
        if level == depth:
            return 1
        rs = await asyncio.gather(*(engine.generate(prompt + f"\nIdea {level}.{b}:", max_tokens=new, temperature=0,
                                                    ignore_eos=True) for b in range(branches)))
        counts = await asyncio.gather(*(expand(prompt + f"\nIdea {level}.{b}:" + r.text, level + 1)
                                        for b, r in enumerate(rs)))
        return sum(counts)

    base = [engine.render([{"role": "user", "content": q}]) + "Let us think step by step." for q in QUESTIONS[:questions]]
    return await asyncio.gather(*(expand(p, 0) for p in base))


# -- the same as programs ----------------------------------------------------------------------
@program
async def few_shot_prog(s, prefix: str, question: str, new: int):
    s += prefix + question
    return await s.gen("answer", max_tokens=new, temperature=0, ignore_eos=True)


async def few_shot_programs(engine, n: int = 64, new: int = 16, n_examples: int = 40):
    prefix = few_shot_prefix(n_examples)
    return await sgagent.run_batch(few_shot_prog, [dict(prefix=prefix, question=q, new=new)
                                                   for q in few_shot_questions(n)],
                                   engine=engine, progress=False)


@program
async def tot_prog(s, question: str, branches: int, depth: int, new: int):
    s += sgagent.user(question)
    s += s._chat.role_prefix(s._history, "assistant") + "Let us think step by step."

    async def expand(st, level):
        if level == depth:
            return 1
        kids = st.fork(branches)
        for b, k in enumerate(kids):
            k += f"\nIdea {level}.{b}:"
        await sgagent.gather(*(k.gen("idea", max_tokens=new, temperature=0, ignore_eos=True) for k in kids))
        return sum(await sgagent.gather(*(expand(k, level + 1) for k in kids)))

    return await expand(s, 0)


async def tree_of_thought_programs(engine, questions: int = 8, branches: int = 2, depth: int = 3, new: int = 32):
    return await sgagent.run_batch(tot_prog, [dict(question=q, branches=branches, depth=depth, new=new)
                                              for q in QUESTIONS[:questions]], engine=engine, progress=False)
