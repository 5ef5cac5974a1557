"""sgagent: LLM agent programs as ordinary async Python, on an embedded engine with prefix reuse."""

from . import errors
from .image_input import Image, image
from .engine import Engine, EngineConfig, GenerateResult, SamplingParams, Usage
from .primitives import (
    Message,
    Program,
    ProgramState,
    assistant,
    default_engine,
    gather,
    join,
    program,
    run_batch,
    set_default_engine,
    system,
    user,
)
from .primitives.roles import tool_result
from .tools import ToolSet, tool, tool_loop
from .agents import Agent, AgentRuntime

__all__ = ["Agent", "AgentRuntime", "Engine", "EngineConfig", "GenerateResult", "Image", "Message", "Program",
           "ProgramState", "SamplingParams", "ToolSet", "Usage", "assistant", "default_engine", "errors", "gather",
           "image", "join", "program", "run_batch", "set_default_engine", "system", "tool", "tool_loop", "tool_result",
           "user"]
