"""The shared JSON-schema collection (../shared/data/jsonschema): coverage, soundness and strictness of the
constraint compiler over all 430 schemas, and generation end to end on a sample from every category.

The whole folder compiles in seconds on llguidance, so the coverage check runs all of it, in a child process
under a time limit (`python -m bench.schema_coverage`), so that no schema can hang the suite.
"""

import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from bench.jsonschema_suite import accepts, category, schema_dir
from sgagent.engine.constrained import SchemaViolationError
from sgagent.errors import IncompleteGenerationError, UnsupportedSchemaError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coverage() -> dict:
    """backend name -> the bench's JSON line, for the engine's default and for objects left open."""
    out = subprocess.run([sys.executable, "-m", "bench.schema_coverage", "--backends", "auto,auto:open",
                          "--timeout", "10"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    print(out.stdout)
    lines = [json.loads(l.split(" ", 1)[1]) for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    return {r["backend"]: r for r in lines}


def test_collection_is_present():
    assert len(list(schema_dir().glob("*.json"))) >= 400


def test_coverage_and_compile_time(coverage):
    r = coverage["auto"]
    assert r["schemas"] >= 400
    assert r["coverage"] >= 0.95, r
    assert r["min_category_coverage"] >= 0.85, r
    assert r["compile_p95_ms"] < 1000 and r["compile_p50_ms"] < 50, r


def test_soundness_valid_instances_are_accepted(coverage):
    # as JSON Schema allows objects: every valid instance; the closed default refuses the instances that carry
    # keys their object does not list (3% of them), by design (schema_forms.close_objects)
    assert coverage["auto:open"]["valid_accepted"] >= 0.99, coverage["auto:open"]
    assert coverage["auto"]["valid_accepted"] >= 0.96, coverage["auto"]


def test_strictness_invalid_instances_are_rejected(coverage):
    for r in coverage.values():
        assert r["invalid_rejected"] >= 0.97, r


async def test_accepts_is_exact_on_a_known_schema(engine):
    c, _ = await engine._compiler().constraint_for(
        {"json_schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}})
    assert accepts(c, '{"n":12}') and not accepts(c, '{"n":"12"}') and not accepts(c, '{"n":12')


def sample(per_category: int = 4) -> list[tuple[str, dict]]:
    """The first schemas by name of every category, as many from each: 60 over the 15 categories."""
    by_cat = collections.defaultdict(list)
    for p in sorted(schema_dir().glob("*.json")):
        by_cat[category(p)].append(p)
    return [(p.stem, json.loads(p.read_text())["schema"]) for ps in by_cat.values() for p in ps[:per_category]]


async def test_end_to_end_generated_json_validates(engine):
    e = engine.with_config(kv_cache_bytes=512 << 20)
    chosen = sample()
    assert len(chosen) >= 60
    # a real client's window of requests in flight
    window = asyncio.Semaphore(8)

    async def one(name, schema):
        async with window:
            msgs = [{"role": "user", "content": "Fill in a realistic example as JSON."}]
            try:
                r = await e.generate(messages=msgs, json_schema=schema, max_tokens=128, temperature=0.7, seed=1)
            except IncompleteGenerationError:
                return name, "length"
            except UnsupportedSchemaError:
                return name, "unsupported"
            except SchemaViolationError:
                return name, "violation"  # a keyword only the check after enforces: refused, never returned
            data = json.loads(r.text)
            jsonschema.validate(data, schema)  # every returned value validates
            assert data == r.parsed
            return name, "ok"

    try:
        results = dict(await asyncio.gather(*(one(n, s) for n, s in chosen)))
    finally:
        await e.aclose()
    counts = collections.Counter(results.values())
    print(f"e2e over {len(chosen)} schemas: {dict(counts)}")
    # the 135M model completes most within 128 tokens: enough must complete for the check to mean something
    assert counts["ok"] >= 0.5 * len(chosen), counts
    assert counts["violation"] <= 0.05 * len(chosen), [n for n, v in results.items() if v == "violation"]
    assert counts["unsupported"] <= 0.05 * len(chosen), [n for n, v in results.items() if v == "unsupported"]
