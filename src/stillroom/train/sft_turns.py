"""Multi-turn SFT: every assistant turn of a ``messages`` row trained, tool calls included.

A conversation is rendered once with the chat template and trained as one sequence whose loss
covers each assistant turn (its text, its tool calls and its end-of-turn token) and nothing else:
system, user and tool turns, and the assistant header before each answer, are context (-100).

Where each assistant turn starts and ends is found by rendering prefixes of the conversation,
not by searching the text: turn ``i`` starts where ``messages[:i]`` rendered with the generation
prompt ends (what the student is given at inference) and ends where ``messages[:i + 1]``
rendered ends, less trailing white space (so ``<|im_end|>`` is trained, the newline after it
is context). The sequence ends with the final turn's end-of-turn text, followed by the EOS
token when that text does not end with it (TRL ends every completion so: the student learns to
stop). That needs each turn's rendering to start with the prompt rendered for it (a
row where it does not is refused, naming the row and the turn) and to be the start of the whole
conversation's rendering. A template that renders earlier turns differently once later turns
follow (Qwen3's drops the empty reasoning block of earlier turns after the last user turn)
breaks the second: such a turn is trained in a sequence of its own, the conversation through
that turn, where its context is exactly the prompt the student gets for it at inference; the
turns that do keep their rendering are trained together in the whole conversation.

Tools. A row's ``tools`` (JSON text or a list, :func:`stillroom.llm.tool_calls.normalize_tools`)
goes to ``apply_chat_template(tools=...)`` when a probe rendering shows that the template writes
tool definitions, calls (their name and arguments) and tool results; call arguments are passed as
the row's JSON text when the template writes that as a JSON object (Qwen3), as a dict when it
would quote the text (Qwen2.5's ``tojson``). A template that does not (SmolLM2's ChatML) gets the
conversation as :func:`~stillroom.llm.tool_calls.as_plain_messages`: the tools described in the
system turn, calls as ``<tool_call>`` blocks in the assistant's text, results as
``<tool_response>`` user turns; the exact text a model without a tool API is asked in by the
backends, so the student learns the format it is later asked in. ``tool_format: plain`` uses
that format for every template: stillroom's in-process backends (embedded, transformers, vLLM in
process) ask every model that way, whatever its template, while a server with a tool parser
uses the template's own format.

Traces (the ``reasoning`` options of :mod:`stillroom.train.sft`) apply to the final assistant
turn, whose answer the row's trace column belongs to. Earlier assistant turns are trained as
written; ``reasoning: drop`` cuts an inline ``<think>`` trace off them too.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from stillroom.data.rows import Row, content_text, is_conversation, row_answer
from stillroom.errors import ConfigError, InputError
from stillroom.llm.tool_calls import ToolSchemaError, as_plain_messages, normalize_tools

TrainTurns = Literal["all", "last"]
ToolFormat = Literal["auto", "native", "plain"]


@dataclass(frozen=True, slots=True)
class ToolRendering:
    """How the chat template takes a tool conversation: ``native`` (``tools=`` and
    ``tool_calls``, arguments as JSON text or as dicts) or plain turns."""

    native: bool = False
    arguments_as_text: bool = True


@dataclass(slots=True)
class TurnsExample:
    """One conversation as training text: ``trained`` are the character spans in the loss (the
    last one ends the text), ``trace`` the final turn's trace block inside the last span (its
    tags included), if it has one."""

    text: str
    trained: list[tuple[int, int]] = field(default_factory=list)
    trace: tuple[int, int] | None = None
    has_tools: bool = False


# -- the template's tool support -----------------------------------------------------------------

_PROBE_NAME, _PROBE_DESCRIPTION = "probe_tool_name_q7", "probe_tool_description_q7"
_PROBE_RESULT, _PROBE_QUESTION = "probe_tool_result_q7", "probe_question_q7"


def _probe(tokenizer: Any, arguments: Any) -> str | None:
    tools = [{"type": "function", "function": {
        "name": _PROBE_NAME, "description": _PROBE_DESCRIPTION,
        "parameters": {"type": "object", "properties": {"probe_key": {"type": "string"}}}}}]
    messages = [
        {"role": "user", "content": _PROBE_QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": _PROBE_NAME, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": _PROBE_NAME, "content": _PROBE_RESULT},
    ]
    try:
        text: str = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # a template that refuses tool turns: it has no tool support
        return None
    after = text[text.find(_PROBE_QUESTION):] if _PROBE_QUESTION in text else ""
    if _PROBE_DESCRIPTION not in text or _PROBE_NAME not in after or _PROBE_RESULT not in after:
        return None
    return after


def _arguments_as_object(rendered: str | None) -> bool:
    """Whether the probe's arguments came out as a JSON object (not quoted text, not lost)."""
    return rendered is not None and '"probe_key": "probe_value"' in rendered.replace(
        '"probe_key":"', '"probe_key": "')


def tool_rendering(tokenizer: Any, wanted: ToolFormat = "auto") -> ToolRendering:
    """How tools are rendered: ``plain``, or natively when ``tokenizer``'s chat template can
    (``auto``: found by the probe, see the module; ``native``: a ConfigError when it cannot)."""
    if wanted == "plain" or not getattr(tokenizer, "chat_template", None):
        found = ToolRendering(native=False)
    elif _arguments_as_object(_probe(tokenizer, '{"probe_key": "probe_value"}')):
        found = ToolRendering(native=True, arguments_as_text=True)
    elif _arguments_as_object(_probe(tokenizer, {"probe_key": "probe_value"})):
        found = ToolRendering(native=True, arguments_as_text=False)
    else:
        found = ToolRendering(native=False)
    if wanted == "native" and not found.native:
        raise ConfigError("the student's chat template does not render tools (their definitions, "
                          "a call's name and arguments, and a tool's result were tried): use "
                          "tool_format: plain or auto", key="tool_format")
    return found


# -- a row as the conversation to render ---------------------------------------------------------


def _without_nulls(value: Any) -> Any:
    """A message without the null keys Arrow adds when it reads back rows of several shapes
    (``tool_calls: None`` on a plain turn), nested ones included: a template testing
    ``message.tool_calls is defined`` must see the turn as written. (transformers 5 drops a
    message's own null keys before rendering; older versions and nested values it keeps.)"""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def row_tools(row: Row, index: int) -> list[dict[str, Any]] | None:
    """The row's ``tools`` as OpenAI function tools, or None when it has none."""
    value = row.get("tools")
    if value is None or value == "" or value == []:
        return None
    try:
        return normalize_tools(value, where=f"row {index}: tools") or None
    except ToolSchemaError as error:
        raise InputError(str(error)) from None


def row_conversation(row: Row, index: int) -> list[dict[str, Any]]:
    """The row's ``messages`` ending with its answer (an older stillroom row keeps the answer
    in a text ``completion`` beside them), without null keys."""
    messages = row.get("messages")
    if not is_conversation(messages):
        raise InputError(f"row {index}: `messages` must be a non-empty list of "
                         "{role, content} messages")
    out = [_without_nulls(message) for message in messages]
    if out[-1].get("role") != "assistant":
        answer = row_answer(row)
        if answer is None:
            raise InputError(f"row {index}: `messages` must end with an assistant turn")
        out.append({"role": "assistant", "content": answer})
    if len(out) < 2:
        raise InputError(f"row {index}: `messages` holds no turn before the answer")
    for message in out:
        if message.get("content") is None:  # a calls-only turn read back without its ""
            message["content"] = ""
    return out


def _native_calls(messages: list[dict[str, Any]], as_text: bool) -> list[dict[str, Any]]:
    """The calls' arguments as the template wants them (see :class:`ToolRendering`)."""
    from stillroom.llm.tool_calls import call_arguments

    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                function = dict(call.get("function") or {})
                arguments = function.get("arguments")
                if as_text and isinstance(arguments, dict):
                    function["arguments"] = json.dumps(arguments, ensure_ascii=False)
                elif not as_text:
                    # Unparsable arguments stay the text the model wrote: trained as they are.
                    with contextlib.suppress(ValueError):
                        function["arguments"] = call_arguments(call)
                fixed.append({**call, "function": function})
            message = {**message, "tool_calls": fixed}
        out.append(message)
    return out


def uses_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
           *, generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` (the turns' text joined by newlines without
    a template, the generation prompt then being the newline)."""
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
        return text
    joined = "\n".join(str(m.get("content") or "") for m in messages)
    return joined + "\n" if generation_prompt and messages else joined


# -- spans ---------------------------------------------------------------------------------------


def turn_spans(
    index: int, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
    tokenizer: Any, train_turns: TrainTurns,
) -> tuple[str, list[tuple[int, int]], list[tuple[str, tuple[int, int]]]]:
    """The whole conversation's text and the character span in it of each trained assistant
    turn (from its first character to its end-of-turn text), found by prefix renders; and the
    turns that the template renders differently once later turns follow, each as its own text
    (the conversation through that turn) with its span."""
    full = render(tokenizer, messages, tools, generation_prompt=False)
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_turns == "last":
        assistant = assistant[-1:]
    spans: list[tuple[int, int]] = []
    separate: list[tuple[str, tuple[int, int]]] = []
    for number, i in enumerate(assistant, start=1):
        if i == 0:
            raise InputError(f"row {index}: the conversation starts with an assistant turn; "
                             "nothing asks it")
        before = render(tokenizer, messages[:i], tools, generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], tools, generation_prompt=False)
        if not through.startswith(before):
            which = "its final assistant turn" if i == len(messages) - 1 else (
                f"assistant turn {number} (message {i})")
            raise InputError(f"row {index}: the chat template renders {which} with a different "
                             "start than the prompt it writes for it (add_generation_prompt), so "
                             "its training mask would be wrong; use a template whose generation "
                             "prompt is the start of the assistant turn it renders")
        span = (len(before), len(before) + len(through[len(before):].rstrip()))
        if full.startswith(through):
            spans.append(span)
        else:
            # Rendered differently once later turns follow (Qwen3's drops the reasoning of
            # earlier turns): trained in a sequence of its own, where its context is the
            # prompt the student gets for it at inference.
            separate.append((through[: span[1]], span))
    return full, spans, separate


def conversation_example(
    index: int, row: Row, tokenizer: Any, rendering: ToolRendering, traces: Any,
    train_turns: TrainTurns = "all",
) -> list[TurnsExample]:
    """A ``messages`` row as one sequence with every (or the last) assistant turn trained, then
    a sequence for each turn the template renders differently inside the conversation;
    ``traces`` is the row's :class:`stillroom.train.sft.TraceFormat` (None: answers only)."""
    from stillroom.train.sft import answer_and_trace, inline_trace

    messages = row_conversation(row, index)
    tools = row_tools(row, index)
    final = messages[-1]
    trace = None
    if traces is not None:
        trace, answer = answer_and_trace(row, content_text(final.get("content")) or "", traces,
                                         index)
        if trace is not None and not answer.strip() and not final.get("tool_calls"):
            raise InputError(f"row {index}: a trace with an empty answer (a trace that never "
                             "ended?): nothing to learn as the answer; leave such rows out")
        final["content"] = answer
        if traces.mode == "drop":  # earlier turns lose an inline trace as the last one does
            for message in messages[:-1]:
                if message.get("role") == "assistant":
                    message["content"] = inline_trace(str(message.get("content") or ""),
                                                      traces, index)[1]
    with_tools = uses_tools(messages, tools)
    if with_tools and rendering.native:
        messages = _native_calls(messages, rendering.arguments_as_text)
    elif with_tools:
        messages, tools = as_plain_messages(messages, tools), None
    answer = str(messages[-1].get("content") or "")
    if trace is not None:
        if traces.mode == "tags":
            messages[-1] = {**messages[-1], "content": (
                f"{traces.start}\n{trace}\n{traces.end}\n\n{answer}")}
        else:
            messages[-1] = {**messages[-1], str(traces.field): trace}
    full, spans, separate = turn_spans(index, messages, tools if with_tools else None, tokenizer,
                                       train_turns)
    start, end = spans[-1]  # the final turn: the whole rendering starts with its own
    text = full[:end]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and not text.endswith(eos):  # as TRL ends every completion: the student learns to stop
        text += eos
    spans[-1] = (start, len(text))
    example = TurnsExample(text, spans, has_tools=with_tools)
    if trace is not None:
        tail = full[start:end]
        at = tail.rfind(answer.strip()) if answer.strip() else _after_trace(tail, trace, traces)
        if at < 0 or trace.strip() not in tail[:at]:
            raise InputError(f"row {index}: the chat template dropped the trace from its "
                             f"`{traces.field}` field (or the answer); use reasoning: tags")
        example.trace = (start, start + at)
    return [example, *(TurnsExample(alone, [span], has_tools=with_tools)
                       for alone, span in separate)]


def _after_trace(tail: str, trace: str, traces: Any) -> int:
    """Where a calls-only turn's trace block ends: after the trace and a closing tag right
    after it (the answer is empty, so its start cannot say)."""
    at = tail.find(trace.strip())
    if at < 0:
        return -1
    at += len(trace.strip())
    rest = tail[at:]
    if rest.lstrip().startswith(traces.end):
        at += len(rest) - len(rest.lstrip()) + len(traces.end)
    return at


def tokenize_turns(
    example: TurnsExample, tokenizer: Any, mask_trace: bool = False
) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` (1 on trained tokens) of one example; with
    ``mask_trace`` the trace block is context too (``mask_reasoning``).

    The text is tokenized whole, and each span boundary is placed where the tokens of the text
    up to it and of the whole part (TRL's rule for prompt/completion text,
    ``trl.data_utils.common_prefix_length``): a token straddling the start of a turn is trained,
    one straddling its end is context (turn ends are special tokens in real templates)."""
    from trl.data_utils import common_prefix_length

    # A template that writes the BOS token itself (Llama 3's) would get a second one from a
    # tokenizer that adds it to any text.
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and example.text.startswith(bos))

    def tokens(text: str) -> list[int]:
        return list(tokenizer(text=text, add_special_tokens=special)["input_ids"])

    ids = tokens(example.text)

    def token_at(position: int) -> int:
        if position >= len(example.text):
            return len(ids)
        return common_prefix_length(tokens(example.text[:position]), ids)

    mask = [0] * len(ids)
    for start, end in example.trained:
        for t in range(token_at(start), token_at(end)):
            mask[t] = 1
    if mask_trace and example.trace is not None:
        # The answer starts where the tokens of the text through the trace block and the
        # whole part, so a token straddling that seam (white space) is trained, not lost.
        for t in range(token_at(example.trace[0]), token_at(example.trace[1])):
            mask[t] = 0
    return {"input_ids": ids, "completion_mask": mask}


__all__ = [
    "ToolFormat",
    "ToolRendering",
    "TrainTurns",
    "TurnsExample",
    "conversation_example",
    "render",
    "row_conversation",
    "row_tools",
    "tokenize_turns",
    "tool_rendering",
    "turn_spans",
    "uses_tools",
]
