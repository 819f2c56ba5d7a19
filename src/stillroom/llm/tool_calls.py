"""Tool definitions and tool calls: the one shape rows, requests and answers share.

Rows are TRL-ready (TRL's ``SFTTrainer`` reads them as they are):

* ``tools`` column: the JSON **text** of a list of OpenAI function tools,
  ``[{"type": "function", "function": {"name", "description", "parameters"}}]``. Text rather
  than a nested value because Arrow (Parquet, ``datasets``) merges the structs of every row into
  one type: two tools with different ``parameters`` would each come back with the other's
  properties added as nulls. TRL's SFTTrainer ``json.loads`` a text ``tools`` itself.
* an assistant turn that calls tools:
  ``{"role": "assistant", "content": "<text, '' when none>", "tool_calls": [{"id": "call_0",
  "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}``.
  ``arguments`` is JSON text for the same reason (and it is what OpenAI's API sends); chat
  templates of the Qwen/Hermes family render a text ``arguments`` as it is.
* a tool's answer: ``{"role": "tool", "tool_call_id": "call_0", "name": "get_weather",
  "content": "<result as text>"}``.

Requests carry the same message shapes; each backend converts them to its API (Anthropic's
``tool_use``/``tool_result`` blocks) and its answers back (:attr:`Completion.tool_calls`).

A model that has no tool API of its own (the embedded model, transformers, vLLM in process) is
asked the way the Hermes/Qwen templates ask: the tools are described in the system turn and
each call is written as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
(:func:`calls_as_text`); ``stillroom train sft`` writes calls that way into the assistant turn
for a chat template that does not render ``tool_calls``, so a student learns the format it is
asked in.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE_START = "<tool_response>"
TOOL_RESPONSE_END = "</tool_response>"


class ToolSchemaError(ValueError):
    """A tool definition that is not a usable function tool; the message names which one."""


def normalize_tools(tools: Any, *, where: str = "tools") -> list[dict[str, Any]]:
    """``tools`` (a list, or its JSON text) as OpenAI function tools, each
    ``{"type": "function", "function": {"name", "description", "parameters"}}``. A bare
    ``{"name", "description", "parameters"}`` is wrapped; a missing ``parameters`` is the empty
    object schema. ToolSchemaError naming ``where[i]`` for anything else, or two tools of one
    name."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ToolSchemaError(f"{where}: not JSON ({error.msg} at {error.pos})") from None
    if not isinstance(tools, list):
        raise ToolSchemaError(f"{where}: expected a list of tools, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        here = f"{where}[{index}]"
        if not isinstance(tool, dict):
            raise ToolSchemaError(f"{here}: expected an object, got {type(tool).__name__}")
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise ToolSchemaError(f"{here}: type {tool.get('type')!r}; only 'function' tools")
            function = tool["function"]
        else:
            function = tool
        if not isinstance(function, dict):
            raise ToolSchemaError(f"{here}.function: expected an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ToolSchemaError(f"{here}: a tool needs a non-empty `name`")
        if name in seen:
            raise ToolSchemaError(f"{here}: a second tool named {name!r}")
        seen.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ToolSchemaError(f"{here} ({name}): `parameters` must be an object schema")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise ToolSchemaError(f"{here} ({name}): `description` must be text")
        out.append({"type": "function", "function": {
            "name": name, "description": description, "parameters": parameters}})
    return out


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The ``tools`` column's value: the normalized tools as compact JSON text."""
    return json.dumps(normalize_tools(tools), ensure_ascii=False, separators=(",", ":"))


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [tool["function"]["name"] for tool in normalize_tools(tools)]


def tool_parameters(tools: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The ``parameters`` schema of the tool ``name``, or None when there is no such tool."""
    for tool in normalize_tools(tools):
        if tool["function"]["name"] == name:
            return tool["function"]["parameters"]  # type: ignore[no-any-return]
    return None


def make_call(name: str, arguments: Any, call_id: str) -> dict[str, Any]:
    """One call in the row shape; ``arguments`` a dict (written as JSON text) or JSON text."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def call_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as a dict. ValueError when its ``arguments`` is not a JSON object
    (a dict is taken as it is: some servers and datasets send one)."""
    raw = (call.get("function") or {}).get("arguments")
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise ValueError(f"arguments is {type(raw).__name__}, not JSON text")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"arguments are not JSON ({error.msg} at {error.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments are JSON {type(value).__name__}, not an object")
    return value


def assistant_turn(content: str | None, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
    """An assistant message in the row shape: ``tool_calls`` only when there are calls."""
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def tool_turn(call: dict[str, Any], content: str) -> dict[str, Any]:
    """The tool's answer to ``call`` in the row shape."""
    return {"role": "tool", "tool_call_id": call.get("id", ""),
            "name": (call.get("function") or {}).get("name", ""), "content": content}


def calls_as_text(tool_calls: list[dict[str, Any]]) -> str:
    """Calls written as text, Hermes/Qwen style: one ``<tool_call>`` block per call, its
    arguments as a JSON object (unparsable arguments written as they are, as a model would have
    written them)."""
    blocks = []
    for call in tool_calls:
        function = call.get("function") or {}
        try:
            arguments: Any = call_arguments(call)
            body = json.dumps({"name": function.get("name"), "arguments": arguments},
                              ensure_ascii=False)
        except ValueError:
            body = ('{"name": ' + json.dumps(function.get("name"), ensure_ascii=False)
                    + ', "arguments": ' + str(function.get("arguments")) + "}")
        blocks.append(f"{TOOL_CALL_START}\n{body}\n{TOOL_CALL_END}")
    return "\n".join(blocks)


def tool_result_as_text(message: dict[str, Any]) -> str:
    """A tool turn as text, for a model without a tool API (it sees it as a user turn)."""
    return f"{TOOL_RESPONSE_START}\n{message.get('content') or ''}\n{TOOL_RESPONSE_END}"


def tools_system_text(tools: list[dict[str, Any]]) -> str:
    """What a model without a tool API is told about the tools (in its system turn): their
    definitions as JSON, one per line, and how to call them (:func:`calls_as_text`'s format)."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in normalize_tools(tools))
    return (
        "You may call these functions to help with the user's request. Their definitions, one "
        "per line:\n<tools>\n" + listed + "\n</tools>\n"
        "To call a function, write a JSON object with its name and arguments between "
        f"{TOOL_CALL_START} and {TOOL_CALL_END} tags, one block per call:\n"
        f'{TOOL_CALL_START}\n{{"name": "<function name>", "arguments": {{...}}}}\n{TOOL_CALL_END}\n'
        f"The results come back between {TOOL_RESPONSE_START} and {TOOL_RESPONSE_END} tags. "
        "When you have what you need, answer the user without tags."
    )


def as_plain_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A tool conversation as plain system/user/assistant turns, for a model or chat template
    that knows no tools: the tools described in the system turn (added, or put after an
    existing system turn's text), an assistant turn's calls written after its text
    (:func:`calls_as_text`), and each tool turn as a user turn (:func:`tool_result_as_text`;
    consecutive tool turns are joined into one, so roles still alternate)."""
    out: list[dict[str, Any]] = []
    if tools:
        described = tools_system_text(tools)
        if messages and messages[0].get("role") == "system":
            first = str(messages[0].get("content") or "")
            out.append({"role": "system", "content": f"{first}\n\n{described}" if first else described})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": described})
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            text = str(message.get("content") or "")
            calls = calls_as_text(message["tool_calls"])
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif role == "tool":
            text = tool_result_as_text(message)
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool_results": True})
        else:
            out.append({key: value for key, value in message.items()
                        if key in ("role", "content")})
    for message in out:
        message.pop("_tool_results", None)
    return out


__all__ = [
    "TOOL_RESPONSE_END",
    "TOOL_RESPONSE_START",
    "as_plain_messages",
    "tool_result_as_text",
    "tools_system_text",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "ToolSchemaError",
    "assistant_turn",
    "call_arguments",
    "calls_as_text",
    "make_call",
    "normalize_tools",
    "tool_names",
    "tool_parameters",
    "tool_turn",
    "tools_text",
]
