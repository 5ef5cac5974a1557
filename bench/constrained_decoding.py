"""Issue 5: mask overhead per token, index compile times over the schema folder, jump-forward on JSON extraction.

python -m bench.constrained_decoding [--runs 3] [--small]
"""

from __future__ import annotations

import asyncio
import statistics
import time

import torch

import sgagent
from sgagent.engine.constrained import apply_masks

from .common import cli, machine, report, timed

# strings bounded as a real extraction schema would be: greedy decoding of a small model can otherwise loop
# inside one string until max_tokens, which the engine reports as incomplete
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}, "city": {"type": "string", "maxLength": 40},
    "occupation": {"type": "string", "maxLength": 40}, "email": {"type": "string", "maxLength": 60},
    "status": {"type": "string", "enum": ["active", "retired", "student"]}},
    "required": ["name", "age", "city", "occupation", "email", "status"]}
PEOPLE = [("Ana Ruiz", 31, "Sevilla", "architect"), ("Tom Berg", 67, "Oslo", "retired pilot"),
          ("Li Wei", 22, "Chengdu", "student"), ("Omar Haddad", 45, "Amman", "surgeon")]


def documents(n: int) -> list[str]:
    out = []
    for i in range(n):
        name, age, city, job = PEOPLE[i % len(PEOPLE)]
        out.append(f"Record {i}: {name} is {age + i % 5} years old, works as a {job} in {city}; "
                   f"contact {name.split()[0].lower()}{i}@mail.com.")
    return out


async def mask_overhead(engine, runs: int):
    spec = {"json_schema": SCHEMA}
    states = [await engine._constraint_state(spec) for _ in range(32)]
    for st in states:  # move into a string body, the common case mid-generation
        for t in st.start(room=64):
            pass
    per_seq = {}
    for b in (1, 32):
        logits = torch.randn(b, engine.model_config.vocab_size)
        for _ in range(5):
            apply_masks(logits.clone(), states[:b])
        samples = []
        for _ in range(runs * 20):
            x = logits.clone()
            t0 = time.perf_counter()
            apply_masks(x, states[:b])
            samples.append(time.perf_counter() - t0)
        per_seq[b] = statistics.median(samples) / b
    # the decode step it rides on: 32 unconstrained sequences decoding together
    e = engine.with_config()
    s0 = e.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*(e.generate(f"Story {i}:", max_tokens=24, ignore_eos=True, temperature=0) for i in range(32)))
    dt = time.perf_counter() - t0
    steps = e.stats()["steps"] - s0["steps"]
    await e.aclose()
    step = dt / steps
    report("mask_overhead", us_per_seq_b1=per_seq[1] * 1e6, us_per_seq_b32=per_seq[32] * 1e6,
           decode_step_ms_b32=step * 1e3, overhead_b32=per_seq[32] * 32 / step)


async def compile_times(engine, limit: int | None):
    from .jsonschema_suite import run_suite

    await engine.generate("x", choices=["a"])
    rs = await run_suite(engine._compiler(), limit=limit)
    secs = sorted(r.seconds for r in rs if r.compiled)
    report("index_compile", schemas=len(rs), compiled=len(secs), p50_ms=secs[len(secs) // 2] * 1e3,
           p95_ms=secs[int(len(secs) * 0.95)] * 1e3, coverage=len(secs) / len(rs))
    return rs


async def extraction(engine, n: int, runs: int):
    docs = documents(n)
    res = {}
    for jf in (True, False):
        async def once():
            e = engine.with_config(jump_forward=jf)
            try:
                rs = await asyncio.gather(*(e.generate(
                    messages=[{"role": "user", "content": f"Extract as JSON: {d}"}], json_schema=SCHEMA,
                    max_tokens=128, temperature=0) for d in docs), return_exceptions=True)
                for r in rs:
                    if not isinstance(r, sgagent.errors.IncompleteGenerationError) and isinstance(r, BaseException):
                        raise r
                done = [r for r in rs if not isinstance(r, BaseException)]
                # an incomplete one still decoded max_tokens steps: count them all
                steps = sum(r.decode_steps for r in done) + 128 * (len(rs) - len(done))
                return steps, e.stats()["steps"], len(rs) - len(done)
            finally:
                await e.aclose()

        res[jf] = await timed(once, runs)
    (t_on, (d_on, s_on, inc_on)), (t_off, (d_off, s_off, inc_off)) = res[True], res[False]
    report("json_extraction_jump_forward", documents=n, incomplete_on=inc_on, incomplete_off=inc_off,
           decode_tokens_on=d_on, decode_tokens_off=d_off,
           engine_steps_on=s_on, engine_steps_off=s_off, fewer_decode_steps=d_off / d_on,
           wall_on_s=t_on, wall_off_s=t_off, wall_ratio=t_off / t_on, runs=runs)


async def main(runs: int, small: bool) -> None:
    print(f"# constrained decoding on {machine()}")
    engine = sgagent.Engine(kv_cache_bytes=512 << 20, constraint_compile_timeout=20.0)
    await mask_overhead(engine, runs)
    await extraction(engine, 4 if small else 64, runs)
    # the whole folder's compile times and coverage table: python -m bench.schema_coverage
    await compile_times(engine, 8 if small else 60)
    await engine.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
