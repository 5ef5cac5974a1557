"""SerialBackend: the engine surface the primitives use, served one request at a time by a plain library.

The tokenizer, chat template and constraint compiler are borrowed from an `sgagent.Engine` on the same
weights, so prompts are token-identical and constrained outputs obey the same FSMs; what differs is only how
each request is computed (no batching across requests, no shared KV, no jump-forward).
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod

from sgagent.engine import compute
from sgagent.engine.output import OutputText
from sgagent.engine.request import GenerateResult, SamplingParams, Usage, split_sampling
from sgagent.errors import IncompleteGenerationError, InvalidPromptError

_ids = itertools.count()


class SerialBackend(ABC):
    name = "serial"

    def __init__(self, engine):
        self.engine = engine  # only for tokenizer, template and constraint compiles; its model is never run
        self.tokenizer = engine.tokenizer
        self.eos_ids = set(engine.eos_ids)
        self._lock = asyncio.Lock()
        self.counters = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}

    # -- what the primitives read ----------------------------------------------------------------
    def tokenize(self, prompt=None, messages=None, add_generation_prompt: bool = True) -> list[int]:
        return self.engine.tokenize(prompt, messages, add_generation_prompt)

    def render(self, messages, add_generation_prompt: bool = True, tools=None) -> str:
        return self.engine.render(messages, add_generation_prompt, tools)

    @property
    def chat_template_has_tools(self) -> bool:
        return self.engine.chat_template_has_tools

    def reset(self) -> None:
        """Forget counters (and any cached sequence): the next run starts cold."""
        self.counters = dict.fromkeys(self.counters, 0)

    def stats(self) -> dict:
        c = dict(self.counters)
        c["cache_hit_rate"] = c["cached_tokens"] / c["prompt_tokens"] if c["prompt_tokens"] else 0.0
        return c

    async def aclose(self) -> None:
        await compute.run(self.close)

    def close(self) -> None:
        pass

    # -- requests, one at a time -----------------------------------------------------------------
    async def generate(self, prompt=None, *, messages=None, **sampling) -> GenerateResult:
        params, spec = split_sampling(sampling)
        ids = self.tokenize(prompt, messages)
        if not ids:
            raise InvalidPromptError("the prompt is empty")
        constraint = await self.engine._constraint_state(spec) if spec else None
        async with self._lock:
            out_ids, cached = await compute.run(self._generate, ids, params, constraint)
        return self._result(ids, out_ids, cached, params, constraint)

    async def score(self, prompt=None, continuations=(), *, messages=None) -> list[list[float]]:
        base = self.tokenize(prompt, messages)
        conts = [self.tokenizer.encode(c, add_special_tokens=False) for c in continuations]
        if any(not c for c in conts):
            raise InvalidPromptError("a continuation is empty")
        async with self._lock:
            out, cached = await compute.run(self._score, base, conts)
        self._count(sum(len(base) + len(c) for c in conts), cached, 0)
        return out

    async def stream(self, prompt=None, *, messages=None, result: list | None = None, text: bool = False,
                     **sampling):
        """One piece: the whole text (or, with json_schema= and not text, the value), as the engines' stream."""
        r = await self.generate(prompt, messages=messages, **sampling)
        if result is not None:
            result.append(r)
        yield r.parsed if sampling.get("json_schema") is not None and not text else r.text

    def _count(self, prompt: int, cached: int, completion: int) -> None:
        self.counters["requests"] += 1
        self.counters["prompt_tokens"] += prompt
        self.counters["cached_tokens"] += cached
        self.counters["completion_tokens"] += completion

    def _result(self, ids, out_ids, cached, params, constraint) -> GenerateResult:
        reason = "length"
        if out_ids and out_ids[-1] in self.eos_ids and not params.ignore_eos:
            out_ids, reason = out_ids[:-1], "stop"
        text = OutputText(self.tokenizer, list(params.stop))
        if text.update(out_ids):
            reason = "stop"
        self._count(len(ids), cached, len(out_ids))
        parsed = None
        if constraint is not None:
            if not constraint.is_complete():
                raise IncompleteGenerationError(f"stopped before the constraint was complete: {text.text[-80:]!r}",
                                                text=text.text)
            parsed = constraint.finish(text.text)
        return GenerateResult(request_id=f"{self.name}-{next(_ids)}", text=text.text, token_ids=out_ids,
                              usage=Usage(len(ids), cached, len(out_ids)), finish_reason=reason, parsed=parsed,
                              decode_steps=len(out_ids))

    # -- what a library fills in (run on the engine's compute thread, one at a time) ---------------
    @abstractmethod
    def _generate(self, ids: list[int], params: SamplingParams, constraint) -> tuple[list[int], int]:
        """Output token ids (an EOS included if one ended it) and how many prompt tokens were reused."""

    @abstractmethod
    def _score(self, base: list[int], conts: list[list[int]]) -> tuple[list[list[float]], int]:
        """Each continuation's token log-probabilities after `base`, and how many prompt tokens were reused."""
