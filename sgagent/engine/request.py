"""Requests, their sampling parameters, and what the caller gets back."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSamplingParamsError

_ids = itertools.count()


CONSTRAINT_KEYS = ("regex", "json_schema", "choices", "grammar")
MAX_TOP_LOGPROBS = 20  # as OpenAI


def split_sampling(sampling: dict) -> tuple["SamplingParams", dict]:
    """Sampling keywords as SamplingParams, and the constraint among them ({} for none, else one of
    regex / json_schema / choices / grammar); keywords given as None count as absent."""
    rest = {k: v for k, v in sampling.items() if k not in CONSTRAINT_KEYS}
    spec = {k: sampling[k] for k in CONSTRAINT_KEYS if sampling.get(k) is not None}
    return SamplingParams(**rest), spec


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # the n most likely tokens at each sampled step, with their log-probabilities (implies logprobs)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 0, "max_tokens must be an int >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an int >= 0 (0 or -1 turns it off)"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.seed is None or isinstance(self.seed, int), "seed must be an int"),
            (isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
             f"top_logprobs must be an int in 0..{MAX_TOP_LOGPROBS}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidSamplingParamsError(f"{msg} (got {self})")
        self.logprobs = self.logprobs or self.top_logprobs > 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class GenerateResult:
    request_id: str
    text: str
    token_ids: list[int]
    usage: Usage
    finish_reason: str  # "stop" | "length"
    logprobs: list[float] | None = None  # of each chosen token, when asked
    # per sampled token, its top_logprobs most likely alternatives as (token id, logprob), most likely first
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[float] | None = None  # of the prompt tokens from logprob_start on
    parsed: Any = None  # a constrained generation's parsed value (JSON schema)
    decode_steps: int = 0  # steps that sampled a token (jump-forward appends without one)


def new_request_id() -> str:
    return f"req-{next(_ids)}"
