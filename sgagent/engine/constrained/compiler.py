"""Turning a constraint (regex, JSON schema, choices) into a compiled FSM index, cached and shared.

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

from ...errors import ConstraintError, InvalidRegexError, UnsupportedSchemaError
from .fsm import CompiledConstraint, ConstraintState
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


def spec_to_regex(spec: dict):
    """(kind, regex, finish) for one of regex= / json_schema= / choices=."""
    if len(spec) != 1:
        raise ConstraintError(f"give one of regex, json_schema, choices (got {sorted(spec)})")
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
    if kind == "json_schema":
        schema, model = _schema_dict(value)
        try:
            regex = build_regex_from_schema(json.dumps(fix_schema_forms(schema)), WHITESPACE)
        except (ValueError, TypeError) as e:
            raise UnsupportedSchemaError(f"the schema cannot be expressed as an FSM: {e}") from e
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

        return kind, regex, finish
    raise ConstraintError(f"unknown constraint {kind!r}")


class ConstraintCompiler:
    def __init__(self, tokenizer, eos_ids, config):
        self.vocab = TokenVocab(tokenizer)
        self.config = config
        self._cache: OrderedDict[tuple, CompiledConstraint] = OrderedDict()
        self._pending: dict[tuple, asyncio.Future] = {}
        self._worker: CompileWorker | None = None
        self._cache_bytes = 0
        # a burst of distinct schemas must not start one multi-GB compile each: compiles wait for a slot
        self._slots = anyio.Semaphore(max(1, config.constraint_compile_workers))
        self.compiles = 0
        self.compile_seconds = 0.0
        self.hits = 0

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()

    def stats(self) -> dict:
        return {"constraint_compiles": self.compiles, "constraint_compile_seconds": round(self.compile_seconds, 4),
                "constraint_cache_hits": self.hits, "constraint_cache_size": len(self._cache),
                "constraint_cache_bytes": self._cache_bytes}

    def spec_to_regex(self, spec: dict):
        return spec_to_regex(spec)

    async def compiled(self, kind: str, regex: str) -> CompiledConstraint:
        key = (kind, regex)
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
            index, size = await self._compile(kind, regex)
            c = CompiledConstraint(kind, regex, index, self.vocab)
            c.nbytes = size
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

    async def _compile(self, kind: str, regex: str) -> Index:
        async with self._slots:  # the time limit counts from when this compile starts, not from the queue
            return await self._compile_now(kind, regex)

    async def _compile_now(self, kind: str, regex: str) -> Index:
        t0 = time.perf_counter()
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
        self.compiles += 1
        self.compile_seconds += time.perf_counter() - t0
        return index, size

    async def state_for(self, spec: dict) -> ConstraintState:
        kind, regex, finish = self.spec_to_regex(spec)
        return ConstraintState(await self.compiled(kind, regex), finish)


def _violation(text, expected):
    raise ConstraintError(f"output {text!r} does not match the constraint {expected!r}")
