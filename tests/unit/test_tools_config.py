"""The ``tools:`` option: what it accepts, the ConfigErrors it gives, and what several tool sets
look like as one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
import pytest
from pydantic import ValidationError

from stillroom.errors import ConfigError
from stillroom.tools import CombinedToolSet, ToolResult, ToolsConfig, ToolSet
from stillroom.tools.base import argument_problem
from stillroom.tools.mcp_tools import MCPToolSet, public_url, result_text
from stillroom.tools.python_tools import PythonToolSet


class Listed(ToolSet):
    """A tool set of fixed tools that answers every call with its own name."""

    def __init__(self, label: str, names: list[str]):
        self.label, self.names, self.closed = label, names, False

    async def tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": name, "description": "",
                                                  "parameters": {"type": "object"}}}
                for name in self.names]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(f"{self.label}:{name}")

    async def aclose(self) -> None:
        self.closed = True

    def identity(self) -> dict[str, Any]:
        return {self.label: self.names}


def test_a_relative_file_is_read_from_the_pipeline_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("def f(x: int) -> int:\n    return x\n")
    toolset = ToolsConfig(python="mine.py").build(tmp_path)
    assert isinstance(toolset, PythonToolSet) and toolset.path == tmp_path / "mine.py"
    with pytest.raises(ConfigError) as caught:
        ToolsConfig(python="absent.py").build(tmp_path)
    assert caught.value.key == "tools.python" and str(tmp_path / "absent.py") in str(caught.value)
    (tmp_path / "notes.txt").write_text("def f(x: int) -> int: ...\n")
    with pytest.raises(ConfigError, match="not a .py file"):
        ToolsConfig(python="notes.txt").build(tmp_path)


@pytest.mark.parametrize(("options", "words"), [
    ({}, "give `python`"),
    ({"mcp": {}}, "exactly one of `command`"),
    ({"mcp": {"command": ["x"], "url": "http://127.0.0.1:1/mcp"}}, "exactly one of `command`"),
    ({"mcp": {"url": "127.0.0.1:1/mcp"}}, "http(s) URL"),
    ({"mcp": {"command": []}}, "`command` is empty"),
    ({"mcp": {"url": "http://127.0.0.1:1/mcp", "env": ["KEY"]}}, "own environment"),
    ({"mcp": {"command": ["x"], "token": "y"}}, "Extra inputs"),
    ({"functions": ["f"], "mcp": {"command": ["x"]}}, "give the file"),
    ({"python": "t.py", "timeout": 0}, "greater than 0"),
])
def test_options_that_cannot_work_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ToolsConfig.model_validate(options)


def test_an_unset_env_variable_is_named_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILLROOM_UNSET_KEY", raising=False)
    config = ToolsConfig.model_validate(
        {"mcp": {"command": ["server"], "env": ["HOME", "STILLROOM_UNSET_KEY"]}})
    with pytest.raises(ConfigError) as caught:
        config.build()
    assert caught.value.key == "tools.mcp.env[1]"
    monkeypatch.setenv("STILLROOM_UNSET_KEY", "s3cret-value")
    toolset = config.build()
    assert isinstance(toolset, MCPToolSet)
    assert "s3cret-value" not in str(toolset.identity())


def test_python_and_mcp_together_are_one_set(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("def f(x: int) -> int:\n    return x\n")
    toolset = ToolsConfig.model_validate(
        {"python": "t.py", "mcp": {"url": "http://u:pw@127.0.0.1:9/mcp?key=k"}}).build(tmp_path)
    assert isinstance(toolset, CombinedToolSet)
    identity = toolset.identity()
    assert set(identity) == {"python", "mcp"}
    assert identity["mcp"]["url"] == "http://127.0.0.1:9/mcp"  # no password, no query


def test_a_combined_set_routes_calls_and_refuses_a_name_offered_twice() -> None:
    first, second = Listed("one", ["a", "b"]), Listed("two", ["c"])
    combined = CombinedToolSet([first, second])

    async def run() -> None:
        assert [tool["function"]["name"] for tool in await combined.tools()] == ["a", "b", "c"]
        assert await combined.call("c", {}) == ToolResult("two:c")
        assert await combined.call("a", {}) == ToolResult("one:a")
        assert (await combined.call("d", {})).kind == "UnknownTool"
        await combined.aclose()

    asyncio.run(run())
    assert first.closed and second.closed
    clash = CombinedToolSet([Listed("one", ["a"]), Listed("two", ["a"])])
    with pytest.raises(ConfigError, match="two tools are named 'a'"):
        asyncio.run(clash.tools())


def test_argument_problems_name_their_path() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"qty": {"type": "integer"}}}}}}
    assert argument_problem({"items": [{"qty": 1}, {"qty": "x"}]}, schema) == (
        "items[1].qty: 'x' is not of type 'integer'")
    assert argument_problem({"items": []}, schema) is None
    assert argument_problem([1], schema) == "arguments must be a JSON object, got list"
    assert "schema is invalid" in (argument_problem({}, {"type": "nonsense"}) or "")


def test_mcp_content_becomes_text() -> None:
    result = mcp_types.CallToolResult(content=[
        mcp_types.TextContent(type="text", text="first"),
        mcp_types.ImageContent(type="image", data="aGVsbG8=", mime_type="image/png"),
        mcp_types.TextContent(type="text", text="second"),
        mcp_types.EmbeddedResource(type="resource", resource=mcp_types.TextResourceContents(
            uri="file:///a.txt", text="inside")),
        mcp_types.ResourceLink(type="resource_link", uri="file:///b.txt", name="b"),
    ])
    assert result_text(result) == (
        "first\n[image: image/png, 5 bytes]\nsecond\ninside\n[resource link: file:///b.txt]")
    structured = mcp_types.CallToolResult(content=[], structured_content={"result": 3})
    assert result_text(structured) == '{"result": 3}'


def test_public_url_drops_credentials_and_query() -> None:
    assert public_url("https://me:pw@host.example:8443/mcp/?token=abc#x") == (
        "https://host.example:8443/mcp/")
