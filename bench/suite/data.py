"""Synthetic inputs for the suite's workloads, generated deterministically (nothing is downloaded).

Every program gets its own input: identical prompts would turn the cache comparison into a replay.
"""

from __future__ import annotations

NAMES = ["Ana", "Ben", "Cai", "Dee", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Lea", "Max", "Nia",
         "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wen", "Yara"]
CITIES = ["Madrid", "Hamburg", "Toronto", "Seoul", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Lyon"]
ROLES = ["engineer", "teacher", "doctor", "artist"]
OPS = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]


def mmlu_items(n: int) -> list[tuple[str, list[str], str]]:
    """Arithmetic multiple-choice questions, the right option at a rotating letter."""
    out = []
    for i in range(n):
        name, f = OPS[i % 3]
        a, b = 4 + i * 7 % 40, 2 + i * 3 % 11
        right = f(a, b)
        wrong = [right + d for d in (-2, 3, 7)]
        k = i % 4
        options = [str(x) for x in wrong[:k] + [right] + wrong[k:]]
        out.append((f"What is {a} {name} {b}?", options, "ABCD"[k]))
    return out


SCENES = [
    ("pours water into a kettle and turns it on. A few minutes later,",
     [" the kettle whistles and tea is made.", " the kettle flies out of the window.",
      " the kettle is planted in the garden.", " the water turns into sand."]),
    ("puts on a helmet and climbs onto a bicycle, then",
     [" eats the helmet for lunch.", " pedals down the street toward the park.",
      " folds the bicycle into a paper plane.", " sings to the bicycle until it sleeps."]),
    ("cracks two eggs into a hot pan, then",
     [" mails the pan to an aunt.", " paints the eggs blue.", " stirs them gently and adds salt.",
      " throws the stove into the lake."]),
    ("sees heavy rain starting outside and",
     [" opens an umbrella before walking out.", " sells both shoes to the rain.",
      " climbs into the oven to stay dry.", " asks the rain for directions."]),
    ("sits down at the piano, opens the music book and",
     [" eats the piano keys one by one.", " starts to play a slow song.", " mails the book to the moon.",
      " turns the piano into a boat."]),
    ("finds the garden dry after a hot week, so",
     [" waters the plants with a hose.", " paints the grass purple.", " teaches the roses to swim.",
      " sells the sun to a neighbour."]),
]


def hellaswag_shots() -> str:
    return "".join(f"{NAMES[-1 - k]} {ctx}{endings[0]}\n\n" for k, (ctx, endings) in enumerate(SCENES[:2]))


def hellaswag_items(n: int) -> list[tuple[str, list[str]]]:
    return [(f"{NAMES[i % len(NAMES)]} {SCENES[i % len(SCENES)][0]}", SCENES[i % len(SCENES)][1]) for i in range(n)]


REACT = ["How many times taller is Mount Everest than the Eiffel Tower?", "How tall is the Eiffel Tower in feet?",
         "How long is the Great Wall of China in miles?", "What is the height of Mount Everest minus 8000?",
         "Is the Great Wall longer than 20,000 km?", "How many Eiffel Towers stacked reach 1 km?"]


def react_questions(n: int) -> list[str]:
    return [REACT[i % len(REACT)] + ("" if i < len(REACT) else f" (case {i})") for i in range(n)]


def puzzle_questions(n: int) -> list[str]:
    return [f"{NAMES[i % len(NAMES)]} has {12 + i} apples, buys {3 + i % 5} more and gives away {2 + i % 4}. "
            "How many are left?" for i in range(n)]


TOPICS = ["reduce traffic in a small town", "learn a language in a year", "get teenagers into a library",
          "cut a household's energy bill", "pick a startup's first market", "reduce food waste at a school",
          "train for a first marathon", "fund a new museum wing", "keep a remote team connected",
          "make a city park safer", "start a community garden", "teach children to save money"]


def how_questions(n: int) -> list[str]:
    return [f"How can one {TOPICS[i % len(TOPICS)]}?" + ("" if i < len(TOPICS) else f" Idea set {i}.")
            for i in range(n)]


def person_docs(n: int) -> list[str]:
    forms = ["{name} {last}, {age}, works as {art} {role} in {city}.",
             "{name} {last} is a {age} year old {role} living in {city}.",
             "In {city} lives {name} {last}, {art} {role} aged {age}."]
    lasts = ["Lopez", "Becker", "Khan", "Park", "Silva", "Novak", "Ito", "Mensah"]
    out = []
    for i in range(n):
        role = ROLES[i % 4]
        out.append(forms[i % 3].format(name=NAMES[i % len(NAMES)], last=lasts[i % len(lasts)], age=23 + i * 7 % 40,
                                       role=role, art="an" if role[0] in "aeiou" else "a",
                                       city=CITIES[i % len(CITIES)]))
    return out


OPENERS = ["I want to learn to cook.", "I am planning a trip to Japan.", "I just got a puppy.",
           "I want to start running.", "I am moving to a new city.", "I want to read more books."]


def chat_openers(n: int) -> list[str]:
    return [f"Hi, I am {NAMES[i % len(NAMES)]}. {OPENERS[i % len(OPENERS)]}" for i in range(n)]
