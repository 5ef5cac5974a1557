"""JSON extraction: read free text, return a validated pydantic object; the schema constrains every token.

Shows: `gen(json_schema=Model)` returning a model instance, jump-forward over the JSON keys the schema
forces, and a batch of documents sharing the instruction prefix.
"""

from typing import Literal

from pydantic import BaseModel, Field

from sgagent import program, run_batch, system, user


class Contact(BaseModel):
    name: str = Field(max_length=40)
    age: int
    city: str = Field(max_length=30)
    role: Literal["engineer", "teacher", "doctor", "artist", "other"]


DOCS = [
    "Maria Lopez, 34, works as an engineer in Madrid and builds bridges.",
    "Tom Becker is a 52 year old teacher living in Hamburg.",
    "Dr. Aisha Khan (41) is a doctor at a hospital in Toronto.",
    "Lee Park, an artist aged 29, paints murals around Seoul.",
]


@program
async def extract(s, doc: str):
    s += system("Extract the person described in the text as JSON.")
    s += user(doc)
    async with s.assistant():
        return await s.gen("contact", json_schema=Contact, max_tokens=80, temperature=0.0)


async def main(engine, docs: int = 4):
    chosen = [DOCS[i % len(DOCS)] for i in range(docs)]
    states = await run_batch(extract, [{"doc": d} for d in chosen], engine=engine)
    people = [st.return_value for st in states]
    for p in people:
        print(p.model_dump_json())
    st = engine.stats()
    print(f"jump-forward tokens {st['jump_forward_tokens']} of {st['decode_tokens']} decoded")
    return {"people": people}
