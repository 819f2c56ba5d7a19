"""The conversation and tool-calling examples, unchanged but for their backend, pointed at a
local OpenAI-compatible server (the project's echo server) through the CLI, as their comments
tell a user to do: the stages then go through a server's own chat and tools API (tool calls in
the response's `tool_calls`, not the embedded model's emulated `<tool_call>` text)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stillroom.data.output import OutputFolder

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
STILLROOM = str(Path(sys.executable).parent / "stillroom")

pytestmark = pytest.mark.integration


def pointed_at(example: str, base_url: str, tmp_path: Path, **options: object) -> Path:
    """A copy of the examples folder whose ``example`` has its default backend replaced by the
    server at ``base_url`` (nothing else changed; ``options`` are more backend options)."""
    shutil.copytree(EXAMPLES_DIR, tmp_path / "examples")
    path = tmp_path / "examples" / f"{example}.yaml"
    pipeline = yaml.safe_load(path.read_text(encoding="utf-8"))
    pipeline["backends"]["default"] = {"kind": "openai", "base_url": base_url,
                                       "model": "served-echo", "max_retries": 1, **options}
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    return path


def run_cli(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([STILLROOM, "run", str(path), "-o", str(out), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def requests_of(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def test_multi_turn_example_on_a_server(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, log = echo_server()
    out = tmp_path / "out"
    run_cli(pointed_at("multi_turn", base_url, tmp_path), out, "--limit", "2")
    folder = OutputFolder(out)
    assert folder.is_complete()
    data = folder.read_rows("data")
    assert not folder.read_rows("failed")
    assert data, "the echo server's answers make whole conversations"
    for row in data:
        roles = [message["role"] for message in row["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * 2
        assert row["metadata"]["conversation"]["model"] == "served-echo"
    # Every turn went to the server: per conversation, 2 assistant turns and the simulated user
    # turn (the first user turn is the seed's own question or is written by the simulator).
    assert len(requests_of(log)) >= 3 * len(data)


def test_tool_calling_example_on_a_server(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, log = echo_server()
    out = tmp_path / "out"
    # echo_structured: the echo server answers a JSON schema (the queries, the judge's verdict)
    # with a minimal instance of it rather than echoing the prompt.
    path = pointed_at("tool_calling", base_url, tmp_path, extra_body={"echo_structured": True})
    run_cli(path, out, "--limit", "1")
    folder = OutputFolder(out)
    assert folder.is_complete()
    rows = folder.read_rows("data") + folder.read_rows("dropped")
    # tool_use went through the server's tools API: the requests carried `tools`, and the
    # answers' calls were run, each call followed by its tool turn.
    tool_requests = [r for r in requests_of(log) if (r.get("body") or r).get("tools")]
    assert tool_requests
    used = [row for row in rows if any(m.get("tool_calls") for m in row.get("messages") or [])]
    assert used
    for row in used:
        messages = row["messages"]
        for index, message in enumerate(messages):
            for number, call in enumerate(message.get("tool_calls") or []):
                answer = messages[index + 1 + number]
                assert answer["role"] == "tool" and answer["tool_call_id"] == call["id"]
        assert json.loads(row["tools"])  # the tools column: JSON text
