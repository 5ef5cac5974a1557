"""Turning a constraint (regex, JSON schema, choices, grammar) into a compiled matcher, cached and shared.

Compiling runs in a worker thread with a time limit, so one slow schema stalls neither the event loop nor
other programs; concurrent requests for the same constraint share one compile.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import time
from collections import OrderedDict

import anyio
import jsonschema
from outlines_core import Index
from outlines_core.json_schema import build_regex_from_schema

from ...errors import ConstraintError, InvalidGrammarError, InvalidRegexError, UnsupportedSchemaError
from .fsm import CompiledConstraint, ConstraintState
from .grammar import CompiledGrammar, GrammarState, compile_grammar, grammar_for, is_unenforced, llg_tokenizer
from .schema_forms import fix_schema_forms
from .vocab import TokenVocab
from .worker import CompileWorker

# regexes up to this size compile in well under a second (measured over ../shared's schemas): a thread is
# cheaper than the worker process's start; larger ones go to the killable worker
SMALL_REGEX = 4000

# compact JSON: no free whitespace, so keys and punctuation are forced (jump-forward) and the model cannot ramble in blanks
WHITESPACE = ""
_META = set("\\.^$|?*+()[]{}-&~#")


def escape(text: str) -> str:
    return "".join("\\" + c if c in _META else c for c in text)


class SchemaViolationError(ConstraintError):
    """Generated JSON did not validate (a schema keyword the FSM does not enforce)."""


def _schema_dict(schema) -> tuple[dict, object]:
    """A JSON schema given as a dict, a JSON string, or a pydantic model class; and the model if any."""
    if isinstance(schema, type):
        try:
            from pydantic import BaseModel
        except ImportError:  # pragma: no cover
            BaseModel = None
        if BaseModel is not None and issubclass(schema, BaseModel):
            return schema.model_json_schema(), schema
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise UnsupportedSchemaError(f"json_schema is not valid JSON: {e}") from e
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(f"json_schema must be a dict, a JSON string or a pydantic model, not {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise UnsupportedSchemaError(f"invalid JSON schema: {e.message}") from e
    return schema, None


def parse_spec(spec: dict):
    """(kind, value, finish) for one of regex= / json_schema= / choices= / grammar=: the value is a regex for
    regex and choices, the schema dict for json_schema, the Lark text for grammar."""
    if len(spec) != 1:
        raise ConstraintError(f"give one of regex, json_schema, choices, grammar (got {sorted(spec)})")
    kind, value = next(iter(spec.items()))
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise InvalidRegexError("regex must be a non-empty string")
        try:
            py = re.compile(value)
        except re.error:
            py = None
        return kind, value, (lambda text: text if py is None or py.fullmatch(text) else _violation(text, value))
    if kind == "choices":
        choices = [str(c) for c in value]
        if not choices or any(not c for c in choices):
            raise ConstraintError("choices must be a non-empty list of non-empty strings")
        regex = "(" + "|".join(escape(c) for c in choices) + ")"
        return kind, regex, (lambda text: text if text in choices else _violation(text, choices))
    if kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise InvalidGrammarError("grammar must be a non-empty Lark grammar string")
        return kind, value, (lambda text: text)  # the parser accepted it token by token: nothing to check after
    if kind == "json_schema":
        schema, model = _schema_dict(value)
        validator = jsonschema.validators.validator_for(schema)(schema)

        def finish(text: str):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SchemaViolationError(f"output is not JSON: {e}") from e
            errors = sorted(validator.iter_errors(data), key=lambda e: e.path)
            if errors:
                raise SchemaViolationError(f"output does not satisfy the schema: {errors[0].message}")
            return model.model_validate(data) if model is not None else data

        return kind, schema, finish
    raise ConstraintError(f"unknown constraint {kind!r}")


def schema_regex(schema: dict) -> str:
    try:
        return build_regex_from_schema(json.dumps(fix_schema_forms(schema)), WHITESPACE)
    except (ValueError, TypeError) as e:
        raise UnsupportedSchemaError(f"the schema cannot be expressed as an FSM: {e}") from e


def spec_to_regex(spec: dict):
    """(kind, regex, finish): the constraint as one regex (outlines-core; what remote endpoints take)."""
    kind, value, finish = parse_spec(spec)
    if kind == "grammar":
        raise ConstraintError("a grammar is not a regex: it needs the llguidance backend")
    return kind, schema_regex(value) if kind == "json_schema" else value, finish


BACKENDS = ("auto", "outlines", "llguidance")


class ConstraintCompiler:
    """Picks the backend per constraint (see EngineConfig.constraint_backend), compiles once, caches by LRU."""

    def __init__(self, tokenizer, eos_ids, config, vocab_size: int | None = None):
        if config.constraint_backend not in BACKENDS:
            raise ConstraintError(f"constraint_backend must be one of {BACKENDS}, not {config.constraint_backend!r}")
        if config.constraint_unenforced not in ("validate", "refuse"):
            raise ConstraintError(f"constraint_unenforced must be 'validate' or 'refuse', not {config.constraint_unenforced!r}")
        self.vocab = TokenVocab(tokenizer)
        self.eos_ids = set(eos_ids)
        self.vocab_size = vocab_size or len(tokenizer)
        self.config = config
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._pending: dict[tuple, asyncio.Future] = {}
        self._worker: CompileWorker | None = None
        self._llg_tokenizer = None  # built on the first llguidance compile (~1 s)
        self._cache_bytes = 0
        # a burst of distinct schemas must not start one multi-GB compile each: compiles wait for a slot
        self._slots = anyio.Semaphore(max(1, config.constraint_compile_workers))
        self.compiles = 0
        self.compile_seconds = 0.0
        self.hits = 0
        self.by_backend = {"outlines": 0, "llguidance": 0}
        self.validated_after = 0  # schemas compiled with keywords left to the validation after generation
        self.fallbacks = 0  # schemas llguidance refused that outlines-core compiled

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()

    def stats(self) -> dict:
        return {"constraint_compiles": self.compiles, "constraint_compile_seconds": round(self.compile_seconds, 4),
                "constraint_cache_hits": self.hits, "constraint_cache_size": len(self._cache),
                "constraint_cache_bytes": self._cache_bytes,
                "constraint_compiles_outlines": self.by_backend["outlines"],
                "constraint_compiles_llguidance": self.by_backend["llguidance"],
                "constraint_validated_after": self.validated_after, "constraint_fallbacks": self.fallbacks}

    def spec_to_regex(self, spec: dict):
        return spec_to_regex(spec)

    def backend_for(self, kind: str) -> str:
        """The rule: grammars and JSON schemas on llguidance (ms compiles, lazy masks, the widest schema coverage),
        regexes and choices on outlines-core (a small index built once, then a lookup per mask)."""
        if self.config.constraint_backend != "auto":
            return self.config.constraint_backend
        return "llguidance" if kind in ("json_schema", "grammar") else "outlines"

    async def constraint_for(self, spec: dict):
        """The compiled constraint (either backend's) and the check of the finished output."""
        kind, value, finish = parse_spec(spec)
        if self.backend_for(kind) == "llguidance":
            key = json.dumps(value) if kind == "json_schema" else value  # key order is property order: not sorted
            try:
                return await self._cached(("llguidance", kind, key), lambda: self._compile_llg(kind, value, key)), finish
            except UnsupportedSchemaError as e:
                if kind != "json_schema" or self.config.constraint_backend != "auto" or getattr(e, "keyword", None):
                    raise
                refused = e  # e.g. a lookaround in a pattern: outlines-core's regex may still take it
            try:
                c = await self.compiled(kind, schema_regex(value))
            except UnsupportedSchemaError as e:
                raise UnsupportedSchemaError(f"{refused}; outlines-core: {e}") from e
            self.fallbacks += 1
            return c, finish
        if kind == "grammar":
            raise InvalidGrammarError("grammars need the llguidance backend (constraint_backend='auto' or 'llguidance')")
        return await self.compiled(kind, schema_regex(value) if kind == "json_schema" else value), finish

    async def state_for(self, spec: dict):
        c, finish = await self.constraint_for(spec)
        return (GrammarState if isinstance(c, CompiledGrammar) else ConstraintState)(c, finish)

    async def compiled(self, kind: str, regex: str) -> CompiledConstraint:
        """outlines-core's index for a regex."""
        return await self._cached((kind, regex), lambda: self._compile_outlines(kind, regex))

    async def _cached(self, key: tuple, build):
        if key in self._cache:
            self._cache.move_to_end(key)
            self.hits += 1
            return self._cache[key]
        if key in self._pending:
            self.hits += 1
            return await asyncio.shield(self._pending[key])
        fut = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            async with self._slots:  # the time limit counts from when this compile starts, not from the queue
                t0 = time.perf_counter()
                c = await build()
            self.compiles += 1
            self.compile_seconds += time.perf_counter() - t0
            fut.set_result(c)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved here; waiters re-raise it themselves
            raise
        finally:
            del self._pending[key]
        self._cache[key] = c
        self._cache_bytes += c.nbytes
        while len(self._cache) > 1 and (len(self._cache) > self.config.constraint_cache_size
                                        or self._cache_bytes > self.config.constraint_cache_bytes):
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return c

    async def _compile_llg(self, kind: str, value, key: str) -> CompiledGrammar:
        limit = self.config.constraint_compile_timeout
        if self._llg_tokenizer is None:
            self._llg_tokenizer = await anyio.to_thread.run_sync(llg_tokenizer, self.vocab.tokenizer, self.eos_ids,
                                                                 self.vocab_size)

        async def build(lenient: bool) -> CompiledGrammar:
            with anyio.fail_after(limit):
                grammar = grammar_for(kind, value, lenient, self.config.constraint_closed_objects)
                return await anyio.to_thread.run_sync(compile_grammar, self._llg_tokenizer, kind, key, grammar,
                                                      self.vocab, lenient, abandon_on_cancel=True)

        bad = InvalidGrammarError if kind == "grammar" else InvalidRegexError if kind == "regex" else UnsupportedSchemaError
        try:
            try:
                c = await build(False)
            except ValueError as e:
                if kind != "json_schema" or not is_unenforced(str(e)):
                    raise
                if self.config.constraint_unenforced == "refuse":
                    where = unenforced_keyword(value, str(e))
                    err = UnsupportedSchemaError(f"the schema uses what llguidance cannot enforce: {where} ({e})")
                    err.keyword = where
                    raise err from e
                c = await build(True)
                # what the strict compile refused is left to the validation after, whether or not the lenient
                # grammar still warns of it (property counts are dropped before it sees them)
                c.unenforced = [str(e), *c.unenforced]
                self.validated_after += 1
        except TimeoutError as e:
            raise bad(f"compiling the {kind} constraint took over {limit} s; simplify it") from e
        except ConstraintError:
            raise
        except ValueError as e:
            raise bad(f"the {kind} constraint cannot be compiled: {e}") from e
        self.by_backend["llguidance"] += 1
        return c

    async def _compile_outlines(self, kind: str, regex: str) -> CompiledConstraint:
        limit = self.config.constraint_compile_timeout
        try:
            if len(regex) <= SMALL_REGEX:
                with anyio.fail_after(limit):
                    index = await anyio.to_thread.run_sync(Index, regex, self.vocab.outlines, abandon_on_cancel=True)
                size = len(pickle.dumps(index))  # small by construction: cheap
            else:
                if self._worker is None:
                    self._worker = CompileWorker(self.vocab.outlines)
                index, size = await self._worker.compile(regex, limit)
        except TimeoutError as e:
            raise UnsupportedSchemaError(f"compiling the {kind} constraint took over {limit} s; simplify it") from e
        except MemoryError as e:
            raise UnsupportedSchemaError(f"the {kind} constraint is too large to compile ({e})") from e
        except ValueError as e:
            if kind == "regex":
                try:
                    re.compile(regex)
                    why = str(e)
                except re.error as pe:
                    why = f"{pe}"
                raise InvalidRegexError(f"invalid regex {regex!r}: {why}") from e
            raise UnsupportedSchemaError(f"the {kind} constraint cannot be compiled: {e}") from e
        self.by_backend["outlines"] += 1
        c = CompiledConstraint(kind, regex, index, self.vocab)
        c.nbytes = size
        return c


def unenforced_keyword(schema, message: str) -> str:
    """'keyword K at /json/pointer' for the first keyword llguidance's message names, found in the schema."""
    names = re.findall(r'"(\w+)"', message.split("]")[0]) if "Unimplemented keys" in message else []
    fmt = re.search(r"Unknown format: (\S+)", message)
    if fmt:
        names, value = ["format"], fmt.group(1)
    else:
        value = None
        names = names or [k for k in ("oneOf", "minProperties", "maxProperties") if k in message] or ["?"]
    for name in names:
        path = _find_keyword(schema, name, value, "")
        if path is not None:
            return f"keyword {name!r} at {path or '/'}"
    return f"keyword {names[0]!r}"


def _find_keyword(node, name: str, value, path: str):
    if isinstance(node, dict):
        if name in node and (value is None or node[name] == value):
            return path + "/" + name
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return None
    for k, v in items:
        found = _find_keyword(v, name, value, f"{path}/{k}")
        if found is not None:
            return found
    return None


def _violation(text, expected):
    raise ConstraintError(f"output {text!r} does not match the constraint {expected!r}")
