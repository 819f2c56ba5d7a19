"""MCP tools against the real local server (stillroom.testing.mcp_server), started by the tests
over stdio and over streamable HTTP, on asyncio's loop and on uvloop (the pipeline's)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from stillroom.errors import ConfigError
from stillroom.tools import ToolResult, ToolsConfig, ToolSet
from tests.servers import free_port, running

pytestmark = pytest.mark.integration

SERVER = [sys.executable, "-m", "stillroom.testing.mcp_server"]
SECRET = "tok-7f3a9c-do-not-print"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(coroutine: Coroutine[Any, Any, Any], loop: str = "uvloop") -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(coroutine)


def build(options: dict[str, Any], base_dir: Path | None = None) -> ToolSet:
    return ToolsConfig.model_validate(options).build(base_dir)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_stdio_server_tools_and_calls(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEST_SECRET", SECRET)
    toolset = build({"mcp": {"command": SERVER, "env": ["STILLROOM_TEST_SECRET"]},
                     "timeout": 2})

    async def session() -> list[ToolResult]:
        tools = await toolset.tools()
        names = [tool["function"]["name"] for tool in tools]
        assert names == ["add", "capital", "fail", "sleep", "secret_length", "crash"]
        assert tools[0]["function"]["parameters"]["required"] == ["a", "b"]
        started = time.monotonic()
        slept = await asyncio.gather(*(toolset.call("sleep", {"seconds": 1}) for _ in range(3)))
        assert time.monotonic() - started < 2.5  # one session, calls in flight together
        assert all(result == ToolResult("slept 1 s") for result in slept)
        try:
            return [
                await toolset.call("add", {"a": 2, "b": 40}),
                await toolset.call("capital", {"country": "Kenya"}),
                await toolset.call("capital", {"country": "Atlantis"}),
                await toolset.call("fail", {}),
                await toolset.call("add", {"a": "2", "b": 40}),
                await toolset.call("subtract", {"a": 2}),
                await toolset.call("sleep", {"seconds": 30}),
                await toolset.call("add", {"a": 1, "b": 1}),  # the session outlived a timeout
                await toolset.call("secret_length", {}),
            ]
        finally:
            await toolset.aclose()

    results = run(session(), loop)
    assert results[0] == ToolResult("42")
    assert results[1] == ToolResult("Nairobi")
    assert results[2].kind == "ToolError" and "no capital known for 'Atlantis'" in results[2].content
    assert results[3].kind == "ToolError" and "this tool always fails" in results[3].content
    assert results[4].error == "InvalidArguments: a: '2' is not of type 'integer'"
    assert results[5].kind == "UnknownTool"
    assert results[6].error == "Timeout: sleep ran past its 2 s"
    assert results[7] == ToolResult("2")
    assert results[8] == ToolResult(str(len(SECRET)))  # the server got the secret...
    assert SECRET not in str(toolset.identity())  # ...and the fingerprint did not
    assert toolset.identity()["mcp"]["env"] == ["STILLROOM_TEST_SECRET"]


def test_a_server_that_dies_mid_run_fails_its_calls_then_is_started_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEST_SECRET", SECRET)
    toolset = build({"mcp": {"command": SERVER, "env": ["STILLROOM_TEST_SECRET"]},
                     "timeout": 20})

    async def session() -> tuple[ToolResult, ...]:
        await toolset.tools()
        in_flight = asyncio.create_task(toolset.call("sleep", {"seconds": 10}))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        crashed = await toolset.call("crash", {})
        waiting = await in_flight
        assert time.monotonic() - started < 5  # the in-flight call did not wait out its sleep
        again = await toolset.call("add", {"a": 1, "b": 2})
        await toolset.aclose()
        return crashed, waiting, again

    crashed, waiting, again = run(session())
    assert crashed.kind == "ServerError" and "lost the MCP server" in crashed.content
    assert waiting.kind == "ServerError"
    assert again == ToolResult("3")


def test_a_server_that_cannot_come_back_is_given_up_and_its_secret_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It prints the secret to stderr when it refuses to start again: the error quotes its
    stderr, with the value replaced by the variable's name."""
    monkeypatch.setenv("STILLROOM_TEST_SECRET", SECRET)
    wrapper = tmp_path / "once.py"
    wrapper.write_text(textwrap.dedent("""
        import os, runpy, sys
        marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started")
        if os.path.exists(marker):
            print("refusing to start again; key=" + os.environ["STILLROOM_TEST_SECRET"],
                  file=sys.stderr)
            sys.exit(1)
        open(marker, "w").close()
        runpy.run_module("stillroom.testing.mcp_server", run_name="__main__")
    """))
    toolset = build({"mcp": {"command": [sys.executable, "once.py"],
                             "env": ["STILLROOM_TEST_SECRET"]}}, tmp_path)

    async def session() -> list[ToolResult]:
        results = [await toolset.call("add", {"a": 1, "b": 1}),  # started on first use
                   await toolset.call("crash", {}),
                   await toolset.call("add", {"a": 1, "b": 1})]
        started = time.monotonic()
        results.append(await toolset.call("add", {"a": 1, "b": 1}))
        assert time.monotonic() - started < 0.5  # down: not started once per call
        await toolset.aclose()
        return results

    first, crashed, refused, down = run(session())
    assert first == ToolResult("2") and crashed.kind == "ServerError"
    assert refused.kind == "ServerError" and "could not reconnect" in refused.content
    assert "refusing to start again; key=$STILLROOM_TEST_SECRET" in refused.content
    assert down == refused
    for result in (crashed, refused):
        assert SECRET not in (result.error or "") and SECRET not in result.content


def test_http_server_by_url_with_a_tool_filter_and_a_restart(tmp_path: Path) -> None:
    port = free_port()
    command = [*SERVER, "--http", "--port", str(port)]
    toolset = build({"mcp": {"url": f"http://127.0.0.1:{port}/mcp", "tools": ["capital", "add"]},
                     "timeout": 5})

    async def first_half() -> list[ToolResult]:
        tools = await toolset.tools()
        assert [tool["function"]["name"] for tool in tools] == ["capital", "add"]
        return [await toolset.call("capital", {"country": "Japan"}),
                await toolset.call("fail", {})]  # offered by the server, not by this set

    async def after_kill() -> ToolResult:
        return await toolset.call("add", {"a": 5, "b": 5})

    async def after_restart() -> ToolResult:
        try:
            return await toolset.call("add", {"a": 5, "b": 6})
        finally:
            await toolset.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        with running(command, port, tmp_path / "first.log"):
            capital, filtered = runner.run(first_half())
        lost = runner.run(after_kill())
        with running(command, port, tmp_path / "second.log"):
            back = runner.run(after_restart())
    assert capital == ToolResult("Tokyo")
    assert filtered.kind == "UnknownTool"
    assert lost.kind == "ServerError"
    assert back == ToolResult("11")  # one reconnect, to the new server
    assert toolset.identity()["mcp"] == {"url": f"http://127.0.0.1:{port}/mcp", "env": [],
                                         "tools": ["capital", "add"], "timeout": 5}


def test_a_server_that_cannot_start_or_lacks_a_tool_is_a_config_error(tmp_path: Path) -> None:
    missing = build({"mcp": {"command": ["stillroom-no-such-server"]}})
    with pytest.raises(ConfigError) as caught:
        run(missing.tools())
    assert caught.value.key == "tools.mcp" and "stillroom-no-such-server" in str(caught.value)
    run(missing.aclose())
    filtered = build({"mcp": {"command": SERVER, "tools": ["add", "multiply"]}})
    try:
        with pytest.raises(ConfigError) as caught:
            run(filtered.tools())
    finally:
        run(filtered.aclose())
    assert caught.value.key == "tools.mcp.tools[1]" and "offers no tool 'multiply'" in str(
        caught.value)


def test_python_tools_beside_an_mcp_server(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        def add(a: int, b: int) -> int:
            """Add, the local way."""
            return a + b

        def shout(text: str) -> str:
            """Upper-case a text."""
            return text.upper()
    '''))
    clash = build({"python": "mine.py", "mcp": {"command": SERVER}}, tmp_path)
    try:
        with pytest.raises(ConfigError, match="two tools are named 'add'"):
            run(clash.tools())
    finally:
        run(clash.aclose())
    both = build({"python": "mine.py", "functions": ["shout"], "mcp": {"command": SERVER}},
                 tmp_path)

    async def session() -> list[ToolResult]:
        try:
            names = [tool["function"]["name"] for tool in await both.tools()]
            assert names[0] == "shout" and "add" in names
            return [await both.call("shout", {"text": "hi"}),
                    await both.call("add", {"a": 1, "b": 2})]
        finally:
            await both.aclose()

    assert run(session()) == [ToolResult("HI"), ToolResult("3")]
