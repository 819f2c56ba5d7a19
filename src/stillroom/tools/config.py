"""The ``tools:`` option of a stage: Python functions in a file, an MCP server, or both."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stillroom.errors import ConfigError
from stillroom.tools.base import CombinedToolSet, ToolSet


class MCPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(
        None, description="Start this server and talk to it over stdio (e.g. [python, "
        "server.py]); it runs in the pipeline file's folder.")
    url: str | None = Field(None, description="A running server's streamable HTTP endpoint "
                            "(e.g. http://127.0.0.1:8765/mcp).")
    env: list[str] = Field(
        default_factory=list, description="NAMES of environment variables the started server "
        "gets (an API key); their values are read when it starts and never written anywhere.")
    tools: list[str] | None = Field(None, description="Offer only these of the server's tools.")

    @model_validator(mode="after")
    def _one_server(self) -> MCPConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of `command` (a server to start) and `url` "
                             "(a running server)")
        if self.command is not None and not self.command:
            raise ValueError("`command` is empty: give the program and its arguments")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"`url` must be an http(s) URL, got {self.url!r}")
        if self.url is not None and self.env:
            raise ValueError("`env` is for a server stillroom starts (`command`); a server at "
                             "`url` has its own environment")
        return self


class ToolsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(
        None, description="A .py file whose functions are the tools (read from the pipeline "
        "file's folder when relative); each call runs in the sandbox, standard library only.")
    functions: list[str] | None = Field(
        None, description="Which of the file's top-level functions are tools (default: every "
        "public one).")
    mcp: MCPConfig | None = Field(None, description="An MCP server's tools.")
    timeout: float = Field(10.0, gt=0, description="Seconds one call may take.")

    @model_validator(mode="after")
    def _some_tools(self) -> ToolsConfig:
        if self.python is None and self.mcp is None:
            raise ValueError("give `python` (a file of functions), `mcp` (a server), or both")
        if self.functions is not None and self.python is None:
            raise ValueError("`functions` picks functions of the `python` file: give the file")
        return self

    def build(self, base_dir: Path | None = None, *, key: str = "tools") -> ToolSet:
        """The tool set this describes. ConfigError naming ``key`` (and the file:line) for a
        missing or unusable file, a function that cannot be a tool, or an unset ``env``
        variable; nothing is started yet (an MCP server starts on first use)."""
        from stillroom.tools.mcp_tools import MCPToolSet
        from stillroom.tools.python_tools import PythonToolSet

        parts: list[ToolSet] = []
        if self.python is not None:
            path = Path(self.python).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise ConfigError(f"no such file: {path}", key=f"{key}.python")
            if path.suffix != ".py":
                raise ConfigError(f"{path} is not a .py file", key=f"{key}.python")
            parts.append(PythonToolSet(path, functions=self.functions, timeout=self.timeout,
                                       key=f"{key}.python"))
        if self.mcp is not None:
            for index, name in enumerate(self.mcp.env):
                if name not in os.environ:
                    raise ConfigError(f"the environment variable {name} is not set (the MCP "
                                      "server is to get it): export it first",
                                      key=f"{key}.mcp.env[{index}]")
            parts.append(MCPToolSet(command=self.mcp.command, url=self.mcp.url,
                                    env=self.mcp.env, tools=self.mcp.tools,
                                    timeout=self.timeout, cwd=base_dir, key=f"{key}.mcp"))
        return parts[0] if len(parts) == 1 else CombinedToolSet(parts)


__all__ = ["MCPConfig", "ToolsConfig"]
