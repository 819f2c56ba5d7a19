"""A minimal OpenAI-compatible echo server for benchmarks and tests.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` after a fixed latency with
``"echo: <last user message>"``, in a single write, over keep-alive HTTP/1.1, with a large listen
backlog: so that when a client is measured against it, the client is the bottleneck, not the
server. Each request can be appended to a JSON-lines log (to check what a client sent, e.g. that a
resumed run did not resend answered requests).

    python -m stillroom.testing.echo_server --port 8123 --latency-ms 100 [--log requests.jsonl]
        [--reasoning none|field|inline]

Reasoning traces, for tests of reasoning models (``--reasoning``, or per request a body field
``"echo_reasoning"``, which an OpenAI-compatible client sends through ``extra_body``): the answer
follows a trace, ``echo-trace: the user wrote N words: <the user's text>``.

* ``field``: the shape vLLM documents for a server run with ``--reasoning-parser`` ("Reasoning
  Outputs" in vLLM's docs): the trace in the message's ``reasoning`` field and, under its former
  name, ``reasoning_content`` (both filled, as vLLM did while it renamed it); the answer in
  ``content``; ``usage.completion_tokens_details.reasoning_tokens`` counts the trace.
* ``inline``: what a server without a parser returns: ``<think>trace</think>answer`` in
  ``content`` (and in ``text`` for a raw ``/completions`` prompt).

Tokens are words here. When a request's ``max_tokens`` is smaller than the trace, the trace is cut
there and no answer follows (``finish_reason: "length"``; ``content: null`` with ``field``, an
unclosed ``<think>`` with ``inline``), as a reasoning model cut off while thinking.

``POST /v1/messages`` answers in Anthropic's Messages shape (text blocks, ``stop_reason``,
``usage.input_tokens``/``output_tokens``), with a ``thinking`` block before the text when the
request asks for ``thinking: {"type": "enabled", ...}`` (cut as above: ``stop_reason:
"max_tokens"`` and no text block), so the real ``anthropic`` SDK can be tested against it.

Scoring given token ids, for tests of a served teacher without a model: a ``/v1/completions``
request whose ``prompt`` is a list of token ids and which asks ``echo: true`` with ``logprobs: k``
gets the legacy echo shape (``tokens`` named ``<id>``, ``token_logprobs`` with null first,
``top_logprobs`` as {text: logprob}, then one generated token); one asking ``prompt_logprobs: k``
gets vLLM's shape (``choices[0].prompt_logprobs``: null, then per token {"<id>": {"logprob",
"rank", "decoded_token"}}). The numbers are made up but fixed: token ``t`` after ``p`` has
:func:`echo_logprob` ``(p, t)``, and the alternatives ``p + 1 + j`` have ``-0.1 (j + 1)``. A body
field ``echo_score_drop: n`` (through ``extra_body``) leaves out the last n positions, as a server
that tokenized differently would.

Tool calls, for tests of tool-calling stages without a model: a chat request with ``tools`` (and
a ``tool_choice`` other than ``"none"``) whose last message is a user or system turn is answered
with one OpenAI-shaped call (``content: null``, ``finish_reason: "tool_calls"``, id
``call_echo_0``) to the tool that ``tool_choice`` names, else the first tool. Its arguments are
a minimal instance of the tool's ``parameters``: the required properties only, each an ``enum``'s
first value or a ``const``, else a value of its type (``"echo"``, ``false``, ``[]``, ``null``, an
object built the same way); integer and number parameters take, in the order the schema lists
them, the numbers written in the user's text ("add 17 and 23" gives ``a: 17, b: 23``), and 0
once those run out. When the last message is a tool turn the answer is text that quotes it:
``echo: <tool name> returned <tool content>``. Hooks in the user's text:
``ECHO_BAD_ARGS`` makes the arguments text that is not JSON, ``ECHO_UNKNOWN_TOOL`` calls a tool
named ``echo_unknown_tool`` that was not offered, and ``ECHO_NO_CALL`` answers with the plain
echo text and no call. ``/v1/messages`` does the same in Anthropic's shape (a ``tool_use`` block,
``stop_reason: "tool_use"``; a user message of ``tool_result`` blocks is quoted back), and
honours its ``tool_choice`` ``{"type": "tool", "name": ...}`` and ``{"type": "none"}``
(``ECHO_BAD_ARGS`` gives ``input: {"unparsed": <the cut text>}`` there: that API's input is
always an object).

Structured answers, when asked (``--structured``, or per request a body field
``"echo_structured": true``, e.g. a backend's ``extra_body``): a chat request whose
``response_format`` is ``json_schema`` (or ``json_object`` with a ``schema``) is answered with
JSON that fits the schema (:func:`_fitting`: strings ``echo <n>: <the user's first words>``, an
enum's first value, ``minItems`` items), so stages that ask for JSON (query writing, judges) can
be tested without a model. Otherwise such a request is echoed like any other (tests send the
JSON to get back in the user's text).

Written by hand, on asyncio streams, because the usual ASGI stacks cost more CPU per request than
the clients we measure (llm-katan, FastAPI-based, is used for failure injection instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import time
from typing import Any

_RESPONSE_HEAD = (
    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
)


REASONING_MODES = ("none", "field", "inline")


def _user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if messages is None:
        return str(body.get("prompt", ""))
    return str(next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""))


def _trace(user: str, max_tokens: Any) -> tuple[str, bool]:
    """The echo's reasoning trace for ``user``, and whether it ended within ``max_tokens``."""
    # The trace repeats the user's text, so a test makes a trace longer than any max_tokens (the
    # Anthropic API's is above 1024 with thinking) by sending a long prompt.
    words = f"echo-trace: the user wrote {len(user.split())} words: {user}".split()
    if isinstance(max_tokens, int) and max_tokens < len(words):
        return " ".join(words[:max_tokens]), False
    return " ".join(words), True


ECHO_VOCABULARY = 50_000


def echo_logprob(previous: int, token: int) -> float:
    """The echo server's made-up log-prob of ``token`` after ``previous``: fixed, in [-6.07, -0.01]."""
    return -0.01 - ((previous * 31 + token * 7) % 97) / 16


def _is_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def _alternatives(previous: int, k: int) -> list[tuple[int, float]]:
    return [((previous + 1 + j) % ECHO_VOCABULARY, -0.1 * (j + 1)) for j in range(k)]


def _scored_answer(body: dict[str, Any], created: int) -> dict[str, Any]:
    """A /completions answer to a token-id prompt asking for its log-probs (see the module)."""
    ids: list[int] = body["prompt"]
    generated = (ids[-1] * 7 + 1) % ECHO_VOCABULARY
    positions = [*ids, generated][: len(ids) + 1 - int(body.get("echo_score_drop") or 0)]
    choice: dict[str, Any] = {"index": 0, "text": f"<{generated}>", "finish_reason": "length"}
    if body.get("prompt_logprobs") is not None:
        k = int(body["prompt_logprobs"])
        rows: list[Any] = [None]
        for previous, token in zip(positions, positions[1 : len(ids)], strict=False):
            row: dict[str, dict[str, Any]] = {str(alt): {"logprob": value, "rank": None, "decoded_token": f"<{alt}>"}
                   for alt, value in _alternatives(previous, k)}
            row[str(token)] = {"logprob": echo_logprob(previous, token), "rank": None,
                               "decoded_token": f"<{token}>"}
            ranked = sorted(row.values(), key=lambda info: -info["logprob"])
            for rank, info in enumerate(ranked, start=1):
                info["rank"] = rank
            rows.append(row)
        choice["prompt_logprobs"] = rows
    else:
        k = int(body.get("logprobs") or 0)
        tops: list[Any] = [None]
        for previous, token in zip(positions, positions[1:], strict=False):
            top = {f"<{alt}>": value for alt, value in _alternatives(previous, k)}
            top[f"<{token}>"] = echo_logprob(previous, token)
            tops.append(top)
        choice["logprobs"] = {
            "tokens": [f"<{t}>" for t in positions],
            "token_logprobs": [None] + [echo_logprob(p, t) for p, t in zip(positions, positions[1:],
                                                                           strict=False)],
            "top_logprobs": tops,
            "text_offset": [0] * len(positions),
        }
    return {
        "id": f"echo-{created}", "object": "text_completion", "created": created,
        "model": body.get("model", "echo"), "choices": [choice],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
    }


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
UNKNOWN_TOOL = "echo_unknown_tool"


def _leaf(schema: Any) -> tuple[bool, Any, dict[str, Any], str]:
    """What both instance makers read first: ``(True, value, ...)`` when the schema fixes the
    value (``const``, the first ``enum`` member; None for a schema that is not an object), else
    ``(False, None, schema, type)`` with the first branch of an ``anyOf``/``oneOf``/``allOf``
    taken and a type list read as its first non-null type."""
    while True:
        if not isinstance(schema, dict):
            return True, None, {}, "null"
        if "const" in schema:
            return True, schema["const"], schema, ""
        if schema.get("enum"):
            return True, schema["enum"][0], schema, ""
        branches = next((schema[key] for key in ("anyOf", "oneOf", "allOf") if schema.get(key)),
                        None)
        if branches is None:
            break
        schema = branches[0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return False, None, schema, kind


def _minimal(schema: Any, numbers: list[str]) -> Any:
    """A minimal instance of ``schema`` (see the module docstring); numeric values are taken
    from the front of ``numbers``."""
    fixed, value, schema, kind = _leaf(schema)
    if fixed:
        return value
    if kind in ("integer", "number"):
        if not numbers:
            return 0
        text = numbers.pop(0)
        value = float(text)
        return int(value) if kind == "integer" or value.is_integer() else value
    if kind == "string":
        return "echo"
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "null":
        return None
    properties = schema.get("properties") or {}
    return {name: _minimal(properties.get(name, {}), numbers)
            for name in schema.get("required") or []}


def _fitting(schema: Any, words: str, count: list[int]) -> Any:
    """A small instance of ``schema`` that fits it, for a ``response_format`` json_schema
    request: like :func:`_minimal`, but each string is ``echo <n>: <the user's words>`` (n
    counting the strings, so a list's items differ) cut to ``maxLength`` and padded to
    ``minLength``, an array has ``minItems`` items (at least one), numbers are ``minimum`` or 0,
    and an object also fills its optional properties (a judge's ``reason``)."""
    fixed, value, schema, kind = _leaf(schema)
    if fixed:
        return value
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        count[0] += 1
        text = f"echo {count[0]}: {words}"[: int(schema.get("maxLength", 10**9))]
        return text.ljust(int(schema.get("minLength", 0)), ".")
    if kind == "boolean":
        return False
    if kind == "array":
        items = schema.get("items") or {}
        return [_fitting(items, words, count)
                for _ in range(max(1, int(schema.get("minItems", 1))))][
            : int(schema.get("maxItems", 10**9))]
    if kind == "null":
        return None
    properties = schema.get("properties") or {}
    names = list(dict.fromkeys([*properties, *(schema.get("required") or [])]))
    return {name: _fitting(properties.get(name, {}), words, count) for name in names}


def _schema_of(body: dict[str, Any]) -> Any:
    """The JSON schema a chat request's ``response_format`` asks its answer to fit, or None."""
    answer_format = body.get("response_format")
    if not isinstance(answer_format, dict):
        return None
    if answer_format.get("type") == "json_schema":
        return (answer_format.get("json_schema") or {}).get("schema")
    if answer_format.get("type") == "json_object":
        return answer_format.get("schema")
    return None


def _echo_call(tools: list[tuple[str, Any]], chosen: str | None, user: str) -> tuple[str, str]:
    """(name, arguments text) of the echo's call: see the module docstring."""
    name = chosen if chosen is not None else tools[0][0]
    parameters = dict(tools).get(name, {})
    arguments = json.dumps(_minimal(parameters, _NUMBER.findall(user)))
    if "ECHO_UNKNOWN_TOOL" in user:
        name = UNKNOWN_TOOL
    if "ECHO_BAD_ARGS" in user:
        arguments = arguments[:-1] + ',"unfinished": '  # cut JSON: a format check must catch it
    return name, arguments


def _openai_tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for tool in body.get("tools") or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        out.append((str(function.get("name", "")), function.get("parameters") or {}))
    return out


def _tool_answer(body: dict[str, Any], created: int) -> dict[str, Any] | None:
    """An OpenAI answer to a request with tools, or None for the usual echo."""
    tools = _openai_tools(body)
    choice = body.get("tool_choice")
    messages = body.get("messages") or []
    if not tools or choice == "none" or not messages:
        return None
    last = messages[-1]
    user = _user_text(body)
    message: dict[str, Any] = {"role": "assistant"}
    if last.get("role") == "tool":
        called = next((call.get("function", {}).get("name", "") for m in reversed(messages)
                       for call in m.get("tool_calls") or []
                       if call.get("id") == last.get("tool_call_id")), last.get("name", "tool"))
        message["content"] = f"echo: {called} returned {last.get('content', '')}"
        finish, used = "stop", len(message["content"].split())
    elif "ECHO_NO_CALL" in user or last.get("role") not in ("user", "system"):
        return None
    else:
        chosen = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        name, arguments = _echo_call(tools, chosen, user)
        message["content"] = None
        message["tool_calls"] = [{"id": "call_echo_0", "type": "function",
                                  "function": {"name": name, "arguments": arguments}}]
        finish, used = "tool_calls", len(arguments.split())
    return {
        "id": f"echo-{created}", "object": "chat.completion", "created": created,
        "model": body.get("model", "echo"),
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": len(user.split()), "completion_tokens": used,
                  "total_tokens": len(user.split()) + used},
    }


def _answer(body: dict[str, Any], created: int, reasoning: str = "none",
            structured: bool = False) -> dict[str, Any]:
    messages = body.get("messages")
    if messages is not None and body.get("tools"):
        answered = _tool_answer(body, created)
        if answered is not None:
            return answered
    if messages is None and _is_token_ids(body.get("prompt")) and (
        (body.get("echo") and body.get("logprobs") is not None)
        or body.get("prompt_logprobs") is not None
    ):
        return _scored_answer(body, created)
    user = _user_text(body)
    text = f"echo: {user}"
    wanted = body.get("echo_structured", structured)
    schema = _schema_of(body) if messages is not None and wanted else None
    if schema is not None:
        # Asked for JSON: an answer that fits the schema (the echo's words in its strings), so
        # query writing and judges can run against the server.
        text = json.dumps(_fitting(schema, " ".join(user.split()[:12]), [0]))
    words = text.split()
    mode = body.get("echo_reasoning", reasoning)
    if mode == "none":
        content: str | None = text
        trace, ended = None, True
    else:
        trace, ended = _trace(user, body.get("max_tokens"))
        content = text if ended else None
        if mode == "inline":
            content = f"<think>{trace}</think>{text}" if ended else f"<think>{trace}"
    used = (len(trace.split()) if trace else 0) + (len(words) if ended else 0)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if ended else "length"}
    if messages is not None:
        choice["message"] = {"role": "assistant", "content": content}
        if mode == "field":
            choice["message"]["reasoning"] = choice["message"]["reasoning_content"] = trace
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": word,
                        "logprob": -0.5,
                        "top_logprobs": [
                            {"token": word if i == 0 else f"{word}~{i}", "logprob": -0.5 - i}
                            for i in range(k)
                        ],
                    }
                    for word in words
                ]
            }
    else:
        # A raw prompt has no message to carry a reasoning field: a trace can only be inline.
        choice["text"] = content if mode == "inline" else text
    usage: dict[str, Any] = {
        "prompt_tokens": len(user.split()),
        "completion_tokens": used,
        "total_tokens": len(user.split()) + used,
    }
    if mode == "field" and messages is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": len(trace.split()) if trace else 0}
    return {
        "id": f"echo-{created}",
        "object": "chat.completion" if messages is not None else "text_completion",
        "created": created,
        "model": body.get("model", "echo"),
        "choices": [choice],
        "usage": usage,
    }


def _anthropic_tool_answer(body: dict[str, Any], created: int) -> dict[str, Any] | None:
    """An Anthropic answer to a request with tools, or None for the usual echo."""
    tools = [(str(t.get("name", "")), t.get("input_schema") or {}) for t in body["tools"]]
    choice = body.get("tool_choice") or {}
    messages = body.get("messages") or []
    if not tools or choice.get("type") == "none" or not messages:
        return None
    last = messages[-1]
    content = last.get("content")
    results = [block for block in content if isinstance(block, dict)
               and block.get("type") == "tool_result"] if isinstance(content, list) else []
    if results:
        quoted = " ".join(f"{r.get('tool_use_id', '')} returned {r.get('content', '')}"
                          for r in results)
        block: dict[str, Any] = {"type": "text", "text": f"echo: {quoted}"}
        stop = "end_turn"
    else:
        user = content if isinstance(content, str) else " ".join(
            str(b.get("text", "")) for b in content or [] if isinstance(b, dict))
        if "ECHO_NO_CALL" in user or last.get("role") != "user":
            return None
        chosen = choice.get("name") if choice.get("type") == "tool" else None
        name, arguments = _echo_call(tools, chosen, user)
        try:
            value: Any = json.loads(arguments)
        except ValueError:
            value = {"unparsed": arguments}  # the Messages API's input is always an object
        block = {"type": "tool_use", "id": "toolu_echo_0", "name": name, "input": value}
        stop = "tool_use"
    used = len(json.dumps(block).split())
    return {
        "id": f"msg_echo{created}", "type": "message", "role": "assistant",
        "model": body.get("model", "echo"), "content": [block], "stop_reason": stop,
        "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": used},
    }


def _anthropic_answer(body: dict[str, Any], created: int) -> dict[str, Any]:
    """An Anthropic Messages API response: thinking block(s) when asked for, then the text."""
    if body.get("tools"):
        answered = _anthropic_tool_answer(body, created)
        if answered is not None:
            return answered
    user = _user_text(body)
    text = f"echo: {user}"
    thinking = body.get("thinking") or {}
    blocks: list[dict[str, Any]] = []
    used, ended = 0, True
    if thinking.get("type") == "enabled":
        trace, ended = _trace(user, body.get("max_tokens"))
        # The signature is opaque to clients; a fixed value stands in for Anthropic's.
        blocks.append({"type": "thinking", "thinking": trace, "signature": "echo-signature"})
        used += len(trace.split())
    if ended:
        blocks.append({"type": "text", "text": text})
        used += len(text.split())
    return {
        "id": f"msg_echo{created}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "echo"),
        "content": blocks,
        "stop_reason": "end_turn" if ended else "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": len(user.split()), "output_tokens": used},
    }


class EchoServer:
    def __init__(
        self, latency_ms: float = 0.0, log_path: str | None = None, reasoning: str = "none",
        structured: bool = False,
    ):
        self.latency = latency_ms / 1000.0
        self.reasoning = reasoning
        self.structured = structured
        self.log_path = log_path
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                raw = await reader.readexactly(length) if length else b"{}"
                self.requests += 1
                body = json.loads(raw)
                if self._log is not None:
                    self._log.write(json.dumps({"t": time.time(), "body": body}) + "\n")
                if self.latency:
                    await asyncio.sleep(self.latency)
                # The request line's path: "POST /v1/messages HTTP/1.1".
                path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                if path.split(b"?", 1)[0].endswith(b"/messages"):
                    answer = _anthropic_answer(body, int(time.time()))
                else:
                    answer = _answer(body, int(time.time()), self.reasoning, self.structured)
                payload = json.dumps(answer).encode()
                head_out = _RESPONSE_HEAD.format(status=200, reason="OK", length=len(payload))
                writer.write(head_out.encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def serve(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
        server = await asyncio.start_server(self.handle, sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--log", default=None, help="append each request body to this JSONL file")
    parser.add_argument(
        "--reasoning", choices=REASONING_MODES, default="none",
        help="answer after a reasoning trace: in the message's reasoning fields (vLLM's shape) "
        "or inline in <think> tags (a request's echo_reasoning field overrides it)",
    )
    parser.add_argument(
        "--structured", action="store_true",
        help="answer a json_schema response_format with JSON that fits the schema (a request's "
        "echo_structured field overrides it)",
    )
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(EchoServer(args.latency_ms, args.log, args.reasoning, args.structured).serve(
        args.host, args.port))


if __name__ == "__main__":
    main()
