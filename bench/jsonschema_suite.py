"""The shared JSON-schema collection (../shared/data/jsonschema) run through our constraint compiler.

For each schema: does it compile (and how fast), is every valid instance accepted token by token when
serialized as the engine emits it (compact, keys in schema order), and is every invalid instance refused.
Used by tests (thresholds) and by bench (the coverage table).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sgagent.engine.constrained.compiler import ConstraintCompiler
from sgagent.engine.constrained.grammar import CompiledGrammar
from sgagent.errors import ConstraintError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschema"


def schema_dir() -> Path:
    if not SHARED.is_dir():
        raise FileNotFoundError(f"the shared schema collection is missing: {SHARED} (see ../shared/README.md)")
    return SHARED


def category(path: Path) -> str:
    name = path.stem.split("---")[0]
    return re.sub(r"_(easy|medium|hard|ultra|simple|multiple|parallel|parallel_multiple|\d+)$", "", name)


@dataclass
class SchemaResult:
    name: str
    category: str
    compiled: bool = False
    error: str = ""
    seconds: float = 0.0
    valid: int = 0
    valid_accepted: int = 0
    invalid: int = 0
    invalid_rejected: int = 0
    backend: str = ""
    validated_after: bool = False  # compiled with keywords only the check after generation enforces
    unsound: list = field(default_factory=list)


def _resolve(schema, root):
    """Follow local $refs (JSON pointers into the root schema)."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and seen < 32:
        target = root
        for part in schema["$ref"][1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            break
        schema, seen = target, seen + 1
    return schema if isinstance(schema, dict) else {}


def _properties(schema, root) -> dict:
    """The properties an object schema lists, in order, with those its allOf members add."""
    schema = _resolve(schema, root)
    props = dict(schema.get("properties") or {})
    for sub in schema.get("allOf") or []:
        for k, v in _properties(sub, root).items():
            props.setdefault(k, v)
    return props


def _order_like_schema(data, schema, root):
    """Serialize like the grammars emit: object keys in the order the schema lists its properties (through
    $ref and allOf, and the anyOf/oneOf branch that names the keys), any others after them."""
    schema = _resolve(schema, root)
    if isinstance(data, dict):
        props = _properties(schema, root)
        for branch in (schema.get("anyOf") or []) + (schema.get("oneOf") or []):
            bp = _properties(branch, root)
            if set(data) & set(bp) and set(data) <= set(props) | set(bp):
                props = {**props, **{k: v for k, v in bp.items() if k not in props}}
                break
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        keys = [k for k in props if k in data] + [k for k in data if k not in props]
        return {k: _order_like_schema(data[k], props.get(k, extra), root) for k in keys}
    if isinstance(data, list):
        items = schema.get("items")
        prefix = schema.get("prefixItems") or (items if isinstance(items, list) else [])
        rest = items if isinstance(items, dict) else {}
        return [_order_like_schema(x, prefix[i] if i < len(prefix) else rest, root) for i, x in enumerate(data)]
    return data


def accepts(c, text: str) -> bool:
    """Whether a compiled constraint (either backend's) takes the text, tokenized as the model would."""
    return c.accepts(c.vocab.encode(text))


async def run_one(compiler: ConstraintCompiler, path: Path) -> SchemaResult:
    doc = json.loads(path.read_text())
    res = SchemaResult(path.stem, category(path))
    schema = doc["schema"]
    t0 = time.perf_counter()
    try:
        c, _ = await compiler.constraint_for({"json_schema": schema})
        res.compiled = True
        res.backend = "llguidance" if isinstance(c, CompiledGrammar) else "outlines"
        res.validated_after = bool(getattr(c, "unenforced", None))
    except (ConstraintError, ValueError, RecursionError) as e:
        res.error = type(e).__name__ + ": " + str(e).split("\n")[0][:120]
    res.seconds = time.perf_counter() - t0
    if not res.compiled:
        return res
    for case in doc.get("tests", []):
        data = case["data"]
        root = schema if isinstance(schema, dict) else {}
        text = json.dumps(_order_like_schema(data, schema, root), separators=(",", ":"), ensure_ascii=False)
        ok = accepts(c, text)
        if case["valid"]:
            res.valid += 1
            res.valid_accepted += ok
            if not ok:
                res.unsound.append(text[:200])
        else:
            res.invalid += 1
            res.invalid_rejected += not ok
    return res


async def run_suite(compiler: ConstraintCompiler, limit: int | None = None, log=None,
                    every: int = 1) -> list[SchemaResult]:
    """Every schema (or every `every`-th, by name) in turn, under the compiler's own time limit."""
    out = []
    for p in sorted(schema_dir().glob("*.json"))[::every][:limit]:
        out.append(await run_one(compiler, p))
        if log:
            r = out[-1]
            log(f"{r.name} compiled={r.compiled} {r.seconds:.2f}s {r.error[:60]}")
    return out


def table(results: list[SchemaResult]) -> str:
    cats: dict[str, list[SchemaResult]] = {}
    for r in results:
        cats.setdefault(r.category, []).append(r)
    # "checked after": compiled with keywords the grammar leaves to the validation of the finished output
    lines = ["| category | schemas | compiled | coverage | checked after | valid accepted | invalid rejected | compile p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(cats) + ["all"]:
        rs = results if name == "all" else cats[name]
        comp = [r for r in rs if r.compiled]
        va, vn = sum(r.valid_accepted for r in comp), sum(r.valid for r in comp)
        ir, inn = sum(r.invalid_rejected for r in comp), sum(r.invalid for r in comp)
        secs = sorted(r.seconds for r in comp)
        p50 = secs[len(secs) // 2] * 1000 if secs else 0
        lines.append(f"| {name} | {len(rs)} | {len(comp)} | {len(comp) / len(rs):.0%} | "
                     f"{sum(r.validated_after for r in comp)} | "
                     f"{va}/{vn} ({va / max(vn, 1):.0%}) | {ir}/{inn} ({ir / max(inn, 1):.0%}) | {p50:.0f} |")
    return "\n".join(lines)
