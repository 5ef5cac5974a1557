"""From an API request to engine calls: sampling keywords, the constraint, the tool-call plan, n branches."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import IncompleteGenerationError
from ..tools.schema import FINAL, step_schema
from ..tools.toolset import tools_system_message
from .errors import APIError
from .images import image_source
from .protocol import ChatCompletionRequest, NamedToolChoice, Sampling


def sampling_kwargs(req: Sampling, max_tokens: int, logprobs: bool = False, top_logprobs: int = 0) -> dict:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 8:
        raise APIError(400, "at most 8 stop sequences", param="stop")
    return dict(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0),
                min_p=req.min_p, seed=req.seed, stop=stop, ignore_eos=req.ignore_eos, logprobs=logprobs,
                top_logprobs=top_logprobs)


def constraint(req: Sampling, response_format=None) -> dict:
    """The one constraint a request asks for, by any of the names servers use; {} for none."""
    found = {}
    if response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None or not response_format.json_schema.schema_:
            raise APIError(400, "response_format json_schema needs a schema", param="response_format")
        found["response_format"] = {"json_schema": response_format.json_schema.schema_}
    elif response_format is not None and response_format.type == "json_object":
        found["response_format"] = {"json_schema": {"type": "object"}}
    if req.regex is not None or req.guided_regex is not None:
        found["regex"] = {"regex": req.regex if req.regex is not None else req.guided_regex}
    if req.guided_choice is not None:
        found["guided_choice"] = {"choices": req.guided_choice}
    for field in ("ebnf", "guided_grammar"):
        if getattr(req, field) is not None:
            found[field] = {"grammar": getattr(req, field)}
    for field in ("guided_json", "json_schema"):
        value = getattr(req, field)
        if value is not None:
            try:
                found[field] = {"json_schema": json.loads(value) if isinstance(value, str) else value}
            except json.JSONDecodeError as e:
                raise APIError(400, f"{field} is not JSON: {e}", param=field) from e
    if len(found) > 1:
        raise APIError(400, f"give one constraint, not {sorted(found)}", param=sorted(found)[1])
    return next(iter(found.values()), {})


@dataclass
class ToolPlan:
    """How a chat request with `tools` is served: calls constrained by the tools' schemas."""

    specs: list[dict]
    schema: dict

    @classmethod
    def of(cls, req: ChatCompletionRequest) -> "ToolPlan | None":
        if not req.tools or req.tool_choice == "none":
            return None
        specs = [t.model_dump() for t in req.tools]
        names = [s["function"]["name"] for s in specs]
        if len(set(names)) != len(names) or FINAL in names:
            raise APIError(400, f"tool names must be unique and not {FINAL!r}", param="tools")
        offered = req.tools
        if isinstance(req.tool_choice, NamedToolChoice):
            wanted = req.tool_choice.function.get("name")
            offered = [t for t in req.tools if t.function.name == wanted]
            if not offered:
                raise APIError(400, f"tool_choice names {wanted!r}, which is not in tools", param="tool_choice")
        answer = req.tool_choice in (None, "auto")
        schema = step_schema([t.function for t in offered], parallel=4 if req.parallel_tool_calls else 1,
                             allow_answer=answer)
        return cls(specs, schema)

    def messages(self, engine, messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
        """The messages with the tools described (by the template itself when it can) and the template's tools."""
        first = messages[0] if messages and messages[0]["role"] == "system" else None
        sys = tools_system_message(engine, self.specs, first["content"] if first else "You are a helpful assistant.")
        rest = messages[1:] if first else messages
        return [{"role": "system", "content": sys.content}] + rest, (list(sys.tools) if sys.tools else None)

    @staticmethod
    def split(value) -> tuple[str | None, list[dict]]:
        """(content, tool_calls) from a decoded step."""
        calls = value if isinstance(value, list) else [value]
        if len(calls) == 1 and calls[0]["name"] == FINAL:
            return str(calls[0]["arguments"].get("answer", "")), []
        return None, [{"name": c["name"], "arguments": json.dumps(c["arguments"])} for c in calls if c["name"] != FINAL]


def normalize_messages(messages: list[dict], image_dir=None) -> list[dict]:
    """Chat messages as templates take them: text parts joined (kept as parts beside images), an assistant's
    tool calls written as JSON."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise APIError(400, f"messages[{i}].role must be system, user, assistant or tool", param="messages")
        content = m.get("content")
        if isinstance(content, list):
            content = _parts(content, i, image_dir)
        if content is None and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"].get("arguments") or "{}")}
                     for c in m["tool_calls"]]
            content = json.dumps(calls[0] if len(calls) == 1 else calls)
        if not isinstance(content, (str, list)):
            raise APIError(400, f"messages[{i}].content must be text or content parts", param="messages")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        if m.get("name"):
            msg["name"] = m["name"]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def _parts(content: list, i: int, image_dir) -> str | list[dict]:
    parts = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": p.get("text", "")})
        elif kind == "image_url":
            parts.append({"type": "image", "image": image_source(p, i, image_dir)})
        else:
            raise APIError(400, f"messages[{i}]: content parts are text or image_url, not {kind!r}", param="messages")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


async def generate_choice(engine, ids: list[int], kwargs: dict, spec: dict):
    """One choice: the GenerateResult, or for a constrained one cut by max_tokens, the partial text."""
    try:
        return await engine.generate(ids, **kwargs, **spec)
    except IncompleteGenerationError as e:
        return e


def branch_kwargs(kwargs: dict, i: int) -> dict:
    """Branch i of n: its own seed, so seeded sampled branches differ (greedy ones are equal anyway)."""
    return kwargs if kwargs.get("seed") is None or i == 0 else {**kwargs, "seed": kwargs["seed"] + i}


def usage(prompt: int, completion: int, cached: int) -> dict:
    """The API's usage object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
