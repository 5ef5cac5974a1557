"""Few-shot QA, MMLU-style: a fixed block of worked examples, then each question's answer chosen with `select`.

Shows: a long shared prefix (the examples) computed once and reused by every question through the radix
cache, `select` scoring the options A-D by likelihood, and `run_batch` running the questions together.
"""

from sgagent import program, run_batch

EXAMPLES = [
    ("What is the boiling point of water at sea level in Celsius?", ["90", "100", "110", "120"], "B"),
    ("Which planet is known as the Red Planet?", ["Venus", "Jupiter", "Mars", "Saturn"], "C"),
    ("How many sides does a hexagon have?", ["Six", "Five", "Eight", "Seven"], "A"),
    ("Which gas do plants absorb from the air?", ["Oxygen", "Nitrogen", "Helium", "Carbon dioxide"], "D"),
    ("What is 7 times 8?", ["54", "56", "58", "64"], "B"),
]
QUESTIONS = [
    ("What is the capital of France?", ["Berlin", "Madrid", "Paris", "Rome"], "C"),
    ("How many legs does a spider have?", ["Eight", "Six", "Ten", "Four"], "A"),
    ("Which is the largest ocean?", ["Atlantic", "Indian", "Arctic", "Pacific"], "D"),
    ("What is 12 plus 15?", ["25", "27", "29", "31"], "B"),
    ("What color is a ripe banana?", ["Blue", "Red", "Yellow", "Purple"], "C"),
    ("Which animal is known for its long neck?", ["Giraffe", "Lion", "Bear", "Wolf"], "A"),
    ("How many days are in a week?", ["Five", "Six", "Eight", "Seven"], "D"),
    ("What do bees make?", ["Milk", "Honey", "Silk", "Wax paper"], "B"),
]


def render(question: str, options: list[str]) -> str:
    return f"Question: {question}\n" + "".join(f"{k}. {o}\n" for k, o in zip("ABCD", options)) + "Answer:"


PREFIX = "The following are multiple choice questions (with answers).\n\n" + "".join(
    render(q, o) + f" {a}\n\n" for q, o, a in EXAMPLES)


@program
async def answer(s, question: str, options: list[str]):
    s += PREFIX + render(question, options)
    return await s.select("answer", choices=[" A", " B", " C", " D"])


async def main(engine, questions: int = 8):
    items = [QUESTIONS[i % len(QUESTIONS)] for i in range(questions)]
    states = await run_batch(answer, [{"question": q, "options": o} for q, o, _ in items], engine=engine)
    picked = [st.return_value.strip() for st in states]
    correct = sum(p == a for p, (_, _, a) in zip(picked, items))
    stats = engine.stats()
    print(f"accuracy {correct}/{len(items)}; prefix cache hit rate {stats['cache_hit_rate']:.0%}")
    return {"picked": picked, "correct": correct, "cache_hit_rate": stats["cache_hit_rate"]}
