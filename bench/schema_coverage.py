"""Coverage / soundness / strictness over ../shared/data/jsonschema, and compile time p50/p95, per backend.

python -m bench.schema_coverage [--backends auto,auto:open,outlines] [--timeout 20] [--limit N]

auto: llguidance for JSON schemas, outlines-core where llguidance refuses one; outlines: outlines-core alone.
:open compiles objects as JSON Schema allows them (unlisted keys too), not closed as the engine's default.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

from sgagent.engine.config import EngineConfig
from sgagent.engine.constrained.compiler import ConstraintCompiler
from sgagent.engine.model.source import resolve

from .common import machine, report
from .jsonschema_suite import run_suite, table


async def main(backends: list[str], timeout: float, limit: int | None, verbose: bool) -> None:
    print(f"# schema coverage on {machine()}")
    tok = resolve(None).load_tokenizer()
    for backend in backends:
        await one_backend(tok, backend, timeout, limit, verbose)


async def one_backend(tok, backend: str, timeout: float, limit: int | None, verbose: bool) -> None:
    print(f"\n## backend {backend}")
    name, _, mode = backend.partition(":")
    comp = ConstraintCompiler(tok, [tok.eos_token_id], EngineConfig(
        constraint_compile_timeout=timeout, constraint_backend=name, constraint_closed_objects=mode != "open"))
    t0 = time.perf_counter()
    rs = await run_suite(comp, limit=limit, log=print if verbose else None)
    comp.close()
    secs = sorted(r.seconds for r in rs if r.compiled)
    print(table(rs))
    reasons = collections.Counter(r.error.split(":")[0] + ": " + r.error.split(":", 1)[1][:70] if ":" in r.error
                                  else r.error for r in rs if not r.compiled)
    for why, n in reasons.most_common(8):
        print(f"  not compiled x{n}: {why}")
    ok = [r for r in rs if r.compiled]
    cats = collections.defaultdict(list)
    for r in rs:
        cats[r.category].append(r.compiled)
    report("schema_coverage", backend=backend, schemas=len(rs), compiled=len(ok), coverage=len(ok) / len(rs),
           valid_accepted=sum(r.valid_accepted for r in ok) / max(1, sum(r.valid for r in ok)),
           invalid_rejected=sum(r.invalid_rejected for r in ok) / max(1, sum(r.invalid for r in ok)),
           compile_p50_ms=secs[len(secs) // 2] * 1e3, compile_p95_ms=secs[int(len(secs) * 0.95)] * 1e3,
           min_category_coverage=min(sum(v) / len(v) for v in cats.values()),
           validated_after=sum(r.validated_after for r in ok), on_outlines=sum(r.backend == "outlines" for r in ok),
           timeout_s=timeout, total_s=time.perf_counter() - t0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="auto,auto:open,outlines")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.backends.split(","), a.timeout, a.limit, a.v))
