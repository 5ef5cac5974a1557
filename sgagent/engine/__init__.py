from .config import EngineConfig
from .engine import Engine
from .request import GenerateResult, SamplingParams, Usage

__all__ = ["Engine", "EngineConfig", "GenerateResult", "SamplingParams", "Usage"]
