"""An MCP server's tools, through the ``mcp`` package's client: a server stillroom starts
(``command``, over stdio) or one already running (``url``, streamable HTTP).

One session per tool set, opened on first use and kept. The session lives in a task of its own
(:class:`_Connection`): anyio's transports must be entered and left by one task, while calls come
from many (a stage's rows run concurrently), and ``aclose`` from yet another. A server that dies
fails the calls in flight with ``ServerError``; the next call starts (or reconnects to) it once
more, and if that fails too the set stays down (every later call a quick ``ServerError``) rather
than starting a crashing server once per row.

Secrets: ``env`` names the environment variables the started server gets; their values are read
when it starts, passed to it, and scrubbed, as they are and JSON-escaped, from everything this
module gives out: results, error messages (the server's stderr, quoted when it dies, included)
and the tools' definitions (names, descriptions, schemas), which go into requests and rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from stillroom.errors import ConfigError
from stillroom.llm.tool_calls import ToolSchemaError, normalize_tools
from stillroom.tools.base import ToolResult, ToolSet, argument_problem, unknown_tool

CONNECT_SECONDS = 30.0  # a server that has not answered `initialize` by then is not coming
CLOSE_SECONDS = 10.0
STDERR_TAIL = 400
# mcp_types' JSON-RPC codes for a request that timed out and for a connection that closed.
REQUEST_TIMEOUT, CONNECTION_CLOSED = -32001, -32000
_BROKEN = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
           ConnectionError, EOFError, OSError)


class MCPToolSet(ToolSet):
    def __init__(self, *, command: list[str] | None = None, url: str | None = None,
                 env: list[str] | None = None, tools: list[str] | None = None,
                 timeout: float = 10.0, cwd: Path | None = None, key: str = "tools.mcp"):
        if (command is None) == (url is None):
            raise ConfigError("give exactly one of `command` (a server to start) and `url` "
                              "(a running server)", key=key)
        self.command, self.url, self.env_names = command, url, list(env or [])
        self.only, self.timeout, self.cwd, self.key = tools, timeout, cwd, key
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._down: str | None = None  # why the server is given up on
        self._listed: list[dict[str, Any]] | None = None
        self._schemas: dict[str, dict[str, Any]] = {}
        self._server_names: dict[str, str] = {}  # a scrubbed tool name -> the server's name

    # ------------------------------------------------------------------ the tools

    async def tools(self) -> list[dict[str, Any]]:
        if self._listed is None:
            try:
                connection = await self._connect()
                listed = await _list_tools(connection.session)
            except ConfigError:
                raise
            except _Down as error:
                raise ConfigError(str(error), key=self.key) from None
            except Exception as error:  # noqa: BLE001 - any failure to reach it is the config's
                raise ConfigError(f"cannot list the MCP server's tools ({self._where()}): "
                                  f"{self._scrub(_describe(error))}", key=self.key) from None
            self._listed = self._chosen(listed)
            self._schemas = {tool["function"]["name"]: tool["function"]["parameters"]
                             for tool in self._listed}
        return list(self._listed)

    def _chosen(self, listed: list[Any]) -> list[dict[str, Any]]:
        # The definitions go into every request and the `tools` column: a server that puts a
        # secret it was given into a name, description or schema must not publish it. A name
        # is scrubbed too; calls map the scrubbed name back to the server's own.
        self._server_names = {self._scrub(tool.name): tool.name for tool in listed}
        try:
            tools = normalize_tools([self._scrub_value({"type": "function", "function": {
                "name": tool.name, "description": tool.description or "",
                "parameters": tool.input_schema or {"type": "object", "properties": {}}}})
                for tool in listed], where="the MCP server's tools")
        except ToolSchemaError as error:
            raise ConfigError(str(error), key=self.key) from None
        if self.only is None:
            return tools
        offered = {tool["function"]["name"]: tool for tool in tools}
        for index, name in enumerate(self.only):
            if name not in offered:
                raise ConfigError(f"the MCP server offers no tool {name!r} (it offers: "
                                  f"{', '.join(offered) or 'none'})", key=f"{self.key}.tools[{index}]")
        return [offered[name] for name in self.only]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self._listed is None:
            try:
                await self.tools()
            except ConfigError as error:
                return ToolResult.failed("ServerError", error.reason)
        if name not in self._schemas:
            return unknown_tool(name, list(self._schemas))
        problem = argument_problem(arguments, self._schemas[name])
        if problem:
            return ToolResult.failed("InvalidArguments", problem)
        try:
            connection = await self._connect()
        except Exception as error:  # noqa: BLE001 - told as the call's result
            return ToolResult.failed("ServerError", self._scrub(_describe(error)))
        try:
            # The session's read timeout is the call's; the outer one only guards against a
            # transport that never gives up.
            async with asyncio.timeout(self.timeout + 5):
                result = await connection.session.call_tool(
                    self._server_names.get(name, name), arguments,
                    read_timeout_seconds=self.timeout)
        except TimeoutError:
            return self._timeout(name)
        except MCPError as error:
            if error.code == REQUEST_TIMEOUT:
                return self._timeout(name)
            if error.code == CONNECTION_CLOSED or connection.finished:
                return self._lost(connection, error)
            return ToolResult.failed("ToolError", self._scrub(error.message))
        except _BROKEN as error:
            return self._lost(connection, error)
        except Exception as error:  # noqa: BLE001 - a malformed answer, an HTTP library's error
            # Unknown state: start afresh at the next call rather than trust this session.
            return self._lost(connection, error)
        content = self._scrub(result_text(result))
        if result.is_error:
            return ToolResult.failed("ToolError", content or "the tool reported an error")
        return ToolResult(content=content)

    def _timeout(self, name: str) -> ToolResult:
        return ToolResult.failed("Timeout", f"{name} ran past its {self.timeout:g} s")

    def _lost(self, connection: _Connection, error: BaseException) -> ToolResult:
        connection.broken = True
        tail = connection.stderr_tail()
        said = f"; its stderr ends: {tail}" if tail else ""
        return ToolResult.failed("ServerError", self._scrub(
            f"lost the MCP server ({self._where()}): {_describe(error)}{said}"))

    # ------------------------------------------------------------------ the session

    async def _connect(self) -> _Connection:
        async with self._lock:
            if self._down is not None:
                raise _Down(self._down)
            current = self._connection
            if current is not None and not current.broken and not current.finished:
                return current
            again = current is not None
            if current is not None:
                self._connection = None
                await current.close()
            connection = _Connection(self._transport, self._stderr_file())
            try:
                await connection.start()
            except Exception as error:  # noqa: BLE001 - kept as the reason it is down
                tail = connection.stderr_tail()
                said = f"; its stderr ends: {tail}" if tail else ""
                verb = "reconnect to" if again else "start or reach"
                self._down = self._scrub(f"could not {verb} the MCP server ({self._where()}): "
                                         f"{_describe(error)}{said}")
                await connection.close()
                raise _Down(self._down) from None
            self._connection = connection
            return connection

    def _stderr_file(self) -> TextIO | None:
        if self.command is None:
            return None
        # A file, not a pipe: nothing has to read it while the server runs.
        return cast(TextIO, tempfile.TemporaryFile("w+", encoding="utf-8"))

    def _transport(self, stderr: TextIO | None) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.url is not None:
            return streamable_http_client(self.url)
        assert self.command is not None and stderr is not None
        env = {}
        for name in self.env_names:
            if name not in os.environ:
                raise ConfigError(f"the environment variable {name} is not set (the MCP server "
                                  "is to get it)", key=f"{self.key}.env")
            env[name] = os.environ[name]
        server = StdioServerParameters(command=self.command[0], args=self.command[1:], env=env,
                                       cwd=str(self.cwd) if self.cwd else None)
        return stdio_client(server, errlog=stderr)

    async def aclose(self) -> None:
        async with self._lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None

    # ------------------------------------------------------------------ what it says

    def _where(self) -> str:
        return f"`{' '.join(self.command)}`" if self.command else public_url(self.url or "")

    def _scrub(self, text: str) -> str:
        for name in self.env_names:
            value = os.environ.get(name)
            if not value or len(value) < 4:  # a 1-3 character value would blank ordinary text
                continue
            # The value as it is, and as JSON writes it inside a string (a tool that returns
            # json.dumps of it: `"` and `\` escaped, non-ASCII as \uXXXX or as it is);
            # the longest form first, so a shorter one never leaves half of a longer one.
            forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
            for form in sorted(forms, key=len, reverse=True):
                text = text.replace(form, f"${name}")
        return text

    def _scrub_value(self, value: Any) -> Any:
        """``value`` (JSON data: a tool's definition) with every string, keys included,
        scrubbed."""
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list):
            return [self._scrub_value(item) for item in value]
        if isinstance(value, dict):
            return {self._scrub(str(key)): self._scrub_value(item) for key, item in value.items()}
        return value

    def identity(self) -> dict[str, Any]:
        server: dict[str, Any] = ({"command": list(self.command)} if self.command
                                  else {"url": public_url(self.url or "")})
        server.update(env=list(self.env_names), tools=self.only, timeout=self.timeout)
        return {"mcp": server}


class _Down(Exception):
    """The server could not be started or reached again: every later call says why."""


class _Connection:
    """One session with the server, owned by its own task from start to close."""

    def __init__(self, transport: Callable[[TextIO | None],
                                           contextlib.AbstractAsyncContextManager[Any]],
                 stderr: TextIO | None):
        self._transport, self._stderr = transport, stderr
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._session: ClientSession | None = None
        self.broken = False

    @property
    def session(self) -> ClientSession:
        assert self._session is not None
        return self._session

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stillroom-mcp-session")
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                await self._ready.wait()
        except TimeoutError:
            raise TimeoutError(f"no answer to `initialize` in {CONNECT_SECONDS:g} s") from None
        if self._session is None:
            raise self._error or RuntimeError("the session ended before it began")

    async def _run(self) -> None:
        try:
            async with self._transport(self._stderr) as streams, ClientSession(
                    streams[0], streams[1]) as session:
                await session.initialize()
                self._session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # noqa: BLE001 - the owner reads it; nothing else does
            self._error = _first(error)
            if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        finally:
            self.broken = True
            self._ready.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            try:
                async with asyncio.timeout(CLOSE_SECONDS):
                    await asyncio.shield(self._task)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()

    def stderr_tail(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            text = self._stderr.read()
        except (OSError, ValueError):
            return ""
        return " ".join(text[-STDERR_TAIL:].split())


async def _list_tools(session: ClientSession) -> list[Any]:
    from mcp.types import PaginatedRequestParams

    tools: list[Any] = []
    cursor: str | None = None
    while True:
        page = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


def result_text(result: Any) -> str:
    """A call's content as the tool turn's text: text blocks joined by newlines; any other block
    described in brackets (a model reads text only); the structured result when there is no
    content at all."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            data = getattr(block, "data", "") or ""
            size = len(data) * 3 // 4 - data[-2:].count("=")  # base64's length, undecoded
            parts.append(f"[{kind}: {getattr(block, 'mime_type', '?')}, {size} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}]")
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else
                         f"[resource: {resource.uri}, {getattr(resource, 'mime_type', None) or '?'}]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def public_url(url: str) -> str:
    """``url`` without what may be a secret: its user:password and its query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _first(error: BaseException) -> BaseException:
    """The first real error inside anyio's exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _describe(error: BaseException) -> str:
    error = _first(error)
    if isinstance(error, MCPError | _Down):
        return error.message if isinstance(error, MCPError) else str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["MCPToolSet", "public_url", "result_text"]
