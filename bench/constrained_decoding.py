"""Mask cost per step (batch 1 and 32) and JSON extraction with jump-forward on vs off, for both constraint
backends (llguidance: the default for schemas; outlines-core), and compile times over the schema folder.

python -m bench.constrained_decoding [--runs 3] [--small]
"""

from __future__ import annotations

import asyncio
import json
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


def answers(n: int) -> list[str]:
    """The JSON each document's extraction should produce, as the engine emits it (compact, schema order)."""
    out = []
    for i in range(n):
        name, age, city, job = PEOPLE[i % len(PEOPLE)]
        out.append(json.dumps({"name": name, "age": age + i % 5, "city": city, "occupation": job,
                               "email": f"{name.split()[0].lower()}{i}@mail.com", "status": "active"},
                              separators=(",", ":")))
    return out


async def mask_overhead(engine, backend: str, runs: int):
    """Mask time per step along real outputs: 32 requests each walking its own document's JSON, a mask for the
    whole batch before every token, as the runner does; then the decode step it rides on."""
    e = engine.with_config(constraint_backend=backend)
    texts = [e.tokenizer.encode(t, add_special_tokens=False) for t in answers(32)]
    per_seq = {}
    for b in (1, 32):
        states = [await e._constraint_state({"json_schema": SCHEMA}) for _ in range(b)]
        paths = []
        for st, toks in zip(states, texts):
            forced = st.start(room=64)
            paths.append(toks[len(forced):] if toks[:len(forced)] == forced else None)
        assert all(p is not None for p in paths), "the forced opening differs from the tokenized answer"
        logits = torch.randn(b, e.model_config.vocab_size)
        samples = []
        for step in range(min(len(p) for p in paths)):
            x = logits.clone()
            t0 = time.perf_counter()
            apply_masks(x, states)
            samples.append(time.perf_counter() - t0)
            for st, p in zip(states, paths):
                st.advance(p[step], jump=False, room=0)
        per_seq[b] = statistics.median(samples[2:]) / b
    # the decode step it rides on: 32 unconstrained sequences decoding together
    s0 = e.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*(e.generate(f"Story {i}:", max_tokens=24, ignore_eos=True, temperature=0) for i in range(32)))
    dt = time.perf_counter() - t0
    steps = e.stats()["steps"] - s0["steps"]
    await e.aclose()
    step = dt / steps
    report("mask_overhead", backend=backend, us_per_seq_b1=per_seq[1] * 1e6, us_per_seq_b32=per_seq[32] * 1e6,
           mask_ms_b32=per_seq[32] * 32 * 1e3, decode_step_ms_b32=step * 1e3, overhead_b32=per_seq[32] * 32 / step)


async def compile_times(engine, limit: int | None):
    from .jsonschema_suite import run_suite

    await engine.generate("x", choices=["a"])
    rs = await run_suite(engine._compiler(), limit=limit)
    secs = sorted(r.seconds for r in rs if r.compiled)
    report("index_compile", schemas=len(rs), compiled=len(secs), p50_ms=secs[len(secs) // 2] * 1e3,
           p95_ms=secs[int(len(secs) * 0.95)] * 1e3, coverage=len(secs) / len(rs))
    return rs


async def extraction(engine, backend: str, n: int, runs: int):
    docs = documents(n)
    res = {}
    # compiled before the clock starts: the runs' engines share this one's compiler (same constraint settings)
    be = engine.with_config(constraint_backend=backend)
    await be._constraint_state({"json_schema": SCHEMA})
    for jf in (True, False):
        async def once():
            e = be.with_config(jump_forward=jf)
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
                tokens = sum(len(r.token_ids) for r in done)
                return steps, e.stats()["steps"], len(rs) - len(done), tokens
            finally:
                await e.aclose()

        res[jf] = await timed(once, runs)
    (t_on, (d_on, s_on, inc_on, tok_on)), (t_off, (d_off, s_off, inc_off, tok_off)) = res[True], res[False]
    await be.aclose()
    report("json_extraction_jump_forward", backend=backend, documents=n, incomplete_on=inc_on, incomplete_off=inc_off,
           tokens_per_s_on=tok_on / t_on, tokens_per_s_off=tok_off / t_off,
           decode_tokens_on=d_on, decode_tokens_off=d_off,
           engine_steps_on=s_on, engine_steps_off=s_off, fewer_decode_steps=d_off / d_on,
           wall_on_s=t_on, wall_off_s=t_off, wall_ratio=t_off / t_on, runs=runs)


async def main(runs: int, small: bool) -> None:
    print(f"# constrained decoding on {machine()}")
    engine = sgagent.Engine(kv_cache_bytes=512 << 20, constraint_compile_timeout=20.0)
    for backend in ("llguidance", "outlines"):
        await mask_overhead(engine, backend, runs)
        await extraction(engine, backend, 4 if small else 64, runs)
    # the whole folder's compile times and coverage table: python -m bench.schema_coverage
    await compile_times(engine, 8 if small else 60)
    await engine.aclose()


if __name__ == "__main__":
    cli(main, runs=3)
