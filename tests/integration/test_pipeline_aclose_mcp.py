"""A run stops the MCP server its tool stage started when it ends, not when the event loop does:
from Python (a notebook's loop lives on after the run) no server is left behind."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from stillroom.pipeline.pipeline import Pipeline

pytestmark = pytest.mark.integration

SERVER_MODULE = "stillroom.testing.mcp_server"


def mcp_servers() -> list[psutil.Process]:
    """This process's children running the test MCP server."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if SERVER_MODULE in " ".join(child.cmdline()) and child.status() != "zombie":
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def test_the_mcp_server_is_stopped_when_the_run_ends_on_a_loop_that_goes_on(
    tmp_path: Path, echo_server: Callable[..., tuple[str, Path]]
) -> None:
    base_url, _ = echo_server()
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"id": "r0", "messages": [{"role": "user", "content": "add 2 and 3"}]}) + "\n")
    (tmp_path / "p.yaml").write_text(json.dumps({
        "input": "rows.jsonl",
        "backends": {"echo": {"kind": "openai", "model": "echo", "base_url": base_url,
                              "max_retries": 1}},
        "stages": [{"type": "tool_use", "backend": "echo", "max_turns": 2,
                    "tools": {"mcp": {"command": [sys.executable, "-m", SERVER_MODULE],
                                      "tools": ["add"]}}}],
    }))
    assert mcp_servers() == []
    result = await Pipeline.from_file(tmp_path / "p.yaml").arun(
        tmp_path / "out", progress=False, use_cache=False, max_failure_rate=1.0)
    rows = result.dataset.to_list() + result.dropped.to_list()
    # The server did run: a call reached it and its result is a tool turn.
    tool_turns = [m for row in rows for m in row["messages"] if m["role"] == "tool"]
    assert tool_turns and tool_turns[0]["name"] == "add", rows
    # Still on the run's loop (as in a notebook): the server is gone all the same.
    assert mcp_servers() == []
