"""HellaSwag-style commonsense completion: pick the most likely ending of a situation with `select`.

Shows: `select` with summed ("total") and per-token ("normalized") log-probabilities over endings of
different lengths, all scored in one batch that shares the context.
"""

from sgagent import program, run_batch

ITEMS = [
    ("A man pours water into a kettle and turns it on. A few minutes later,",
     [" the kettle whistles and he makes tea.", " the kettle flies out of the window.",
      " he plants the kettle in the garden.", " the water turns into sand."], 0),
    ("A girl puts on her helmet and climbs onto her bicycle. She",
     [" eats the helmet for lunch.", " pedals down the street toward the park.",
      " folds the bicycle into a paper plane.", " sings to the bicycle until it sleeps."], 1),
    ("The chef cracks two eggs into a hot pan. Then he",
     [" mails the pan to his aunt.", " paints the eggs blue.", " stirs them gently and adds salt.",
      " throws the stove into the lake."], 2),
    ("It starts to rain heavily, so the woman",
     [" opens her umbrella and walks faster.", " takes off her shoes and sells them.",
      " climbs into the oven.", " asks the rain for directions."], 0),
]


@program
async def complete(s, context: str, endings: list[str], method: str):
    s += context
    return await s.select("ending", choices=endings, method=method)


async def main(engine, items: int = 4, method: str = "normalized"):
    chosen = [ITEMS[i % len(ITEMS)] for i in range(items)]
    states = await run_batch(complete, [{"context": c, "endings": e, "method": method} for c, e, _ in chosen],
                             engine=engine)
    picks = [e.index(st.return_value) for st, (_, e, _) in zip(states, chosen)]
    correct = sum(p == gold for p, (_, _, gold) in zip(picks, chosen))
    print(f"{method}: {correct}/{len(chosen)} endings right")
    return {"picks": picks, "correct": correct}
