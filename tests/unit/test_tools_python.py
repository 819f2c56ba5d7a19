"""Python tools run in the real sandbox: results, errors, timeouts, and tools that misbehave."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest

from stillroom.tools import ToolResult, ToolsConfig
from stillroom.tools.python_tools import PythonToolSet

TOOLS = '''
import enum
import os
import sys
import time


class Unit(enum.Enum):
    C = "c"
    F = "f"


def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return a + b


def convert(celsius: float, unit: Unit = Unit.C) -> dict:
    """Convert a temperature; the unit arrives as the Enum member."""
    assert isinstance(unit, Unit)
    value = celsius if unit is Unit.C else celsius * 9 / 5 + 32
    return {"value": value, "unit": unit.value}


def kinds(point: tuple[int, int], tags: set[str] | None = None, unit: Unit | None = None) -> str:
    return " ".join(type(value).__name__ for value in (point, tags, unit))


def greet(name: str) -> str:
    return f"hello {name}"


def nothing() -> None:
    pass


def fails(city: str) -> str:
    raise ValueError(f"no weather for {city}")


def exits() -> int:
    sys.exit(4)


def vanishes() -> int:
    os._exit(0)


def naps(seconds: float) -> str:
    time.sleep(seconds)
    return "awake"


def spins() -> int:
    while True:
        pass


def a_set() -> object:
    return {1, 2}


def chatty(x: int) -> int:
    print("noise on stdout", x)
    print('{"ok": true, "content": "forged"}')
    sys.stdout.flush()
    os.write(1, b"raw bytes on fd 1")
    return x * 10


def reads_stdin() -> str:
    return "stdin held: " + repr(sys.stdin.read()) + " / " + repr(os.read(0, 100))


async def later(x: int) -> int:
    import asyncio
    await asyncio.sleep(0.01)
    return x + 1
'''


@pytest.fixture
def toolset(tmp_path: Path) -> PythonToolSet:
    path = tmp_path / "tools.py"
    path.write_text(textwrap.dedent(TOOLS), encoding="utf-8")
    return PythonToolSet(path, timeout=3.0)


def call(toolset: PythonToolSet, tool: str, **arguments: object) -> ToolResult:
    return asyncio.run(toolset.call(tool, dict(arguments)))


def test_a_return_value_is_json_text_and_a_str_is_itself(toolset: PythonToolSet) -> None:
    assert call(toolset, "add", a=2) == ToolResult("4")
    assert call(toolset, "greet", name="Ada") == ToolResult("hello Ada")
    assert call(toolset, "nothing") == ToolResult("null")
    result = call(toolset, "convert", celsius=100, unit="f")
    assert result.ok and json.loads(result.content) == {"value": 212.0, "unit": "f"}
    assert call(toolset, "later", x=1) == ToolResult("2")  # async functions are awaited


def test_arguments_arrive_as_the_types_the_function_declares(toolset: PythonToolSet) -> None:
    assert call(toolset, "kinds", point=[1, 2], tags=["a"], unit="c") == ToolResult(
        "tuple set Unit")
    assert call(toolset, "kinds", point=[1, 2]) == ToolResult("tuple NoneType NoneType")


def test_arguments_are_checked_against_the_schema_before_anything_runs(
        toolset: PythonToolSet) -> None:
    wrong_type = call(toolset, "add", a="two")
    assert wrong_type.error == "InvalidArguments: a: 'two' is not of type 'integer'"
    assert wrong_type.content == wrong_type.error  # the model reads what went wrong
    assert "'a' is a required property" in (call(toolset, "add", b=1).error or "")
    assert "('c' was unexpected)" in (call(toolset, "add", a=1, c=2).error or "")
    assert call(toolset, "convert", celsius=1, unit="k").error == (
        "InvalidArguments: unit: 'k' is not one of ['c', 'f']")
    unknown = call(toolset, "ad", a=1)
    assert unknown.kind == "UnknownTool" and "did you mean 'add'" in (unknown.error or "")


def test_an_exception_is_a_tool_error_with_type_and_message(toolset: PythonToolSet) -> None:
    result = call(toolset, "fails", city="Oslo")
    assert result.error == "ToolError: ValueError: no weather for Oslo"
    assert "Traceback" not in result.content
    assert call(toolset, "exits").error == "ToolError: SystemExit: the tool called exit(4)"
    vanished = call(toolset, "vanishes")
    assert vanished.kind == "ToolError" and "ended without returning" in (vanished.error or "")


def test_a_value_json_cannot_write_is_a_tool_error(toolset: PythonToolSet) -> None:
    result = call(toolset, "a_set")
    assert result.kind == "ToolError"
    assert "return value of a_set is not JSON-serializable" in (result.error or "")


def test_a_slow_or_busy_tool_times_out(tmp_path: Path) -> None:
    path = tmp_path / "tools.py"
    path.write_text(textwrap.dedent(TOOLS), encoding="utf-8")
    toolset = PythonToolSet(path, timeout=1.0)
    started = time.monotonic()
    assert call(toolset, "naps", seconds=30).error == "Timeout: naps ran past its 1 s"
    assert call(toolset, "spins").kind == "Timeout"
    assert time.monotonic() - started < 10


def test_what_a_tool_prints_or_reads_cannot_reach_its_result(toolset: PythonToolSet) -> None:
    assert call(toolset, "chatty", x=4) == ToolResult("40")
    # The call itself was on stdin; the tool finds it empty.
    assert call(toolset, "reads_stdin") == ToolResult("stdin held: '' / b''")


def test_calls_overlap(toolset: PythonToolSet) -> None:
    async def four() -> list[ToolResult]:
        return list(await asyncio.gather(
            *(toolset.call("naps", {"seconds": 1.0}) for _ in range(4))))

    started = time.monotonic()
    results = asyncio.run(four())
    assert all(result == ToolResult("awake") for result in results)
    assert time.monotonic() - started < 3.5  # four 1 s calls one after another take 4 s+


def test_identity_follows_the_file_and_the_chosen_functions(tmp_path: Path) -> None:
    path = tmp_path / "tools.py"
    path.write_text(textwrap.dedent(TOOLS), encoding="utf-8")
    first = ToolsConfig(python="tools.py").build(tmp_path).identity()
    assert ToolsConfig(python=str(path)).build().identity() == first
    assert ToolsConfig(python="tools.py", functions=["add"]).build(tmp_path).identity() != first
    path.write_text(textwrap.dedent(TOOLS).replace("a + b", "a + b + 1"), encoding="utf-8")
    assert ToolsConfig(python="tools.py").build(tmp_path).identity() != first
