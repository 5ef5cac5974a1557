"""POST /v1/completions: text or token-id prompts, echo and prompt log-probabilities (used to score choices)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import IncompleteGenerationError
from .errors import APIError
from .generation import branch_kwargs, constraint, generate_choice, sampling_kwargs, usage
from .protocol import CompletionRequest
from .streaming import cancel_on_disconnect, engine_stream, error_event, merged, sse


def _prompts(engine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    return [engine.tokenize(p) for p in prompt]


def _logprobs(engine, prompt_ids, r, start: int | None, echo: bool) -> dict:
    tokens, lps = [], []
    if echo:
        tokens += prompt_ids
        known = r.prompt_logprobs or []
        lps += [None] * (len(prompt_ids) - len(known)) + list(known)
    tokens += r.token_ids
    lps += r.logprobs or [None] * len(r.token_ids)
    decode = lambda t: engine.tokenizer.decode([t])
    texts = [decode(t) for t in tokens]
    offsets, at = [], 0
    for t in texts:
        offsets.append(at)
        at += len(t)
    top = None
    if r.top_logprobs is not None:  # an echoed prompt's positions have none
        top = [None] * (len(tokens) - len(r.top_logprobs)) + [{decode(t): v for t, v in alts}
                                                               for alts in r.top_logprobs]
    return {"tokens": texts, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}


async def completions(engine, model: str, req: CompletionRequest, request: Request, metrics):
    prompts = _prompts(engine, req.prompt)
    spec = constraint(req)
    want_lps = req.logprobs is not None
    start = req.logprob_start if req.logprob_start is not None else (1 if req.echo and want_lps else None)
    kwargs = sampling_kwargs(req, req.max_tokens if req.max_tokens is not None else 16, logprobs=want_lps,
                             top_logprobs=req.logprobs or 0)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    metrics.request("completions")
    jobs = [(p, branch_kwargs(kwargs, i)) for p in prompts for i in range(req.n)]

    if req.stream:
        if req.echo or start is not None:
            raise APIError(400, "echo and prompt log-probabilities are not streamed", param="stream")
        return StreamingResponse(_events(engine, jobs, spec, head, metrics), media_type="text/event-stream")

    for ids, _ in jobs:
        if start is not None and not 1 <= start <= len(ids):
            raise APIError(400, f"logprob_start must be within 1..{len(ids)}", param="logprob_start")
    results = await cancel_on_disconnect(request, asyncio.gather(
        *(generate_choice(engine, p, {**kw, "logprob_start": start}, spec) for p, kw in jobs)))
    choices, prompt, completion, cached = [], 0, 0, 0
    for i, ((ids, _), r) in enumerate(zip(jobs, results)):
        if isinstance(r, IncompleteGenerationError):
            choices.append({"index": i, "text": r.text, "logprobs": None, "finish_reason": "length"})
            continue
        text = (engine.tokenizer.decode(ids) if req.echo else "") + r.text
        choice = {"index": i, "text": text, "finish_reason": r.finish_reason,
                  "logprobs": _logprobs(engine, ids, r, start, req.echo) if want_lps else None}
        if req.logprob_start is not None:
            choice["prompt_logprobs"] = r.prompt_logprobs
        choices.append(choice)
        if i % req.n == 0:
            prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
        cached += r.usage.cached_tokens
    out_usage = usage(prompt, completion, cached)
    metrics.tokens(out_usage)
    return {**head, "object": "text_completion", "choices": choices, "usage": out_usage}


async def _events(engine, jobs, spec, head, metrics):
    chunk = {**head, "object": "text_completion"}
    completion = 0
    async for kind, i, value in merged(len(jobs), lambda i: engine_stream(engine, jobs[i][0], jobs[i][1], spec, i)):
        if kind == "error":
            yield error_event(value)
        elif kind == "text":
            yield sse({**chunk, "choices": [{"index": i, "text": value, "logprobs": None, "finish_reason": None}]})
        else:
            done = not isinstance(value, IncompleteGenerationError)
            completion += value.usage.completion_tokens if done else 0
            yield sse({**chunk, "choices": [{"index": i, "text": "", "logprobs": None,
                                             "finish_reason": value.finish_reason if done else "length"}]})
    metrics.tokens(usage(0, completion, 0))
    yield "data: [DONE]\n\n"
