"""The main job for now: chat with the default model on the embedded engine and report the speed."""

from __future__ import annotations

import argparse
import asyncio
import time

from .engine import Engine


async def main(model: str | None, prompt: str, max_tokens: int) -> None:
    async with Engine(model) as engine:
        messages = [{"role": "user", "content": prompt}]
        print(f"> {prompt}\n")
        t0 = time.perf_counter()
        n = 0
        async for piece in engine.stream(messages=messages, max_tokens=max_tokens, temperature=0.0):
            print(piece, end="", flush=True)
        dt = time.perf_counter() - t0
        n = engine.stats()["decode_tokens"]
        print(f"\n\n[{n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s, single stream]")
        # a batch of the same question phrased 8 ways shows batching and the shared chat prefix
        qs = [f"In one sentence, why is the sky blue? (variant {i})" for i in range(8)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(
            engine.generate(messages=[{"role": "user", "content": q}], max_tokens=48, temperature=0.0) for q in qs
        ))
        dt = time.perf_counter() - t0
        toks = sum(r.usage.completion_tokens for r in results)
        st = engine.stats()
        print(f"[batch of 8: {toks} tokens in {dt:.2f} s: {toks / dt:.1f} tokens/s; "
              f"prefix cache hit rate {st['cache_hit_rate']:.0%}]")
        print(f"example: {results[0].text!r}")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="a .gguf file or a Hugging Face folder (default: SmolLM2-135M)")
    ap.add_argument("--prompt", default="Write a haiku about a small robot learning to cook.")
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    asyncio.run(main(a.model, a.prompt, a.max_tokens))


if __name__ == "__main__":
    cli()
