"""sgagent: LLM agent programs as ordinary async Python, on an embedded engine with prefix reuse."""

from .engine import Engine, EngineConfig, GenerateResult, SamplingParams, Usage
from .errors import *  # noqa: F401,F403

__all__ = ["Engine", "EngineConfig", "GenerateResult", "SamplingParams", "Usage"]
