"""Issue 5: coverage / soundness / strictness over ../shared/data/jsonschema, and compile time p50/p95.

python -m bench.schema_coverage [--timeout 20] [--limit N]
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


async def main(timeout: float, limit: int | None, verbose: bool) -> None:
    print(f"# schema coverage on {machine()}")
    comp = ConstraintCompiler(resolve(None).load_tokenizer(), [], EngineConfig(constraint_compile_timeout=timeout))
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
    report("schema_coverage", schemas=len(rs), compiled=len(ok), coverage=len(ok) / len(rs),
           valid_accepted=sum(r.valid_accepted for r in ok) / max(1, sum(r.valid for r in ok)),
           invalid_rejected=sum(r.invalid_rejected for r in ok) / max(1, sum(r.invalid for r in ok)),
           compile_p50_ms=secs[len(secs) // 2] * 1e3, compile_p95_ms=secs[int(len(secs) * 0.95)] * 1e3,
           timeout_s=timeout, total_s=time.perf_counter() - t0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.timeout, a.limit, a.v))
