"""Skeleton-of-thought: write a short outline, expand every point in parallel, then join the expansions.

Shows: a regex-constrained outline (exactly N numbered points), `fork`/`join` expanding the points
concurrently on the shared prefix, and joined branch variables coming back as a list.
"""

import sgagent
from sgagent import program, system, user


@program
async def answer(s, question: str, points: int):
    s += system("You answer with a skeleton first, then expand each point.")
    s += user(f"{question}\nFirst list {points} key points, a few words each.")
    line = r"[A-Za-z][A-Za-z ,'-]{2,40}"
    async with s.assistant():
        outline = await s.gen("outline", regex="\n".join(f"{i + 1}\\. {line}" for i in range(points)),
                              max_tokens=24 * points, temperature=0.0)
    items = [row.split(". ", 1)[1] for row in outline.splitlines()]
    branches = s.fork(points)

    async def expand(b, i):
        b += user(f"Expand point {i + 1} ({items[i]}) in one or two sentences.")
        async with b.assistant():
            await b.gen("expansion", max_tokens=48, stop="\n\n", temperature=0.0)

    async with sgagent.join(branches) as group:
        for i, b in enumerate(branches):
            group.start(expand(b, i))
    return "\n".join(f"{i + 1}. {head}: {body.strip()}" for i, (head, body) in enumerate(zip(items, s["expansion"])))


async def main(engine, question: str = "How can a small team ship software reliably?", points: int = 3):
    st = await answer.run(engine=engine, question=question, points=points)
    print(st.return_value)
    return {"outline": st["outline"], "expansions": st["expansion"], "text": st.return_value}
