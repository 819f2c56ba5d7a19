"""Checks of a tool stage's options made before any request: a ``tool_choice`` that names no
tool, and two tools of one name (a Python function and an MCP tool).

An MCP server's tools are known only by asking it, so when the answer matters (a Python file and
a server together, or a ``tool_choice`` that is none of the file's functions) the server is
started, listed and stopped once at check time, on an event loop of its own: the run's own tool
set is built later on the run's loop (an MCP session belongs to the loop that opened it).
"""

from __future__ import annotations

import asyncio
import difflib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stillroom.errors import ConfigError
from stillroom.tools.config import ToolsConfig

# OpenAI's tool_choice keywords; anything else names a tool.
TOOL_CHOICE_KEYWORDS = ("auto", "none", "required")


def static_tool_names(config: ToolsConfig, base_dir: Path | None) -> list[str]:
    """The names of the Python file's tools (read from its source, nothing started); none
    without a file."""
    from stillroom.tools.python_tools import PythonToolSet

    if config.python is None:
        return []
    toolset = config.model_copy(update={"mcp": None}).build(base_dir)
    assert isinstance(toolset, PythonToolSet)
    return list(toolset.functions)


def list_tools_now(config: ToolsConfig, base_dir: Path | None) -> list[dict[str, Any]]:
    """Every tool of ``config`` (an MCP server started, listed and stopped). ConfigError when
    the server cannot be listed or two tools share a name."""

    async def listing() -> list[dict[str, Any]]:
        toolset = config.build(base_dir)
        try:
            return await toolset.tools()
        finally:
            await toolset.aclose()

    # A thread of its own: the caller may be inside a running event loop (the Python API).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, listing()).result()


def unknown_choice(choice: str, names: list[str], where: str) -> str:
    """The message for a ``tool_choice`` that is no keyword and no tool of ``names``."""
    close = difflib.get_close_matches(choice, [*TOOL_CHOICE_KEYWORDS, *names], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"tool_choice {choice!r} is neither {', '.join(TOOL_CHOICE_KEYWORDS)} nor a tool "
            f"of {where} ({', '.join(names) or 'none'}){hint}")


def check_tools_now(config: ToolsConfig | None, base_dir: Path | None,
                    tool_choice: str | None = None) -> None:
    """ConfigError, before any request, for a name offered by both the Python file and the MCP
    server, or a named ``tool_choice`` that is none of the tools. Lists the MCP server only when
    that can decide something."""
    if config is None or config.mcp is None:
        return
    named = tool_choice is not None and tool_choice not in TOOL_CHOICE_KEYWORDS
    if config.python is None and not named:
        return  # an MCP server alone: no name can clash, no choice to check
    names = [tool["function"]["name"] for tool in list_tools_now(config, base_dir)]
    if named and tool_choice not in names:
        raise ConfigError(unknown_choice(str(tool_choice), names, "the tool set"),
                          key="tool_choice")


__all__ = ["TOOL_CHOICE_KEYWORDS", "check_tools_now", "list_tools_now", "static_tool_names",
           "unknown_choice"]
