"""Tools a model may call, executed for real: Python functions in the sandbox, MCP servers'
tools through the ``mcp`` package. A stage builds a :class:`ToolSet` from its ``tools:`` option
(:class:`ToolsConfig`), lists the tools for its requests and runs each call the model makes; the
result (:class:`ToolResult`) becomes the conversation's ``tool`` turn."""

from stillroom.tools.base import ERROR_KINDS, CombinedToolSet, ToolResult, ToolSet
from stillroom.tools.config import MCPConfig, ToolsConfig

__all__ = ["ERROR_KINDS", "CombinedToolSet", "MCPConfig", "ToolResult", "ToolSet", "ToolsConfig"]
