"""Red-team findings of issue 19 with real parts: the echo server, the local MCP server
(stillroom.testing.mcp_server) and a leaky one written by the test, the sandbox, the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tool_stages import pipeline, user, write
from tests.integration.test_tools_mcp import build, run
from tests.integrity_helpers import env_with, read_all, run_args, run_cli

pytestmark = pytest.mark.integration

SERVER = [sys.executable, "-m", "stillroom.testing.mcp_server"]
# A secret JSON escapes: a quote, a backslash, non-ASCII.
SECRET = 'k3y"with\\slash-\u00e9t\u00e9-9z'
LEAKY = '''
import json, os
from mcp.server.mcpserver import MCPServer

KEY = os.environ["STILLROOM_TEST_SECRET"]
server = MCPServer("leaky", log_level="WARNING")


@server.tool(description=f"Add two integers (account {KEY})")
def add(a: int, b: int) -> int:
    return a + b


@server.tool()
def leak(x: str) -> str:
    """Leak."""
    return "raw=" + KEY + " json=" + json.dumps({"k": KEY}) + " ascii=" + json.dumps(
        KEY, ensure_ascii=False)


server.run("stdio")
'''


def escaped_forms(value: str) -> list[str]:
    return [value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]


def test_secrets_are_scrubbed_from_tool_definitions_and_json_escaped_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEST_SECRET", SECRET)
    (tmp_path / "leaky.py").write_text(LEAKY)
    toolset = build({"mcp": {"command": [sys.executable, "leaky.py"],
                             "env": ["STILLROOM_TEST_SECRET"]}}, tmp_path)

    async def session() -> tuple[list[dict[str, Any]], Any, Any]:
        try:
            return (await toolset.tools(), await toolset.call("leak", {"x": "a"}),
                    await toolset.call("add", {"a": 1, "b": 2}))
        finally:
            await toolset.aclose()

    tools, leaked, added = run(session())
    definitions = json.dumps(tools)
    assert "account $STILLROOM_TEST_SECRET" in tools[0]["function"]["description"]
    assert leaked.ok and leaked.content.count("$STILLROOM_TEST_SECRET") == 3, leaked.content
    assert added.content == "3"
    for form in escaped_forms(SECRET):
        assert form not in definitions and form not in leaked.content


def tool_use_run(tmp_path: Path, base_url: str, tools: dict[str, Any], rows: int = 2,
                 stages: list[dict[str, Any]] | None = None) -> tuple[Any, dict[str, Any]]:
    source = write(tmp_path / "rows.jsonl",
                   [{"id": f"r{i}", "messages": user(f"go {i}")} for i in range(rows)])
    config = pipeline(tmp_path, source, stages or [
        {"type": "tool_use", "backend": "echo", "tools": tools, "max_turns": 2}], base_url)
    out = tmp_path / "out"
    result = run_cli(run_args(config, out, "--max-failure-rate", "1"),
                     env_with(tmp_path / "cache"), tmp_path, timeout=300)
    return result, read_all(out)


def test_a_dying_mcp_server_sends_rows_to_failed_not_to_data(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    base_url, _ = echo_server()
    result, found = tool_use_run(tmp_path, base_url, {"mcp": {"command": SERVER,
                                                              "tools": ["crash"]}})
    assert result.returncode == 0, result.output  # --max-failure-rate 1
    assert not found["data"] and not found["dropped"]
    assert len(found["failed"]) == 2
    for failed in found["failed"]:
        assert failed["error_type"] == "ServerError", failed["error"]
        assert "'crash' did not run" in failed["error"]
        assert failed["messages"] == user(f"go {failed['id'][1:]}")  # the input row, whole


def test_a_timeout_fails_the_row_or_is_a_tool_turn_when_asked(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    base_url, _ = echo_server()
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "slow.py").write_text(textwrap.dedent('''
        import time

        def slow(x: int) -> int:
            """Sleep."""
            time.sleep(30)
            return x
    '''))
    tools = {"python": str(tmp_path / "slow" / "slow.py"), "timeout": 1}
    result, found = tool_use_run(tmp_path / "slow", base_url, tools, rows=1)
    assert [f["error_type"] for f in found["failed"]] == ["Timeout"], result.output
    assert not found["data"]
    (tmp_path / "turn").mkdir()
    result, found = tool_use_run(tmp_path / "turn", base_url, tools, rows=1, stages=[
        {"type": "tool_use", "backend": "echo", "tools": tools, "max_turns": 2,
         "timeout_fails_row": False}])
    [row] = found["data"]
    assert row["messages"][2]["content"] == "Timeout: slow ran past its 1 s", result.output


def test_a_name_clash_and_a_bad_tool_choice_exit_2_before_any_request(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    base_url, log = echo_server()
    (tmp_path / "mine.py").write_text(
        'def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b\n')
    clash, _ = tool_use_run(tmp_path, base_url, {"python": "mine.py", "mcp": {"command": SERVER}})
    assert clash.returncode == 2, clash.output
    assert "two tools are named 'add'" in clash.output and "Traceback" not in clash.output
    typo, _ = tool_use_run(tmp_path, base_url, {}, stages=[
        {"type": "tool_use", "backend": "echo", "tool_choice": "capitol",
         "tools": {"mcp": {"command": SERVER}}}])
    assert typo.returncode == 2, typo.output
    assert "'capitol' is neither auto, none, required nor a tool" in typo.output
    assert "did you mean 'capital'" in typo.output
    assert not log.exists() or not log.read_text().strip()  # no request was sent


def test_queries_calls_and_semantic_judge_all_against_the_echo_server(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    """The echo server answers a json_schema response_format with JSON that fits it: the whole
    tool pipeline (query writing, calls, the semantic judge) runs on it without a model."""
    base_url, log = echo_server()
    source = write(tmp_path / "topics.jsonl", [{"id": "t1", "topic": "multiplying numbers"}])
    tools = {"python": "tools.py"}
    config = pipeline(tmp_path, source, [
        {"type": "tool_queries", "backend": "echo", "tools": tools, "n": 2,
         "topic_column": "topic", "query_chars": 60},
        {"type": "tool_use", "backend": "echo", "tools": tools, "max_turns": 2},
        {"type": "tool_check", "backend": "echo", "tools": tools, "reason_chars": 80},
    ], base_url, backend={"extra_body": {"echo_structured": True}})
    out = tmp_path / "out"
    result = run_cli(run_args(config, out), env_with(tmp_path / "cache"), tmp_path, timeout=300)
    assert result.returncode == 0, result.output
    found = read_all(out)
    assert len(found["data"]) == 2, (found["dropped"], found["failed"])
    for row in found["data"]:
        query = row["messages"][0]["content"]
        assert query.startswith("echo ") and len(query) <= 60
        assert row["format_ok"] and row["execution_ok"] and row["semantic_ok"] is True
        assert row["semantic_reason"].startswith("echo 1: ")
        ids = [c["id"] for c in row["messages"][1]["tool_calls"]]
        assert ids == ["call_0_0"] and row["messages"][2]["tool_call_id"] == "call_0_0"
    bodies = [json.loads(line)["body"] for line in log.read_text().splitlines()]
    asked = [b for b in bodies if (b.get("response_format") or {}).get("type") == "json_schema"]
    assert len(asked) == 3  # one for the queries, one judge per conversation
