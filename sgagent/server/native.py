"""SGLang's native API beside the OpenAI one: POST /generate (what sglang-router forwards to its workers and
RemoteEngine speaks to SGLang-style endpoints), GET /server_info and /model_info (how the router discovers a
worker), POST /flush_cache. Field names and answer shapes follow SGLang's server, so its clients work here."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib import metadata
from typing import Any

from fastapi import Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import IncompleteGenerationError
from .errors import APIError
from .generation import generate_choice
from .streaming import cancel_on_disconnect, engine_stream, error_event, merged, sse


class NativeSampling(BaseModel):
    """SGLang's sampling_params (the fields it honours; penalties and min_new_tokens are refused, not ignored)."""

    model_config = ConfigDict(extra="ignore")
    max_new_tokens: int = Field(default=128, ge=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=64)
    regex: str | None = None
    json_schema: str | dict | None = None
    ebnf: str | None = None
    sampling_seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0

    def engine_kwargs(self, seed: int | None) -> tuple[dict, dict]:
        """(sampling keywords for the engine, the constraint)."""
        for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0),
                              ("min_new_tokens", 0)):
            if getattr(self, name) != neutral:
                raise APIError(400, f"sampling_params.{name} is not supported by this server",
                               param=f"sampling_params.{name}")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        kwargs = dict(max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                      top_k=max(self.top_k, 0), min_p=self.min_p, stop=stop, stop_token_ids=self.stop_token_ids or [],
                      ignore_eos=self.ignore_eos,
                      seed=self.sampling_seed if self.sampling_seed is not None else seed)
        given = {k: getattr(self, k) for k in ("regex", "json_schema", "ebnf") if getattr(self, k) is not None}
        if len(given) > 1:
            raise APIError(400, f"give one constraint, not {sorted(given)}", param="sampling_params")
        spec = {}
        if "regex" in given:
            spec = {"regex": given["regex"]}
        elif "ebnf" in given:
            spec = {"grammar": given["ebnf"]}
        elif "json_schema" in given:
            value = given["json_schema"]
            try:
                spec = {"json_schema": json.loads(value) if isinstance(value, str) else value}
            except json.JSONDecodeError as e:
                raise APIError(400, f"sampling_params.json_schema is not JSON: {e}",
                               param="sampling_params.json_schema") from e
        return kwargs, spec


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt log-probabilities
    top_logprobs_num: int = Field(default=0, ge=0, le=20)
    rid: str | list[str] | None = None
    sampling_seed: int | None = None


def _prompts(engine, req: GenerateRequest) -> tuple[list[list[int]], bool]:
    """(token ids of each prompt, whether the request was a batch)."""
    if (req.text is None) == (req.input_ids is None):
        raise APIError(400, "give either text or input_ids", param="text")
    if req.text is not None:
        batch = isinstance(req.text, list)
        return [engine.tokenize(t) for t in (req.text if batch else [req.text])], batch
    batch = bool(req.input_ids) and isinstance(req.input_ids[0], list)
    return ([list(p) for p in req.input_ids] if batch else [list(req.input_ids)]), batch


def _params(req: GenerateRequest, count: int) -> list[NativeSampling]:
    raw = req.sampling_params if req.sampling_params is not None else {}
    raws = raw if isinstance(raw, list) else [raw] * count
    if len(raws) != count:
        raise APIError(400, f"{len(raws)} sampling_params for {count} prompts", param="sampling_params")
    try:
        return [NativeSampling(**r) for r in raws]
    except ValidationError as e:
        first = e.errors()[0]
        where = "sampling_params." + ".".join(str(x) for x in first.get("loc", ()))
        raise APIError(400, f"invalid request: {where}: {first.get('msg', 'bad value')}", param=where) from e


def _triples(pairs) -> list[list]:
    """SGLang's [logprob, token id, text] rows (text only when asked; null here, as its default)."""
    return [[lp, t, None] for t, lp in pairs]


def _meta(engine, rid: str, ids: list[int], r, started: float, req: GenerateRequest, start: int | None) -> dict:
    if isinstance(r, IncompleteGenerationError):
        n = len(engine.tokenizer.encode(r.text, add_special_tokens=False)) if r.text else 0
        return {"id": rid, "finish_reason": {"type": "length", "length": n}, "prompt_tokens": len(ids),
                "completion_tokens": n, "cached_tokens": 0, "e2e_latency": time.perf_counter() - started}
    u = r.usage
    reason = {"type": "length", "length": u.completion_tokens} if r.finish_reason == "length" else \
        {"type": "stop", "matched": None}
    meta = {"id": rid, "finish_reason": reason, "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "cached_tokens": u.cached_tokens,
            "e2e_latency": time.perf_counter() - started}
    if req.return_logprob:
        meta["output_token_logprobs"] = _triples(zip(r.token_ids, r.logprobs or []))
        if req.top_logprobs_num:
            meta["output_top_logprobs"] = [_triples(alts) for alts in r.top_logprobs or []]
        if start is not None:
            # SGLang counts from logprob_start_len; the very first token has no log-probability
            lead = [None] if req.logprob_start_len == 0 else []
            meta["input_token_logprobs"] = [[None, ids[0], None]] * len(lead) + _triples(
                zip(ids[start:], r.prompt_logprobs or []))
    return meta


async def generate(engine, req: GenerateRequest, request: Request, metrics):
    prompts, batch = _prompts(engine, req)
    params = _params(req, len(prompts))
    if req.logprob_start_len >= 0 and not req.return_logprob:
        raise APIError(400, "logprob_start_len needs return_logprob", param="logprob_start_len")
    jobs = []  # (prompt ids, engine kwargs, constraint, request id)
    rids = req.rid if isinstance(req.rid, list) else None
    for i, (ids, p) in enumerate(zip(prompts, params)):
        kwargs, spec = p.engine_kwargs(req.sampling_seed)
        kwargs.update(logprobs=req.return_logprob, top_logprobs=req.top_logprobs_num)
        for j in range(p.n):
            seeded = kwargs if kwargs["seed"] is None or j == 0 else {**kwargs, "seed": kwargs["seed"] + j}
            rid = (rids[i] if rids and i < len(rids) else req.rid if isinstance(req.rid, str) and len(prompts) == 1
                   and p.n == 1 else uuid.uuid4().hex)
            jobs.append((ids, seeded, spec, rid))
    start = None
    if req.logprob_start_len >= 0:
        start = max(req.logprob_start_len, 1)
        for ids, *_ in jobs:
            if start > len(ids):
                raise APIError(400, f"logprob_start_len must be below the prompt's {len(ids)} tokens",
                               param="logprob_start_len")
    metrics.request("generate")
    started = time.perf_counter()
    if req.stream:
        if start is not None:
            raise APIError(400, "prompt log-probabilities are not streamed", param="stream")
        return StreamingResponse(_events(engine, jobs, req, batch or len(jobs) > 1, started),
                                 media_type="text/event-stream")
    results = await cancel_on_disconnect(request, asyncio.gather(
        *(generate_choice(engine, ids, {**kw, "logprob_start": start}, spec) for ids, kw, spec, _ in jobs)))
    outs = []
    for (ids, _, _, rid), r in zip(jobs, results):
        out_ids = [] if isinstance(r, IncompleteGenerationError) else r.token_ids
        outs.append({"text": r.text, "output_ids": out_ids, "meta_info": _meta(engine, rid, ids, r, started, req,
                                                                               start)})
        if not isinstance(r, IncompleteGenerationError):
            metrics.tokens({"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens,
                            "prompt_tokens_details": {"cached_tokens": r.usage.cached_tokens}})
    return outs if batch or len(outs) > 1 else outs[0]


async def _events(engine, jobs, req: GenerateRequest, indexed: bool, started: float):
    """SGLang's stream: each event carries the text so far (not a delta), the last one its finish_reason."""
    texts = [""] * len(jobs)
    async for kind, i, value in merged(len(jobs), lambda i: engine_stream(engine, jobs[i][0], jobs[i][1],
                                                                          jobs[i][2], i)):
        ids, _, _, rid = jobs[i]
        if kind == "error":
            yield error_event(value)
            continue
        if kind == "text":
            texts[i] += value
            event = {"text": texts[i], "meta_info": {"id": rid, "finish_reason": None, "prompt_tokens": len(ids)}}
        else:
            event = {"text": value.text if isinstance(value, IncompleteGenerationError) else texts[i],
                     "meta_info": _meta(engine, rid, ids, value, started, req, None)}
            if not isinstance(value, IncompleteGenerationError):
                event["output_ids"] = value.token_ids
        if indexed:
            event["index"] = i
        yield sse(event)
    yield "data: [DONE]\n\n"


def _version() -> str:
    try:
        return metadata.version("sgagent")
    except metadata.PackageNotFoundError:
        return "0"


def server_info(engine, name: str) -> dict:
    pool = engine.runner.pool
    return {"model_path": engine.model_path, "served_model_name": name, "version": _version(), "dp_size": 1,
            "context_length": engine.max_context, "page_size": pool.page_size,
            "max_total_num_tokens": pool.capacity * pool.page_size, "radix_cache": engine.config.radix_cache}


def model_info(engine) -> dict:
    mc = engine.model_config
    return {"model_path": engine.model_path, "tokenizer_path": engine.model_path, "is_generation": True,
            "model_type": mc.model_type}


def flush_cache(engine):
    if engine.flush_cache():
        return PlainTextResponse("Cache flushed.\n")
    return PlainTextResponse("Cache not flushed: requests are running.\n", status_code=400)
