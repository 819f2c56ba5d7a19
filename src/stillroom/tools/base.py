"""What a tool stage sees of tools: a :class:`ToolSet` lists OpenAI function tools and runs calls.

A call never raises for what the tool or its server does: it comes back as a :class:`ToolResult`
whose ``error`` says what went wrong, in one of a few kinds a stage can count and a model can read
(``"<Kind>: <message>"``). The arguments are checked against the tool's ``parameters`` schema
first, so a call that does not fit its schema never runs.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from stillroom.errors import ConfigError

ERROR_KINDS = ("UnknownTool", "InvalidArguments", "ToolError", "Timeout", "ServerError")


@dataclass(frozen=True, slots=True)
class ToolResult:
    content: str  # the tool turn's content: a return value as JSON text, a str as it is
    error: str | None = None  # "<Kind>: <message>", Kind one of ERROR_KINDS; None: the call ran

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def kind(self) -> str | None:
        """The error's kind (``"Timeout"``), or None when the call ran."""
        return None if self.error is None else self.error.split(":", 1)[0]

    @classmethod
    def failed(cls, kind: str, message: str) -> ToolResult:
        """A failed call; its content is the error too, so the tool turn tells the model what
        happened (as an API would) rather than nothing."""
        assert kind in ERROR_KINDS, kind
        error = f"{kind}: {message}"
        return cls(content=error, error=error)


class ToolSet(ABC):
    """Tools a conversation may call. One instance per run; ``aclose`` when done."""

    @abstractmethod
    async def tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI function tools (the shape of ``tool_calls.normalize_tools``)."""

    @abstractmethod
    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one call; never raises for what the tool or its server does."""

    async def aclose(self) -> None:  # noqa: B027 - a set with nothing open has nothing to close
        return None

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What decides the results (a file's digest, function names, a server's command or
        URL), for run fingerprints. Never a secret."""

    async def __aenter__(self) -> ToolSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def unknown_tool(name: str, known: list[str]) -> ToolResult:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(known) or "none"
    return ToolResult.failed("UnknownTool", f"no tool named {name!r} (tools: {listed}){hint}")


def argument_problem(arguments: Any, schema: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit the tool's ``parameters`` schema (the path of the error
    first: ``unit: 'kelvin' is not one of ['c', 'f']``), or None when they do."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except SchemaError as error:
        return f"the tool's own parameters schema is invalid ({error.message})"
    worst = best_match(validator_class(schema).iter_errors(arguments))
    if worst is None:
        return None
    return f"{_path(worst)}: {worst.message}"


def _path(error: ValidationError) -> str:
    parts = list(error.absolute_path)
    if not parts:
        return "(arguments)"
    text = str(parts[0])
    for part in parts[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


class CombinedToolSet(ToolSet):
    """Several tool sets as one (Python functions beside an MCP server's tools). A name offered
    twice is an error when the tools are first listed: a model could not say which it meant."""

    def __init__(self, parts: list[ToolSet]):
        self.parts = parts
        self._owner: dict[str, ToolSet] | None = None
        self._listed: list[dict[str, Any]] = []

    async def tools(self) -> list[dict[str, Any]]:
        if self._owner is None:
            owner: dict[str, ToolSet] = {}
            listed: list[dict[str, Any]] = []
            for part in self.parts:
                for tool in await part.tools():
                    name = tool["function"]["name"]
                    if name in owner:
                        raise ConfigError(
                            f"two tools are named {name!r} (the Python file and the MCP server "
                            "both offer one): rename one, or leave it out with `functions:` or "
                            "`mcp.tools:`", key="tools")
                    owner[name] = part
                    listed.append(tool)
            self._owner, self._listed = owner, listed
        return list(self._listed)

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self._owner is None:
            await self.tools()
        assert self._owner is not None
        part = self._owner.get(name)
        if part is None:
            return unknown_tool(name, list(self._owner))
        return await part.call(name, arguments)

    async def aclose(self) -> None:
        for part in self.parts:
            await part.aclose()

    def identity(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in self.parts:
            merged.update(part.identity())
        return merged


__all__ = ["ERROR_KINDS", "CombinedToolSet", "ToolResult", "ToolSet", "argument_problem",
           "unknown_tool"]
