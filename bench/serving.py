"""Issue 8: the HTTP server's cost — the same requests sent to the engine directly and through
`sgagent serve` with the official openai client, and a program run embedded vs through RemoteEngine.

python -m bench.serving [--runs 3] [--small]
"""

from __future__ import annotations

import asyncio

import sgagent

from .common import cli, machine, on_fresh_engine, report, timed


async def main(runs: int, small: bool) -> None:
    import openai

    from sgagent.remote import RemoteEngine
    from sgagent.server import free_port, start
    from recipes import judge

    print(f"# serving on {machine()}")
    n, new = (16, 4) if small else (128, 16)
    base = sgagent.Engine(kv_cache_bytes=1 << 30)
    prompts = [f"Request {i}: write a sentence about the number {i * 13}." for i in range(n)]

    async def direct(e):
        await asyncio.gather(*(e.generate(p, max_tokens=new, temperature=0, ignore_eos=True) for p in prompts))

    port = free_port()
    remote = RemoteEngine(f"http://127.0.0.1:{port}/v1")  # its tokenizer loads once, outside the timing

    async def over_http(e):
        server = await start(e, port=port, model="m")
        client = openai.AsyncOpenAI(base_url=server.url, api_key="-", max_retries=0)
        try:
            await asyncio.gather(*(client.completions.create(model="m", prompt=p, max_tokens=new, temperature=0,
                                                             extra_body={"ignore_eos": True}) for p in prompts))
            await judge.judged.run(engine=remote, question="Why is the sky blue?", criteria=judge.CRITERIA[:2])
        finally:
            await client.close()
            await server.stop()

    async def embedded_program(e):
        await direct(e)
        await judge.judged.run(engine=e, question="Why is the sky blue?", criteria=judge.CRITERIA[:2])

    t_direct, _ = await timed(lambda: on_fresh_engine(base, embedded_program), runs)
    t_http, _ = await timed(lambda: on_fresh_engine(base, over_http), runs)
    # the RemoteEngine's client keeps pooled connections to a server that is restarted per run: retries cover it
    report("serving_overhead", requests=n, new_tokens=new, direct_s=t_direct, http_s=t_http,
           ratio=t_direct / t_http, runs=runs)
    await remote.aclose()
    await base.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
