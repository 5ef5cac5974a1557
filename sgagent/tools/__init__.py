"""Tools: typed Python functions the model calls through schema-constrained JSON, run concurrently."""

from .loop import ToolLoopResult, ToolStep, tool_loop
from .schema import FINAL
from .tool import Tool, tool
from .toolset import ToolCall, ToolResult, ToolSet, tools_system_message

__all__ = ["FINAL", "Tool", "ToolCall", "ToolLoopResult", "ToolResult", "ToolSet", "ToolStep", "tool", "tool_loop",
           "tools_system_message"]
