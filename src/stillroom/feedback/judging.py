"""What every LLM judge shares: asking for a structured verdict and getting a usable one or a reason.

A judge answers with JSON that matches a schema. Where the backend can constrain decoding to a
schema (llama.cpp's grammar, an OpenAI-compatible server's ``response_format``), it is asked to;
the :class:`~stillroom.llm.client.LLMClient` then validates the answer and re-asks with the error
when it does not parse, and a judgment that never parses fails the request with the raw text.

Other backends (transformers, Anthropic, a server told ``structured_output: prompt``) get the
same schema described in the prompt and their answer is read leniently: JSON anywhere in the text
(fenced or bare), and failing that the judge's own plain-text reader (``Rating: 4``, ``[[A]]``),
whose result must still satisfy the schema. An answer neither reading accepts is re-asked with
what was wrong, up to ``max_reasks`` times; then the row fails with the last raw answer in its
reason. No path leaves a judgment empty or ``None``.

Conversations (the judges' ``conversation`` option, :data:`~stillroom.data.rows.ConversationMode`):
with ``last_turn`` (the default) a judge rates the answer, the conversation's last assistant turn
(or each candidate answer), and is shown the turns before it as the request, one ``Role: text``
paragraph each; with ``whole`` the request says the whole conversation is judged and the text
rated is the transcript of every turn, the answer last (:func:`judged_view`). Either way an
assistant turn's tool calls are written after its text as ``<tool_call>`` blocks and a tool's
result is a ``Tool (<name>): ...`` paragraph (:func:`~stillroom.data.rows.transcript_text`).

A judge is shown the final answer, never the reasoning trace before it (:func:`judged_text`): a
trace kept apart in a ``reasoning`` column is not read at all, and an inline ``<think>`` trace is
cut off where the judge's prompt is built, so the row's own columns (``chosen``/``rejected``
for training) keep what the model wrote. Judging a trace would reward long thinking rather than
a good answer, and show the judge text the user never sees.

Every judge schema is bounded (strings have ``maxLength``, lists ``maxItems``), and when decoding
is constrained the request's ``max_tokens`` is raised to at least the longest answer the schema
allows (:func:`~stillroom.llm.structured.json_length_bound`). Under a grammar a lower limit cannot
make an answer shorter, only cut a long one off before its JSON closes (a small model that repeats
"1.1.1..." fills every string to its bound), and a grammar ends the answer itself as soon as the
JSON is complete, so the higher limit costs nothing otherwise. To get shorter answers, lower the
judge's ``rationale_chars``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from stillroom.data.rows import (
    ConversationMode,
    Row,
    answer_turn_text,
    conversation_answer,
    conversation_instruction,
    is_conversation,
    prompt_text,
    without_answer,
)
from stillroom.llm.client import LLMClient
from stillroom.llm.reasoning import final_answer
from stillroom.llm.structured import (
    StructuredOutputError,
    json_length_bound,
    parse_structured,
    reask_messages,
)
from stillroom.llm.types import Completion, GenerationParams, Message, Request
from stillroom.pipeline.stage import RowFailure

StructuredMode = Literal["auto", "schema", "prompt"]
TextReader = Callable[[str], Any]

_RAW_LIMIT = 1500
_MAX_TOKENS_CAP = 8192  # past this a bound says more about rationale_chars than about the answer


@dataclass(slots=True)
class Judgment:
    """An accepted verdict: the parsed value and what it took to get it."""

    value: Any
    completion: Completion
    answers: int  # how many answers were read (1 + re-asks)


def uses_schema(client: LLMClient, mode: StructuredMode) -> bool:
    """Whether to send the schema to the backend (constrained decoding) or only in the prompt."""
    if mode == "prompt":
        return False
    return client.backend.supports_json_schema


async def ask_judge(
    client: LLMClient,
    messages: list[Message],
    *,
    schema: dict[str, Any],
    params: GenerationParams,
    sample: int = 0,
    read_text: TextReader | None = None,
    structured: StructuredMode = "auto",
    max_reasks: int = 2,
    what: str = "judgment",
) -> Judgment:
    """One judgment that satisfies ``schema``; raises RequestFailed or RowFailure otherwise."""
    if uses_schema(client, structured):
        # Raises UnboundedSchema for a schema a grammar could follow forever (a bug in a judge).
        longest = json_length_bound(schema)
        max_tokens = max(params.max_tokens or 0, min(longest, _MAX_TOKENS_CAP))
        request = Request(
            messages=messages,
            params=replace(params, json_schema=schema, max_tokens=max_tokens),
            sample=sample,
        )
        # The client validates against the schema and re-asks; after that it raises
        # RequestFailed(kind InvalidStructuredOutput) carrying the raw answer.
        completion = await client.generate(request)
        return Judgment(completion.parsed, completion, answers=1)

    current = messages
    last_text = ""
    problem = ""
    for answer in range(1, max_reasks + 2):
        completion = await client.generate(Request(messages=current, params=params, sample=sample))
        last_text = completion.text
        try:
            return Judgment(read_leniently(last_text, schema, read_text), completion, answer)
        except StructuredOutputError as error:
            problem = error.problem
            if completion.finish_reason == "length":
                problem += f" (the answer was cut off at max_tokens {params.max_tokens})"
            current = reask_messages(current, last_text, error)
    shown = last_text if len(last_text) <= _RAW_LIMIT else last_text[:_RAW_LIMIT] + "..."
    raise RowFailure(
        f"{what}: no usable answer after {max_reasks + 1} tries ({problem}); "
        f"last raw answer: {shown!r}",
        kind="UnparseableJudgment",
        attempts=max_reasks + 1,
    )


def read_leniently(text: str, schema: dict[str, Any], read_text: TextReader | None) -> Any:
    """The JSON value in ``text`` matching ``schema``; else what ``read_text`` finds, if valid."""
    try:
        return parse_structured(text, schema)
    except StructuredOutputError as json_error:
        if read_text is None:
            raise
        value = read_text(text)
        if value is None:
            raise
        try:
            # Validate the plain-text reading against the same schema, so both paths agree on
            # what a usable judgment is.
            import json

            return parse_structured(json.dumps(value), schema)
        except StructuredOutputError as text_error:
            raise StructuredOutputError(
                f"{json_error.problem}; read as plain text: {text_error.problem}", text
            ) from None


def schema_prompt(schema_hint: str) -> str:
    """The closing instruction of every judge prompt: reply with JSON only."""
    return f"Reply with only a JSON object of this form, and nothing before or after it:\n{schema_hint}"


def transcript(row: Row) -> str:
    """The instruction a judge sees: the prompt text, or the conversation before the answer
    (:func:`stillroom.data.rows.prompt_text`: tool calls and tool results included)."""
    text = prompt_text(row)
    return str(row["prompt"]) if text is None else text


def judged_view(row: Row, answer: str, conversation: ConversationMode) -> tuple[str, str]:
    """What a judge is shown of ``answer`` to ``row``: (the request, the answer). With
    ``conversation: last_turn`` (and for any row that is no conversation) the request is
    :func:`transcript` and the answer :func:`judged_text`; with ``whole`` the request says that
    the whole conversation is judged and the answer is the transcript of every turn, ``answer``
    the last (:func:`stillroom.data.rows.conversation_answer`; each assistant turn read as
    :func:`judged_text`, without an inline reasoning trace)."""
    instruction = conversation_instruction(row, conversation)
    shown = conversation_answer(row, judged_text(answer), conversation, judged_text)
    return (transcript(row) if instruction is None else instruction), shown


def check_instruction(row: Row) -> str | None:
    """What is wrong with a row's prompt or messages for a judge, if anything."""
    for column in ("messages", "prompt"):
        value = row.get(column)
        if value is None or (column == "prompt" and isinstance(value, str)):
            continue
        if not is_conversation(value):
            if column == "prompt":
                break
            return "`messages` must be a list of {role, content} objects"
        if not without_answer(value):
            return f"`{column}` holds no turn before the answers"
        return None
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        return (f"the row needs a `prompt` (text or a list of messages) or `messages`; it has "
                f"{sorted(row)}")
    return None


# What a judge is shown for an answer whose trace never ended: it holds no answer, and saying so
# lets the judge rate it as such rather than grade a half-written thought.
NO_FINAL_ANSWER = "(no final answer: the response's reasoning never ended)"


def judged_text(answer: str) -> str:
    """What a judge is shown of ``answer``: its final answer, without an inline reasoning trace
    (:func:`stillroom.llm.reasoning.final_answer`); :data:`NO_FINAL_ANSWER` when the trace
    never ended."""
    final, _ = final_answer(answer)
    return NO_FINAL_ANSWER if final is None else final


def answer_problem(row: Row, column: str) -> str | None:
    """What keeps a judge from reading ``column``'s answer (:func:`answer_turn_text`: an answer
    that only calls a tool is its calls), if anything."""
    text = answer_turn_text(row, column)
    if text is None or not text.strip():
        return f"`{column}` is missing, empty or not text"
    return None


def first_number_after(label: str, text: str) -> float | None:
    """The number after ``label`` (case-insensitive), e.g. ``Rating: 4`` or ``Rating: [[4]]``."""
    match = re.search(rf"{label}\s*[:=]?\s*\[*\s*(-?\d+(?:\.\d+)?)", text, re.IGNORECASE)
    return float(match.group(1)) if match else None


def as_int(value: float | None) -> int | float | None:
    """An integral float as int (JSON ratings are integers), anything else unchanged."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value
