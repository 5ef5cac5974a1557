"""Tree-of-thought: propose several next thoughts in parallel branches, score each, expand the best.

Shows: `fork` (branches share the whole prompt so far, computed once), `join` running them concurrently,
`select` as a cheap evaluator, and picking the best branch to continue from.
"""

import sgagent
from sgagent import program, system, user


@program
async def solve(s, question: str, width: int, depth: int):
    s += system("You solve problems step by step, one short step at a time.")
    s += user(question)
    chosen_steps = []
    for level in range(depth):
        branches = s.fork(width)

        async def propose(b, i):
            b += user(f"Write next step number {level + 1} (idea {i + 1}), in one sentence.")
            async with b.assistant():
                await b.gen("step", max_tokens=32, stop="\n", temperature=0.8, seed=level * 100 + i)
            b += user("Is that step correct and useful? Answer yes or no.")
            async with b.assistant():
                await b.select("verdict", choices=["yes", "no"])

        async with sgagent.join(branches) as group:
            for i, b in enumerate(branches):
                group.start(propose(b, i))
        scores = [b.info["verdict"]["scores"]["yes"] for b in branches]
        best = max(range(width), key=scores.__getitem__)
        chosen_steps.append(s["step"][best])
        s += user(f"Step {level + 1}: {s['step'][best]}")  # the best thought becomes part of the trunk
    s += user("Now give the final answer in one sentence.")
    async with s.assistant():
        await s.gen("answer", max_tokens=40, stop="\n", temperature=0.0)
    return chosen_steps, s["answer"]


async def main(engine, question: str = "A farmer has 17 sheep and buys 5 more, then sells 8. How many are left?",
               width: int = 3, depth: int = 2):
    st = await solve.run(engine=engine, question=question, width=width, depth=depth)
    steps, answer = st.return_value
    for i, step in enumerate(steps):
        print(f"step {i + 1}: {step}")
    print(f"answer: {answer}\ncache hit rate {engine.stats()['cache_hit_rate']:.0%}")
    return {"steps": steps, "answer": answer}
