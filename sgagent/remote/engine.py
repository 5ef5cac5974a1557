"""RemoteEngine: the engine surface the primitives use, served by an OpenAI-compatible endpoint (our own
`sgagent serve`, SGLang, vLLM, or sglang-router in front of several replicas of them). Programs run on it
unchanged: `Program.run(engine=RemoteEngine(...))`.

Prompts are tokenized here with the model's own tokenizer and sent as token ids, so a program's prompt is
the same token sequence on every backend. Constraints go over the wire in the endpoint's dialect and the
output is checked here again (a server's bug never reaches the program as valid output).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from ..engine.constrained.compiler import parse_spec
from ..engine.constrained.partial import text_or_values
from ..engine.model.source import resolve
from ..engine.prompts import Prompting
from ..engine.request import GenerateResult, SamplingParams, Usage, new_request_id, split_sampling
from ..errors import ConstraintError, IncompleteGenerationError, InvalidPromptError, RemoteError
from ..log import get_logger
from .replica import Replica

DIALECTS = ("sglang", "vllm", "vllm_guided", "plain")
# vLLM's request field for each constraint kind: `structured_outputs` since 0.10.2 (0.12 dropped the guided_* ones)
VLLM_FIELDS = {"json_schema": "json", "regex": "regex", "choices": "choice", "grammar": "grammar"}


class RemoteEngine(Prompting):
    def __init__(self, endpoint: str, *, model: str | None = None, served_model: str | None = None,
                 dialect: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 retries: int = 3):
        """endpoint: a base URL ending in /v1. For several replicas, put sglang-router in front of them and pass
        its URL: its cache-aware routing keeps each prefix on one replica (`sgagent.remote.sglang_router`).
        model: a local GGUF file or Hugging Face folder with that model's tokenizer (default: the default
        model). dialect: how constraints are sent (sglang: regex/json_schema fields, also what `sgagent serve`
        takes; vllm: structured_outputs; vllm_guided: guided_*, as vLLM before 0.10.2; plain: none); by default
        read from /v1/models (and vLLM's /version)."""
        if dialect is not None and dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}")
        if not isinstance(endpoint, str):
            urls = list(endpoint)
            if len(urls) != 1:
                # measured (bench/router_affinity.py): program-sticky routing in the client recomputed 1.6x the
                # prompt tokens of sglang-router's cache-aware policy, and added nothing in front of it
                raise ValueError("RemoteEngine takes one endpoint; for several replicas run sglang-router in front "
                                 "of them (sgagent.remote.sglang_router) and pass its URL")
            endpoint = urls[0]
        src = resolve(model)
        self.model_path = str(src.path)
        self.model_config = src.config
        self.tokenizer = src.load_tokenizer()
        self.max_context = src.config.max_position
        self.replica = Replica(endpoint, api_key=api_key, timeout=timeout, retries=retries)
        self.served_model, self.dialect = served_model, dialect
        self.log = get_logger("sgagent.remote")
        self.counters = dict.fromkeys(["requests", "finished", "failed", "prompt_tokens", "cached_tokens",
                                       "completion_tokens"], 0)

    async def __aenter__(self) -> "RemoteEngine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.replica.aclose()

    async def _discover(self) -> None:
        if self.served_model is not None and self.dialect is not None:
            return
        models = (await self.replica.get("/models")).get("data") or []
        if not models:
            raise RemoteError(f"{self.replica.base_url}/models lists no model")
        self.served_model = self.served_model or models[0]["id"]
        owner = str(models[0].get("owned_by", "")).lower()
        if self.dialect is None:
            self.dialect = (await self._vllm_dialect() if owner == "vllm"
                            else "sglang" if owner in ("sglang", "sgagent")
                            else "sglang" if await self.replica.speaks_native() else "plain")

    async def _vllm_dialect(self) -> str:
        try:
            version = str((await self.replica.get(self.replica.root + "/version")).get("version", ""))
        except (RemoteError, ValueError):
            return "vllm"
        parts = [int(x) for x in version.split(".")[:3] if x.isdigit()]
        return "vllm_guided" if parts and tuple(parts) < (0, 10, 2) else "vllm"

    def _constraint(self, spec: dict) -> tuple[dict, object]:
        """(fields for the request body, the local check of the output)."""
        if not spec:
            return {}, None
        kind, value, finish = parse_spec(spec)  # the regex, the schema dict or the grammar text
        if self.dialect == "plain":
            raise ConstraintError(f"this endpoint takes no {kind} constraint (it is not SGLang, vLLM or sgagent)")
        if kind == "choices" and self.dialect.startswith("vllm"):
            value = [str(c) for c in spec["choices"]]  # vLLM takes the choices themselves, not their regex
        elif kind == "choices":
            kind = "regex"
        if self.dialect == "vllm":
            return {"structured_outputs": {VLLM_FIELDS[kind]: value}}, finish
        if self.dialect == "vllm_guided":
            return {f"guided_{VLLM_FIELDS[kind]}": value}, finish
        field = {"json_schema": "json_schema", "grammar": "ebnf", "regex": "regex"}[kind]
        return {field: json.dumps(value) if kind == "json_schema" else value}, finish

    async def _body(self, ids: list[int], sampling: dict) -> tuple[dict, SamplingParams, object]:
        """The request body in the endpoint's dialect: SGLang's native /generate (token ids, so a router that
        is cache-aware matches prefixes on them), else OpenAI's /completions."""
        await self._discover()
        p, spec = split_sampling(sampling)
        fields, finish = self._constraint(spec)
        if self.dialect == "sglang":
            sp = {"max_new_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p,
                  "stop": list(p.stop), **fields}
            for key, value, off in (("top_k", p.top_k, 0), ("min_p", p.min_p, 0), ("ignore_eos", p.ignore_eos, False),
                                    ("stop_token_ids", p.stop_token_ids, [])):
                if value != off:
                    sp[key] = value
            body = {"input_ids": ids, "sampling_params": sp, "return_logprob": p.logprobs}
            if self.served_model:
                body["model"] = self.served_model
            if p.seed is not None:
                body["sampling_seed"] = p.seed
            return body, p, finish
        if p.stop_token_ids:
            raise InvalidPromptError("stop_token_ids are sent to SGLang-style endpoints only; use stop strings")
        body = {"model": self.served_model, "prompt": self._wire(ids), "max_tokens": p.max_tokens,
                "temperature": p.temperature,
                "top_p": p.top_p, "stop": list(p.stop), **fields}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.min_p > 0:
            body["min_p"] = p.min_p
        if p.ignore_eos:
            body["ignore_eos"] = True
        if p.logprobs:
            body["logprobs"] = 1
        return body, p, finish

    def _wire(self, ids: list[int]):
        """Token ids where the endpoint takes them (SGLang, vLLM, sgagent); text elsewhere (llama.cpp's server)."""
        return ids if self.dialect != "plain" else self.tokenizer.decode(ids)

    def _result(self, ids, text: str, reason: str, usage: dict, finish, logprobs=None) -> GenerateResult:
        if finish is not None and reason == "length":
            self.counters["failed"] += 1
            raise IncompleteGenerationError(f"stopped (length) before its constraint was complete: {text[-120:]!r}",
                                            text=text)
        parsed = finish(text) if finish is not None else None
        out_ids = self.tokenizer.encode(text, add_special_tokens=False)
        cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        completion = (usage or {}).get("completion_tokens", len(out_ids))
        c = self.counters
        c["finished"] += 1
        c["prompt_tokens"] += len(ids)
        c["cached_tokens"] += cached
        c["completion_tokens"] += completion
        return GenerateResult(request_id=new_request_id(), text=text, token_ids=out_ids,
                              usage=Usage(len(ids), cached, completion), finish_reason=reason or "stop",
                              logprobs=logprobs, parsed=parsed if finish is not None else None,
                              decode_steps=completion)

    async def generate(self, prompt=None, *, messages=None, **sampling) -> GenerateResult:
        ids = self.tokenize(prompt, messages)
        body, p, finish = await self._body(ids, sampling)
        self.counters["requests"] += 1
        t0 = time.perf_counter()
        if self.dialect == "sglang":
            out = await self.replica.post_native("/generate", body)
            meta = out.get("meta_info") or {}
            lps = [row[0] for row in meta.get("output_token_logprobs") or []] if p.logprobs else None
            r = self._result(ids, out.get("text") or "", _native_reason(meta), _native_usage(meta), finish, lps)
        else:
            out = await self.replica.post("/completions", body)
            choice = out["choices"][0]
            lps = (choice.get("logprobs") or {}).get("token_logprobs") if p.logprobs else None
            r = self._result(ids, choice.get("text") or "", choice.get("finish_reason"), out.get("usage"), finish,
                             lps)
        self.log.debug("remote.generate", prompt_tokens=len(ids), completion_tokens=r.usage.completion_tokens,
                       ms=round(1000 * (time.perf_counter() - t0), 1))
        return r

    def stream(self, prompt=None, *, messages=None, result: list | None = None, text: bool = False,
               **sampling) -> AsyncIterator:
        """As Engine.stream: text pieces, or with json_schema= (and not text=True) partial values."""
        return text_or_values(self._stream, prompt, messages, result, text, sampling)

    async def _stream(self, prompt, messages, result: list | None, sampling: dict) -> AsyncIterator[str]:
        ids = self.tokenize(prompt, messages)
        body, p, finish = await self._body(ids, sampling)
        self.counters["requests"] += 1
        pieces, reason, usage = [], None, None
        if self.dialect == "sglang":
            body["stream"] = True
            sent = ""
            async for event in self.replica.events_native("/generate", body):
                text = event.get("text") or ""  # SGLang sends the text so far, not a delta
                if len(text) > len(sent):
                    pieces.append(text[len(sent):])
                    sent = text
                    yield pieces[-1]
                meta = event.get("meta_info") or {}
                if meta.get("finish_reason"):
                    reason, usage = _native_reason(meta), _native_usage(meta)
        else:
            body.update(stream=True, stream_options={"include_usage": True})
            async for event in self.replica.events("/completions", body):
                usage = event.get("usage") or usage
                for ch in event.get("choices") or []:
                    if ch.get("text"):
                        pieces.append(ch["text"])
                        yield ch["text"]
                    reason = ch.get("finish_reason") or reason
        r = self._result(ids, "".join(pieces), reason, usage, finish)
        if result is not None:
            result.append(r)

    async def score(self, prompt=None, continuations=(), *, messages=None) -> list[list[float]]:
        """Each continuation's token log-probabilities, from the endpoint's echoed prompt log-probabilities."""
        await self._discover()
        base = self.tokenize(prompt, messages)
        conts = [self.tokenizer.encode(c, add_special_tokens=False) for c in continuations]
        if any(not c for c in conts):
            raise InvalidPromptError("a continuation is empty")
        replica = self.replica  # every choice in one place: the prefix is computed there once

        async def native(c):
            body = {"input_ids": base + c, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                    "return_logprob": True, "logprob_start_len": len(base)}
            if self.served_model:
                body["model"] = self.served_model
            rows = ((await replica.post_native("/generate", body)).get("meta_info") or {}).get(
                "input_token_logprobs") or []
            out = [row[0] for row in rows[:len(c)]]
            if len(out) != len(c) or None in out:
                raise RemoteError("the endpoint returned no prompt log-probabilities (input_token_logprobs)")
            return out

        async def one(c):
            body = {"model": self.served_model, "prompt": self._wire(base + c), "temperature": 0.0, "echo": True,
                    "logprobs": 1, "max_tokens": 1, "logprob_start": len(base)}
            lp = (await replica.post("/completions", body))["choices"][0].get("logprobs") or {}
            values = lp.get("token_logprobs") or []
            if self.dialect != "plain":
                out = values[len(base):len(base) + len(c)]
            else:  # the server tokenized the text itself: take its tokens that spell the continuation
                out = _tail_spelling(lp.get("tokens") or [], values, self.tokenizer.decode(c),
                                     len(self.tokenizer.decode(base + c)))
            if not out or None in out or (self.dialect != "plain" and len(out) != len(c)):
                raise RemoteError("the endpoint returned no prompt log-probabilities; select needs echo + logprobs")
            return out

        self.counters["requests"] += len(conts)
        return list(await asyncio.gather(*((native if self.dialect == "sglang" else one)(c) for c in conts)))

    def stats(self) -> dict:
        c = dict(self.counters)
        c["cache_hit_rate"] = c["cached_tokens"] / c["prompt_tokens"] if c["prompt_tokens"] else 0.0
        c["endpoint"], c["in_flight"] = self.replica.base_url, self.replica.in_flight
        return c


def _tail_spelling(tokens: list[str], logprobs: list, text: str, prompt_chars: int) -> list | None:
    """Log-probabilities of the echoed prompt tokens that spell `text` at the end of the prompt."""
    at, spans = 0, []
    for t, lp in zip(tokens, logprobs):
        spans.append((at, at + len(t), lp))
        at += len(t)
    start = min(prompt_chars, at) - len(text)
    picked = [lp for a, b, lp in spans if b > start and a < start + len(text)]
    if not spans or not any(a == start for a, _, _ in spans):
        return None  # the continuation does not start on a token boundary there
    return picked


def _native_reason(meta: dict) -> str | None:
    reason = meta.get("finish_reason")
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind == "abort":
        detail = reason.get("message") if isinstance(reason, dict) else ""
        raise RemoteError(f"the endpoint aborted the request: {detail}")
    return "length" if kind == "length" else "stop" if kind in ("stop", "eos") else kind


def _native_usage(meta: dict) -> dict:
    """SGLang's meta_info counts as the OpenAI usage object _result reads."""
    return {"prompt_tokens": meta.get("prompt_tokens", 0), "completion_tokens": meta.get("completion_tokens", 0),
            "prompt_tokens_details": {"cached_tokens": meta.get("cached_tokens", 0)}}
