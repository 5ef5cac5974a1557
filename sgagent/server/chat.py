"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import IncompleteGenerationError
from .errors import APIError
from ..engine.prompts import message_images
from .generation import (ToolPlan, branch_kwargs, constraint, generate_choice, normalize_messages,
                         sampling_kwargs, usage)
from .protocol import ChatCompletionRequest
from .streaming import cancel_on_disconnect, engine_stream, error_event, merged, sse


def _usage(results) -> dict:
    done = [r for r in results if not isinstance(r, IncompleteGenerationError)]
    prompt = done[0].usage.prompt_tokens if done else 0
    completion = sum(r.usage.completion_tokens for r in done)
    return usage(prompt, completion, max((r.usage.cached_tokens for r in done), default=0))


def _logprobs(engine, r) -> dict | None:
    if isinstance(r, IncompleteGenerationError) or r.logprobs is None:
        return None
    def entry(tok: int, lp: float) -> dict:
        text = engine.tokenizer.decode([tok])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    tops = r.top_logprobs or [[]] * len(r.logprobs)
    return {"content": [{**entry(tok, lp), "top_logprobs": [entry(t, v) for t, v in top]}
                        for tok, lp, top in zip(r.token_ids, r.logprobs, tops)]}


def _message(r, plan: ToolPlan | None) -> tuple[dict, str]:
    """The assistant message and finish_reason of one choice."""
    if isinstance(r, IncompleteGenerationError):
        return {"role": "assistant", "content": r.text}, "length"
    if plan is None:
        return {"role": "assistant", "content": r.text}, r.finish_reason
    content, calls = ToolPlan.split(r.parsed)
    if not calls:
        return {"role": "assistant", "content": content}, "stop"
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": c}
                           for c in calls]}, "tool_calls"


async def chat_completions(engine, model: str, req: ChatCompletionRequest, request: Request, metrics):
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    messages = normalize_messages(req.messages, request.app.state.image_dir)
    plan = ToolPlan.of(req)
    tools = None
    if plan is not None:
        if req.response_format is not None and req.response_format.type != "text":
            raise APIError(400, "tools and response_format cannot be combined", param="response_format")
        messages, tools = plan.messages(engine, messages)
        spec = {"json_schema": plan.schema}
    else:
        spec = constraint(req, req.response_format)
    text = engine.render(messages, tools=tools)
    images = message_images(messages)
    if images:
        ids = await engine.multimodal_prompt(text, images, add_special_tokens=False)
    else:
        ids = engine.tokenizer.encode(text, add_special_tokens=False)
    room = engine.max_context - len(ids)
    if room < 1:
        raise APIError(400, f"the messages are {len(ids)} tokens; the context holds {engine.max_context}",
                       param="messages", code="context_length_exceeded")
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    kwargs = sampling_kwargs(req, min(limit, room) if limit is not None else room, logprobs=req.logprobs,
                            top_logprobs=req.top_logprobs or 0)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "created": created, "model": model}
    metrics.request("chat")

    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(_events(engine, ids, kwargs, spec, req.n, plan, head, include_usage, metrics),
                                 media_type="text/event-stream")

    results = await cancel_on_disconnect(request, _all(engine, ids, kwargs, spec, req.n))
    choices = []
    for i, r in enumerate(results):
        msg, reason = _message(r, plan)
        choices.append({"index": i, "message": msg, "logprobs": _logprobs(engine, r), "finish_reason": reason})
    totals = _usage(results)
    metrics.tokens(totals)
    return {**head, "object": "chat.completion", "choices": choices, "usage": totals}


async def _all(engine, ids, kwargs, spec, n):
    return await asyncio.gather(*(generate_choice(engine, ids, branch_kwargs(kwargs, i), spec) for i in range(n)))


async def _events(engine, ids, kwargs, spec, n, plan, head, include_usage, metrics):
    chunk = {**head, "object": "chat.completion.chunk"}
    ends = []
    for i in range(n):
        yield sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
    async for kind, i, value in merged(n, lambda i: engine_stream(engine, ids, branch_kwargs(kwargs, i), spec, i)):
        if kind == "error":
            yield error_event(value)
            continue
        if kind == "text" and plan is None:
            yield sse({**chunk, "choices": [{"index": i, "delta": {"content": value}, "logprobs": None,
                                             "finish_reason": None}]})
        elif kind == "end":
            ends.append(value)
            msg, reason = _message(value, plan)
            delta = {k: v for k, v in msg.items() if k != "role"} if plan is not None else {}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(delta["tool_calls"])]
            yield sse({**chunk, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]})
    totals = _usage(ends)
    metrics.tokens(totals)
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": totals})
    yield "data: [DONE]\n\n"
