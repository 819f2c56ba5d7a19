"""Tool calls for models without a tool API of their own (llamacpp, transformers, vLLM in process).

:class:`stillroom.llm.client.LLMClient` applies this to every request that carries ``tools``
when its backend's ``supports_tools`` is False, so each such backend gets the same behaviour
without knowing about tools:

* the request's messages become :func:`stillroom.llm.tool_calls.as_plain_messages` (the tools
  described in the system turn, earlier calls as ``<tool_call>`` blocks, tool results as
  ``<tool_response>`` user turns): the one rendering SFT also trains students on;
* ``tool_choice`` decides what is asked (:func:`emulated_request`):
  ``"auto"`` (the default) asks unconstrained and parses whatever ``<tool_call>`` blocks come
  back; ``"none"`` does not offer the tools (the conversation is still rendered as plain turns)
  and parses nothing; ``"required"`` constrains the answer with ``json_schema`` to one call
  object ``{"name": ..., "arguments": {...}}``, one ``anyOf`` branch per tool with that tool's
  ``parameters`` (llama.cpp's grammar and vLLM's structured outputs decode it exactly; a
  backend that cannot constrain is only told the format); a named function constrains the
  answer to that tool's ``parameters`` and is read as a call to it;
* the answer is read back into :attr:`Completion.tool_calls` (:func:`read_answer`) before the
  client caches it, so a replay from the cache gives the same calls.

A ``<tool_call>`` block whose JSON does not parse is still a call (its ``arguments`` the raw text,
its name the one found, else ""): dropping it would hide that the model tried, and the format
check of a tool-calling stage is where such a call is rejected, with a reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from stillroom.llm.tool_calls import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    ToolSchemaError,
    as_plain_messages,
    make_call,
    normalize_tools,
)
from stillroom.llm.types import BackendError, Completion, GenerationParams, Request

# A block runs to its end tag, or to the end of the text when a model stopped before writing it
# (cut at max_tokens, or a stop string): such a call is still reported, for the format check.
_BLOCK = re.compile(
    re.escape(TOOL_CALL_START) + r"(.*?)(?:" + re.escape(TOOL_CALL_END) + r"|\Z)", re.DOTALL
)
# The name of a call whose JSON does not parse, when it can still be read.
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def _refused(message: str) -> BackendError:
    # Asking again would be refused again: the request, not the backend, is at fault.
    return BackendError(message, kind="BadRequestError", status=400, retryable=False)


def tool_choice_name(tool_choice: Any) -> str | None:
    """The function a named ``tool_choice`` forces, or None for "auto"/"none"/"required"/None.
    BadRequestError for anything else."""
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        return None
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type", "function") == "function" and isinstance(name, str) and name:
            return name
    raise _refused(
        f"tool_choice {tool_choice!r} is not one of 'auto', 'none', 'required' or "
        "{'type': 'function', 'function': {'name': ...}}"
    )


def _tools_of(params: GenerationParams) -> list[dict[str, Any]]:
    try:
        return normalize_tools(params.tools or [])
    except ToolSchemaError as error:
        raise _refused(str(error)) from None


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name", "arguments"}`` with one
    ``anyOf`` branch per tool, so the arguments are checked against the named tool's own
    ``parameters`` (a flat ``{"name": enum, "arguments": object}`` would let any arguments go
    with any name)."""
    branches = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"]["parameters"],
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in normalize_tools(tools)
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def emulated_request(request: Request) -> Request:
    """What a backend without a tool API is sent for ``request`` (see the module docstring).
    BadRequestError for a raw prompt (it has no turns to describe the tools in), an unknown
    named tool, or tools that are not function tools."""
    params = request.params
    tools = _tools_of(params)
    if request.messages is None:
        raise _refused("tools need chat `messages`; a raw `prompt` has no turns to offer them in")
    choice = params.tool_choice
    named = tool_choice_name(choice)
    schema = params.json_schema
    if named is not None:
        chosen = next((tool for tool in tools if tool["function"]["name"] == named), None)
        if chosen is None:
            raise _refused(f"tool_choice names {named!r}, which is not among the tools "
                           f"({', '.join(t['function']['name'] for t in tools) or 'none'})")
        schema = chosen["function"]["parameters"]
    elif choice == "required":
        if not tools:
            raise _refused("tool_choice 'required' with no tools")
        schema = call_schema(tools)
    offered = None if choice == "none" else tools
    return dataclasses.replace(
        request,
        messages=as_plain_messages(request.messages, offered),
        params=dataclasses.replace(params, tools=None, tool_choice=None, json_schema=schema),
    )


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]] | None]:
    """``text``'s ``<tool_call>`` blocks as calls in the row shape (ids ``call_<i>``,
    arguments as JSON text), and the text outside them (trimmed pieces, one per line). Calls are None when there is
    no block. A block that is not ``{"name": ..., "arguments": {...}}`` JSON is still a call:
    its arguments the raw text after ``"arguments":`` (or the whole block), its name the one
    that can be read (or "")."""
    calls: list[dict[str, Any]] = []
    for match in _BLOCK.finditer(text):
        body = match.group(1).strip()
        calls.append(_call_from_block(body, f"call_{len(calls)}"))
    if not calls:
        return text, None
    # The pieces of text between blocks, each trimmed, one per line: the blocks' own line
    # breaks are format, not content.
    pieces = (piece.strip() for piece in _BLOCK.split(text)[::2])
    return "\n".join(piece for piece in pieces if piece), calls


def _loads_block(body: str) -> Any:
    """The block's JSON; a block missing only its outer ``}`` (a model that stopped one brace
    short, or a stop string that ate it) is read with it put back."""
    for text in (body, body + "}"):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def _raw_arguments(body: str) -> str | dict[str, Any]:
    """The arguments of a block that is not JSON: the JSON value right after ``"arguments":``
    when one can be read there (the rest of the block may be broken), else the raw text after
    it less the block's own closing brace, else the whole block."""
    found = _ARGUMENTS.search(body)
    if found is None:
        return body
    try:
        value, _ = json.JSONDecoder().raw_decode(body, found.end())
    except ValueError:
        rest = body[found.end():].rstrip()
        # The block's own closing brace, when the braces say it is there, is not the
        # arguments' (a block one brace short has none to take off).
        if (rest.endswith("}") and body.lstrip().startswith("{")
                and body.count("}") >= body.count("{")):
            rest = rest[:-1].rstrip()
        return rest
    return value if isinstance(value, dict) else json.dumps(value)


def _call_from_block(body: str, call_id: str) -> dict[str, Any]:
    value = _loads_block(body)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # arguments already as JSON text (OpenAI's wire form)
            return make_call(value["name"], arguments, call_id)
        return make_call(value["name"], arguments if arguments is not None else {}, call_id)
    name = _NAME.search(body)
    return make_call(json.loads(f'"{name.group(1)}"') if name else "", _raw_arguments(body),
                     call_id)


def read_answer(completion: Completion, request: Request) -> Completion:
    """``completion`` (the answer to :func:`emulated_request` of ``request``) with its calls
    in ``tool_calls`` and ``text`` what the model wrote beside them.

    A named ``tool_choice``: the text is that tool's arguments (constrained where the backend
    can), one call, its arguments the text as written (unless the text holds ``<tool_call>``
    blocks, which an unconstrained model may write as told). ``"required"``: the text is one call
    object; one that does not read as such falls back to ``<tool_call>`` blocks (a backend
    that cannot constrain decoding may write those, as its system turn says), and with none
    the answer stays text without calls (the caller sees no call and says so). ``"none"``:
    nothing is parsed."""
    choice = request.params.tool_choice
    if choice == "none":
        return completion
    text = completion.text
    named = tool_choice_name(choice)
    if named is not None and TOOL_CALL_START not in text:
        completion.tool_calls = [make_call(named, text.strip(), "call_0")]
        completion.text = ""
        return completion
    if choice == "required":
        call = _call_object(text)
        if call is not None:
            completion.tool_calls = [make_call(call[0], call[1], "call_0")]
            completion.text = ""
            return completion
    completion.text, completion.tool_calls = parse_tool_calls(text)
    return completion


def _call_object(text: str) -> tuple[str, Any] | None:
    """(name, arguments) of a ``{"name", "arguments"}`` object that is the whole text."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    return value["name"], arguments


__all__ = [
    "call_schema",
    "emulated_request",
    "parse_tool_calls",
    "read_answer",
    "tool_choice_name",
]
