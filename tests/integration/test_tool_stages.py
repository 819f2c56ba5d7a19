"""tool_queries -> tool_use -> tool_check with real parts: the echo server (through the
openai backend) answering with calls, Python tools run in the sandbox, the local MCP server
(stillroom.testing.mcp_server) started over stdio by the run, the embedded model writing queries
and judging, all through the real CLI; a killed run resumed; a server that fails mid-conversation.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integrity_helpers import (
    Proc,
    check_complete_folder,
    check_no_processes,
    check_rows_once,
    commit_lines,
    env_with,
    is_marked_complete,
    read_all,
    run_args,
    run_cli,
    wait_until,
)
from tests.servers import free_port, running

pytestmark = pytest.mark.integration

# Python tools (run in the sandbox); the MCP server adds `add` and `fail` (its own names).
TOOLS_PY = '''
def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b
'''
MCP = {"command": [sys.executable, "-m", "stillroom.testing.mcp_server"], "tools": ["add", "fail"]}


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pipeline(folder: Path, source: Path, stages: list[dict[str, Any]], base_url: str,
             *, backend: dict[str, Any] | None = None) -> Path:
    (folder / "tools.py").write_text(TOOLS_PY)
    backends = {"echo": {"kind": "openai", "model": "echo", "base_url": base_url,
                         "max_retries": 1, "retry_base_delay": 0.01, "retry_max_delay": 0.05,
                         **(backend or {})},
                "embedded": {"kind": "llamacpp", "n_threads": 1}}
    path = folder / "pipeline.yaml"
    path.write_text(json.dumps({"seed": 0, "input": str(source), "backends": backends,
                                "stages": stages}))
    return path


def tools_of(*names: str) -> str:
    """A `tools` column offering only ``names`` (schemas as the tool set lists them)."""
    schemas = {
        "multiply": {"type": "object", "properties": {"a": {"type": "integer"},
                                                      "b": {"type": "integer"}},
                     "required": ["a", "b"]},
        "divide": {"type": "object", "properties": {"a": {"type": "number"},
                                                    "b": {"type": "number"}},
                   "required": ["a", "b"]},
        "fail": {"type": "object", "properties": {"message": {"type": "string"}}},
    }
    return json.dumps([{"type": "function", "function": {"name": name, "description": name,
                                                         "parameters": schemas[name]}}
                       for name in names])


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_full_pipeline_queries_calls_and_three_checks(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    """The embedded model writes queries for the sandbox + MCP tools, the echo server calls
    them, every call runs, the embedded model judges: the three checks' verdicts and the card's
    figures, and nothing of the run (MCP server, sandboxes) left running."""
    base_url, _ = echo_server()
    source = write(tmp_path / "topics.jsonl", [{"id": "t1", "topic": "multiplying numbers"}])
    tools = {"python": "tools.py", "mcp": MCP}
    config = pipeline(tmp_path, source, [
        {"type": "tool_queries", "backend": "embedded", "tools": tools, "n": 2,
         "topic_column": "topic", "query_chars": 80},
        {"type": "tool_use", "backend": "echo", "tools": tools, "max_turns": 2},
        {"type": "tool_check", "backend": "embedded", "tools": tools, "on_fail": "flag",
         "reason_chars": 80},
    ], base_url)
    out = tmp_path / "out"
    result = run_cli(run_args(config, out), env_with(tmp_path / "cache"), tmp_path, timeout=400)
    assert result.returncode == 0, result.output
    check_complete_folder(out)
    rows = read_all(out)
    assert not rows["failed"], rows["failed"][0]["error"]
    kept = rows["data"]
    assert 1 <= len(kept) + len(rows["dropped"]) <= 2 and kept
    for row in kept:
        tools_offered = [t["function"]["name"] for t in json.loads(row["tools"])]
        assert tools_offered == ["multiply", "divide", "add", "fail"]
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant", "tool", "assistant"]
        call = row["messages"][1]["tool_calls"][0]
        assert call["function"]["name"] == "multiply"  # the echo calls the first tool
        args = json.loads(call["function"]["arguments"])
        assert row["messages"][2]["content"] == str(args["a"] * args["b"])  # ran in the sandbox
        assert row["format_ok"] is True and row["execution_ok"] is True
        assert row["semantic_ok"] in (True, False) and row["semantic_reason"]
        assert row["metadata"]["tool_queries"]["parent_id"] == "t1"
        assert row["metadata"]["tool_use"]["calls"][0]["status"] == "ok"
    card = (out / "README.md").read_text()
    for figure in ("format validity rate", "execution pass rate", "assistant turns per conversation",
                   "calls ok"):
        assert f"| {figure} |" in card


def test_embedded_model_calls_through_the_text_format(tmp_path: Path) -> None:
    """The embedded model has no tool API: asked in the <tool_call> format with tool_choice
    required, its first answer is one well-formed call (grammar-constrained) that runs in the
    sandbox; what it does next is up to it, but the row ends in data/ or dropped/ with a
    reason, never cut short."""
    rows = [{"id": "e", "messages": user("What is 12 times 7?")}]
    source = write(tmp_path / "rows.jsonl", rows)
    tools = {"python": "tools.py", "functions": ["multiply"]}
    config = pipeline(tmp_path, source, [
        {"type": "tool_use", "backend": "embedded", "tools": tools, "tool_choice": "required",
         "max_turns": 2, "max_tokens": 48},
        {"type": "tool_check", "semantic": False, "on_fail": "flag"},
    ], "http://127.0.0.1:9/v1")  # the echo backend is declared but not used
    out = tmp_path / "out"
    result = run_cli(run_args(config, out), env_with(tmp_path / "cache"), tmp_path, timeout=300)
    assert result.returncode == 0, result.output
    check_rows_once(rows, out)
    found = read_all(out)
    [row] = found["data"] + found["dropped"]
    first = row["messages"][1]
    assert first["role"] == "assistant" and len(first["tool_calls"]) == 1
    call = first["tool_calls"][0]
    args = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "multiply" and set(args) == {"a", "b"}
    assert row["messages"][2] == {**row["messages"][2], "role": "tool",
                                  "content": str(args["a"] * args["b"])}
    assert row["metadata"]["tool_use"]["calls"][0]["status"] == "ok"
    if found["data"]:
        assert row["format_ok"] is True and row["execution_ok"] is True
    else:
        assert row["drop_reason"]


def test_hooks_and_a_raising_tool_fail_the_checks_they_should(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    base_url, _ = echo_server()
    rows = [
        {"id": "good", "messages": user("multiply 6 and 7"), "tools": tools_of("multiply")},
        {"id": "bad-args", "messages": user("ECHO_BAD_ARGS multiply 2 3"),
         "tools": tools_of("multiply")},
        {"id": "unknown", "messages": user("ECHO_UNKNOWN_TOOL 2 3"), "tools": tools_of("multiply")},
        {"id": "no-call", "messages": user("ECHO_NO_CALL hello"), "tools": tools_of("multiply")},
        {"id": "raises", "messages": user("divide 1 by 0"), "tools": tools_of("divide")},
        {"id": "mcp-fail", "messages": user("please fail"), "tools": tools_of("fail")},
    ]
    source = write(tmp_path / "rows.jsonl", rows)
    tools = {"python": "tools.py", "mcp": MCP}
    config = pipeline(tmp_path, source, [
        {"type": "tool_use", "backend": "echo", "tools": tools},
        {"type": "tool_check", "tools": tools, "semantic": False},
    ], base_url)
    out = tmp_path / "out"
    result = run_cli(run_args(config, out), env_with(tmp_path / "cache"), tmp_path, timeout=200)
    assert result.returncode == 0, result.output
    check_rows_once(rows, out)
    found = read_all(out)
    assert [row["id"] for row in found["data"]] == ["good"]
    assert found["data"][0]["messages"][2]["content"] == "42"
    reasons = {row["id"]: row["drop_reason"] for row in found["dropped"]}
    assert reasons["bad-args"].startswith("format check: call 1 (multiply): arguments are not JSON")
    assert reasons["unknown"].startswith(
        "format check: call 1 (echo_unknown_tool): 'echo_unknown_tool' is not an offered tool")
    assert reasons["no-call"] == "format check: no tool call in the conversation"
    assert reasons["raises"].startswith(
        "execution check: call 1 (divide): ToolError: ZeroDivisionError")
    assert reasons["mcp-fail"].startswith("execution check: call 1 (fail): ToolError:")
    by_id = {row["id"]: row for row in found["dropped"]}
    # Each call's result is in the conversation, errors included, and the model went on.
    tool_turns = [m for m in by_id["raises"]["messages"] if m["role"] == "tool"]
    assert tool_turns[0]["content"].startswith("ToolError: ZeroDivisionError")
    assert by_id["bad-args"]["metadata"]["tool_use"]["calls"][0]["status"] == "InvalidArguments"
    assert by_id["raises"]["execution_ok"] is False and by_id["raises"]["format_ok"] is True


def test_killed_run_resumes_with_each_row_once(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    base_url, _ = echo_server(latency_ms=100)
    rows = [{"id": i, "messages": user(f"multiply {i} and {i + 1}")} for i in range(40)]
    source = write(tmp_path / "rows.jsonl", rows)
    tools = {"python": "tools.py", "functions": ["multiply"]}
    config = pipeline(tmp_path, source, [
        {"type": "tool_use", "backend": "echo", "tools": tools},
        {"type": "tool_check", "tools": tools, "semantic": False},
    ], base_url, backend={"concurrency": 4})
    out = tmp_path / "out"
    env = env_with(tmp_path / "cache")
    # Small commits, so the kill lands between them.
    args = run_args(config, out, "--flush-rows", "5", "--flush-seconds", "0.2")
    first = Proc(args, env, tmp_path, name="first").start()
    killed = wait_until(lambda: commit_lines(out) >= 1, first, timeout=120, what="a first commit")
    assert killed and first.signal(signal.SIGKILL), "the run ended before it could be killed"
    first.result()
    check_no_processes(first.pid)
    assert not is_marked_complete(out)
    done_before = len(read_all(out)["data"])
    assert 0 < done_before < len(rows)  # killed mid-run, with some rows committed
    second = run_cli(args, env, tmp_path, timeout=200)
    assert second.returncode == 0, second.output
    check_rows_once(rows, out)
    check_complete_folder(out)
    for row in read_all(out)["data"]:
        a, b = json.loads(row["messages"][1]["tool_calls"][0]["function"]["arguments"]).values()
        assert row["messages"][2]["content"] == str(a * b)  # its own call's result


def test_server_failing_mid_conversation_fails_the_row_whole(
        tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]) -> None:
    upstream, _ = echo_server()
    port = free_port()
    # The proxy answers the first request (the call) and fails every later one (503).
    command = [sys.executable, "-m", "stillroom.testing.fault_proxy", "--upstream",
               upstream.removesuffix("/v1"), "--port", str(port), "--fail-after", "1",
               "--log", str(tmp_path / "proxy.jsonl")]
    rows = [{"id": "r", "messages": user("multiply 3 and 4")}]
    source = write(tmp_path / "rows.jsonl", rows)
    config = pipeline(tmp_path, source, [
        {"type": "tool_use", "backend": "echo", "tools": {"python": "tools.py"}},
    ], f"http://127.0.0.1:{port}/v1")
    out = tmp_path / "out"
    with running(command, port, tmp_path / "proxy.out"):
        result = run_cli(run_args(config, out, "--max-failure-rate", "1"),
                         env_with(tmp_path / "cache"), tmp_path)
    found = read_all(out)
    assert not found["data"] and not found["dropped"], result.output
    [failed] = found["failed"]
    assert failed["id"] == "r" and failed["stage"] == "tool_use"
    assert failed["error_type"] == "InternalServerError"
    assert failed["messages"] == rows[0]["messages"]  # the input row, not half a conversation
    # The call was answered, the turn after its result was refused on every attempt.
    log = [json.loads(line) for line in (tmp_path / "proxy.jsonl").read_text().splitlines()]
    assert [(entry["status"], entry["fault"]) for entry in log] == [(200, False), (503, True),
                                                                  (503, True)]
