"""Programs on a remote OpenAI-compatible endpoint (sgagent serve, SGLang, vLLM), and SGLang's router in front of
several replicas."""

from .engine import RemoteEngine
from .sglang_router import sglang_router

__all__ = ["RemoteEngine", "sglang_router"]
