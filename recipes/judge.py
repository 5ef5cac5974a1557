"""LLM-as-judge: answer a question, then judge the answer on several criteria in parallel branches.

Shows: one generated answer shared by every judging branch (prefix reuse), `select` over a 1-5 scale for
each criterion, and the per-criterion scores joined back into the parent state.
"""

import sgagent
from sgagent import program, system, user

CRITERIA = ["correctness", "clarity", "concision", "helpfulness"]


@program
async def judged(s, question: str, criteria: list[str]):
    s += system("You are a helpful assistant.")
    s += user(question)
    async with s.assistant():
        await s.gen("answer", max_tokens=48, stop="\n\n", temperature=0.0)
    branches = s.fork(len(criteria))

    async def judge(b, criterion):
        b += user(f"Rate the {criterion} of your answer from 1 (poor) to 5 (excellent). Reply with one digit.")
        async with b.assistant():
            await b.select("score", choices=["1", "2", "3", "4", "5"])

    async with sgagent.join(branches) as group:
        for b, c in zip(branches, criteria):
            group.start(judge(b, c))
    return dict(zip(criteria, (int(x) for x in s["score"])))


async def main(engine, question: str = "Why do we have seasons on Earth?", criteria: int = 4):
    st = await judged.run(engine=engine, question=question, criteria=CRITERIA[:criteria])
    print(f"answer: {st['answer']}")
    for k, v in st.return_value.items():
        print(f"{k:>12}: {v}")
    return {"answer": st["answer"], "scores": st.return_value}
