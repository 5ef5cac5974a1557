"""Programs on remote OpenAI-compatible endpoints (sgagent serve, SGLang, vLLM), with prefix-aware routing."""

from .engine import RemoteEngine
from .router import Router

__all__ = ["RemoteEngine", "Router"]
