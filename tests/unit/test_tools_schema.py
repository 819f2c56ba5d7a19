"""Python tools described from their source: types, defaults, enums, docstrings, and the
ConfigErrors for what cannot be a tool. Nothing here runs the file (a file that would fail to
import still gets its schema)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest

from stillroom.errors import ConfigError
from stillroom.llm.tool_calls import normalize_tools
from stillroom.tools.python_schema import read_tools

WEATHER = '''
from __future__ import annotations

import enum
from typing import Literal, Optional

raise RuntimeError("importing this file would fail: the schema must not need it")


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


Detail = Literal["short", "long"]


def weather(city: str, unit: Unit = Unit.CELSIUS, days: int = 1, detail: Detail = "short",
            tags: list[str] | None = None, ratio: Optional[float] = None, *, verbose: bool = False) -> dict:
    """The weather forecast for a city.

    Looks it up in a table.

    Args:
        city: The city's name,
            in English.
        unit: Degrees in Celsius or Fahrenheit.
        days (int): How many days ahead.
    """
    return {}


def pair(point: tuple[int, int], scores: dict[str, float], anything: "Any") -> None:
    pass


def _helper(x: int) -> int:
    return x
'''


def write(tmp_path: Path, source: str, name: str = "tools.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def tools_of(tmp_path: Path, source: str, functions: list[str] | None = None) -> dict[str, dict]:
    found = read_tools(write(tmp_path, source), functions=functions, key="tools.python")
    return {tool.name: tool.tool["function"] for tool in found}


def test_types_defaults_enums_and_docstring_args_become_the_schema(tmp_path: Path) -> None:
    tools = tools_of(tmp_path, WEATHER)
    assert list(tools) == ["weather", "pair"]  # public top-level functions, in file order
    weather = tools["weather"]
    assert weather["description"] == "The weather forecast for a city."  # first paragraph only
    parameters = weather["parameters"]
    assert parameters["required"] == ["city"]
    assert parameters["additionalProperties"] is False
    properties = parameters["properties"]
    assert properties["city"] == {"type": "string", "description": "The city's name, in English."}
    assert properties["unit"]["enum"] == ["c", "f"]  # the Enum inlined, by its values
    assert properties["unit"]["default"] == "c"  # Unit.CELSIUS read without running anything
    assert properties["days"] == {"type": "integer", "description": "How many days ahead.",
                                  "default": 1}
    assert properties["detail"]["enum"] == ["short", "long"]  # a Literal alias of the file
    assert properties["tags"]["anyOf"] == [{"type": "array", "items": {"type": "string"}},
                                           {"type": "null"}]
    assert {"type": "number"} in properties["ratio"]["anyOf"]
    assert properties["verbose"] == {"type": "boolean", "default": False}  # keyword-only
    assert "$defs" not in str(parameters) and "title" not in properties["city"]
    # A valid OpenAI tool, and a valid JSON schema that checks arguments as Python would.
    normalize_tools([{"type": "function", "function": weather}])
    validator = jsonschema.Draft202012Validator(parameters)
    assert validator.is_valid({"city": "Paris", "unit": "f", "days": 3})
    assert not validator.is_valid({"city": "Paris", "unit": "kelvin"})
    assert not validator.is_valid({"city": "Paris", "days": "3"})
    assert not validator.is_valid({"city": "Paris", "wind": True})


def test_containers_and_quoted_types(tmp_path: Path) -> None:
    pair = tools_of(tmp_path, WEATHER)["pair"]["parameters"]["properties"]
    assert pair["point"]["type"] == "array" and len(pair["point"]["prefixItems"]) == 2
    assert pair["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert pair["anything"] == {}  # Any: no constraint


def test_functions_picks_tools_and_names_a_missing_one(tmp_path: Path) -> None:
    assert list(tools_of(tmp_path, WEATHER, ["pair", "_helper"])) == ["pair", "_helper"]
    with pytest.raises(ConfigError) as caught:
        tools_of(tmp_path, WEATHER, ["weather", "wether2"])
    assert caught.value.key == "tools.functions[1]"
    assert "did you mean 'weather'" in str(caught.value)


@pytest.mark.parametrize(("source", "line", "words"), [
    ("def f(x):\n    return x\n", 1, "argument 'x' has no type hint"),
    ("\n\ndef f(x: int,\n      y) -> int:\n    return x\n", 4, "argument 'y' has no type hint"),
    ("def f(x: int:\n    pass\n", 1, "syntax error"),
    ("import numpy\n\ndef f(x: int) -> int:\n    return x\n", 1, "'numpy', which the sandbox"),
    ("from . import other\n", 1, "relative import"),
    ("def f(*values: int) -> int:\n    return 0\n", 1, "*args/**kwargs"),
    ("def f(x: int, /) -> int:\n    return x\n", 1, "positional-only"),
    ("def f(x: bytes) -> int:\n    return 0\n", 1, "bytes cannot come from JSON"),
    ("import decimal\n\ndef f(x: decimal.Decimal) -> int:\n    return 0\n", 3, "unknown type"),
    ("class Point:\n    x: int\n\ndef f(p: Point) -> int:\n    return 0\n", 1, "not an Enum"),
    ("def f(x: int) -> int:\n    return 1\n\ndef f(x: str) -> str:\n    return x\n", 4,
     "defined twice"),
    ("_private = 1\n", None, "no public top-level function"),
])
def test_what_cannot_be_a_tool_is_a_config_error_with_file_and_line(
        tmp_path: Path, source: str, line: int | None, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tools_of(tmp_path, source)
    error = caught.value
    assert words in str(error)
    assert error.key == "tools.python"
    assert str(tmp_path / "tools.py") in str(error)
    assert error.line == line


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the tools file"):
        read_tools(tmp_path / "absent.py", functions=None, key="tools.python")
