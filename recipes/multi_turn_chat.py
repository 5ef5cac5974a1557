"""Multi-turn chat: several conversations of a few turns each, run together; every turn reuses the last.

Shows: role messages rendered with the model's chat template, the radix cache keeping each conversation's
history so a new turn only computes its new tokens, and the cache hit rate that results.
"""

from sgagent import program, run_batch, system, user

OPENERS = ["I want to learn to cook.", "I am planning a trip to Japan.", "I just got a puppy.",
           "I want to start running."]
FOLLOW_UPS = ["What should I do first?", "What is a common mistake?", "Give me one more tip.",
              "Summarize your advice in one sentence."]


@program
async def chat(s, opener: str, turns: int, max_tokens: int = 40):
    s += system("You are a friendly, concise assistant.")
    replies = []
    for t in range(turns):
        s += user(opener if t == 0 else FOLLOW_UPS[(t - 1) % len(FOLLOW_UPS)])
        async with s.assistant():
            replies.append(await s.gen(max_tokens=max_tokens, temperature=0.0))
    return replies


async def main(engine, conversations: int = 4, turns: int = 3):
    states = await run_batch(chat, [{"opener": OPENERS[i % len(OPENERS)], "turns": turns}
                                    for i in range(conversations)], engine=engine)
    for st in states[:2]:
        print("\n".join(f"{m['role']}: {m['content']}" for m in st.messages()), end="\n\n")
    stats = engine.stats()
    print(f"{conversations} conversations x {turns} turns; cache hit rate {stats['cache_hit_rate']:.0%}")
    return {"replies": [st.return_value for st in states], "cache_hit_rate": stats["cache_hit_rate"]}
