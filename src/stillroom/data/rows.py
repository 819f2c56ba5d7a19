"""The row model: what a row holds, and the one way a stage reads and writes it.

A row is a dict (:data:`Row`). A stage reads a row's parts through these functions rather than
indexing ``prompt``/``messages``/``completion`` itself, so every stage takes every row shape:

Reading
  * :func:`prompt_messages`: the prompt as chat turns (``messages`` without the answer, a
    conversational ``prompt``, or a text ``prompt`` as one user turn);
  * :func:`prompt_text`: the prompt as one text (what a judge is shown);
  * :func:`check_prompt`, then :func:`build_messages`: whether a generation stage can ask the
    row, and the chat request it sends (``prompt_template`` and ``system`` applied);
  * :func:`row_answer`: the answer text (a text ``completion``, an assistant message list, or
    the final assistant turn of ``messages``); :func:`answer_text`: one cell's answer;
  * :func:`cell_text` / :func:`cell_texts`: the texts of any cell (a text, texts, messages,
    content parts); :func:`content_text`: one message's content; :func:`turn_texts`,
    :func:`last_turn`, :func:`answer_turn`: turns of a conversation; :func:`turn_text`,
    :func:`calls_text`, :func:`transcript_text`: a turn's text with its tool calls, and a
    conversation as one transcript (:mod:`~.row_text`);
  * :func:`answer_turn_text`: the answer as a judge or verifier reads it (an assistant turn's
    tool calls included); with the ``conversation`` option (:data:`ConversationMode`):
    :func:`conversation_answer` / :func:`conversation_instruction`, what a judge or verifier
    reads of a conversation, its last turn or the whole transcript (:func:`transcript_text`);
  * :func:`finish_reasons`: why each of its answers ended (``stop``, ``length``, ...);
  * :func:`row_id`, :func:`row_key` (the id, or one made from the prompt), :func:`seed_id_of`.

Writing
  * :func:`with_answer`: a row with its answer, in TRL's shape for the row (below);
  * :func:`pair_prompt`, :func:`answer_cell`: a preference pair's ``prompt`` and its
    ``chosen``/``rejected`` cells;
  * :func:`with_lineage`, :func:`derived_id`, :class:`PromptTemplate`: where a row came from
    (:mod:`~.lineage`).

A generation stage writes the answer in TRL's shape for the row it answered, so that TRL's
``SFTTrainer`` and ``stillroom train sft`` both train on it:

* a text ``prompt``                -> ``completion``: the answer text;
* a conversational ``prompt``      -> ``completion``: ``[{"role": "assistant", "content": answer}]``
  (a list of messages, TRL's conversational prompt-completion form);
* ``messages`` (and no ``prompt``) -> ``messages``: the conversation (any trailing assistant turns
  removed, since they are regenerated) followed by ``{"role": "assistant", "content": answer}``,
  and no ``completion`` column.

A row with both a ``prompt`` and ``messages`` (the quickstart's: a few-shot conversation to ask
the teacher, the bare prompt for the student) gets its answer in ``completion``, in its
``prompt``'s shape: TRL trains such a row as prompt + completion (``SFTTrainer``'s tokenizer
takes that branch whenever a row has a ``prompt``) and reads ``messages`` not at all.

No row mixes the two: TRL (``trl.data_utils.is_conversational``) decides whether a row is
conversational from whichever of its ``prompt``/``completion``/``messages``/... columns a set
happens to yield first, so a ``messages`` list next to a text ``completion`` is read one way or
the other depending on the process's hash seed (see the README's row-format section).

The readers here take every shape, and also the one older stillroom versions wrote (``messages``
without the answer, the answer in a text ``completion``): :func:`row_answer` is the answer text,
:func:`prompt_messages` the conversation before it.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

from stillroom.data.lineage import (
    LINEAGE_KEYS,
    PromptTemplate,
    derived_id,
    row_id,
    row_key,
    seed_id_of,
    with_lineage,
)
from stillroom.data.row_text import (
    answer_turn,
    calls_text,
    cell_text,
    cell_texts,
    content_text,
    last_turn,
    transcript_text,
    turn_text,
    turn_texts,
)
from stillroom.data.row_types import Message, Row

if TYPE_CHECKING:
    from stillroom.llm.types import Completion

ANSWER_COLUMN = "completion"
"""The default answer column; the one whose answer may live in ``messages`` instead."""


def is_conversation(value: Any) -> TypeGuard[list[Message]]:
    """A non-empty list of ``{role, content}`` messages (TRL's conversational value)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def assistant_message(text: str) -> Message:
    """``text`` as the assistant's turn."""
    return {"role": "assistant", "content": text}


def answer_text(value: Any) -> str | None:
    """The answer in one cell: a text as it is, or the last assistant turn of a message list
    (TRL's conversational ``completion``); None when the cell holds neither."""
    if isinstance(value, str):
        return value
    if is_conversation(value):
        for message in reversed(value):
            if message["role"] == "assistant":
                return content_text(message["content"])
    return None


def without_answer(messages: list[Message]) -> list[Message]:
    """``messages`` without its trailing assistant turns (the answer, when it has one): a new
    list of the same message objects (callers do not change them)."""
    end = len(messages)
    while end and messages[end - 1].get("role") == "assistant":
        end -= 1
    return list(messages[:end])


def pair_prompt(row: Row, column: str) -> tuple[Any, bool]:
    """The ``prompt`` of a preference pair made from ``row[column]``, and whether it is
    conversational: a conversation without the answer already at its end (the pair's answers
    answer it), or the text as it is."""
    value = row[column]
    if column == "messages" or is_conversation(value):
        return (without_answer(value) if is_conversation(value) else []), True
    return value, False


def prompt_messages(row: Row) -> list[Message] | None:
    """The conversation a row's answer answers: ``messages`` without its trailing assistant
    turns, a conversational ``prompt`` (a list of messages), or a text ``prompt`` as one user
    turn. ``messages`` comes first when a row has both. None when the row has neither, or
    nothing is left before the answer."""
    messages = row.get("messages")
    if messages is not None:
        return (without_answer(messages) or None) if is_conversation(messages) else None
    prompt = row.get("prompt")
    if is_conversation(prompt):
        return without_answer(prompt) or None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return None


def prompt_text(row: Row) -> str | None:
    """The prompt as one text (what a judge is shown): a text ``prompt`` as it is, a conversation
    of one user turn as that turn's text, else the turns before the answer
    (:func:`prompt_messages`) as ``Role: text`` paragraphs (:func:`transcript_text`: tool calls
    and tool results included). None when the row has no prompt there."""
    turns = prompt_messages(row)
    if turns is None:
        return None
    if len(turns) == 1 and turns[0]["role"] == "user":
        return str(content_text(turns[0]["content"]) or "")
    return transcript_text(turns)


def row_answer(row: Row, column: str = ANSWER_COLUMN) -> str | None:
    """The answer text of a row: ``column``'s value (a text, or an assistant message list), or,
    for the default ``completion`` column when the row has none, the final assistant turn of
    its ``messages``. None when the row holds no answer there."""
    value = row.get(column)
    if value is not None:
        return answer_text(value)
    if column == ANSWER_COLUMN:
        messages = row.get("messages")
        if is_conversation(messages) and messages[-1]["role"] == "assistant":
            return content_text(messages[-1]["content"])
    return None


def answer_turn_text(row: Row, column: str = ANSWER_COLUMN) -> str | None:
    """The answer as a judge or verifier reads it: :func:`row_answer`, except that an assistant
    turn's tool calls are part of its text (:func:`turn_text`), so an answer that only calls a
    tool is its calls, not an empty text. Rows without calls read exactly as with
    :func:`row_answer`."""
    value = row.get(column)
    if value is None and column == ANSWER_COLUMN:
        messages = row.get("messages")
        if is_conversation(messages) and messages[-1]["role"] == "assistant":
            return turn_text(messages[-1])
        return None
    if is_conversation(value):
        for message in reversed(value):
            if message["role"] == "assistant":
                return turn_text(message)
        return None
    return answer_text(value)


# -- what a judge or verifier reads of a conversation ----------------------------------------------

ConversationMode = Literal["last_turn", "whole"]
"""The ``conversation`` option of the judges and the verifier stages: ``last_turn`` reads the
answer (the final assistant turn, or each candidate answer) with the turns before it as its
context; ``whole`` reads the whole conversation, answer included, as one transcript. A row that
is no conversation (a text ``prompt``) reads the same either way."""

CONVERSATION_OPTION = (
    "What is read of a conversation: last_turn (the last assistant turn, the turns before it as "
    "context) or whole (every turn as one transcript, tool calls and results included)."
)

WHOLE_CONVERSATION_REQUEST = (
    "The whole conversation below, between a user and an AI assistant (with the assistant's tool "
    "calls and the tools' results, if any). Judge the assistant's part of the whole "
    "conversation: every assistant turn, not only the last."
)
"""What a judge is shown as the request when it rates a whole conversation."""


def is_conversation_row(row: Row) -> bool:
    """Whether the row's prompt is a conversation (``messages``, or a conversational
    ``prompt``): the rows the ``conversation`` option applies to."""
    return is_conversation(row.get("messages")) or is_conversation(row.get("prompt"))


def conversation_answer(
    row: Row, answer: str, mode: ConversationMode,
    assistant_text: Callable[[str], str] | None = None,
) -> str:
    """What is read as the answer: ``answer`` itself (``last_turn``, or a row that is no
    conversation), or with ``whole`` the transcript (:func:`transcript_text`) of the turns
    before the answer (:func:`prompt_messages`) followed by ``answer`` as the assistant's turn.
    ``assistant_text`` rewrites each earlier assistant turn's content (a judge cuts inline
    reasoning traces from them as it does from the answer)."""
    if mode == "last_turn" or not is_conversation_row(row):
        return answer
    turns = prompt_messages(row) or []
    if assistant_text is not None:
        turns = [
            {**turn, "content": assistant_text(text)}
            if turn.get("role") == "assistant" and isinstance(text := content_text(turn["content"]), str)
            else turn
            for turn in turns
        ]
    return transcript_text([*turns, assistant_message(answer)])


def conversation_instruction(row: Row, mode: ConversationMode) -> str | None:
    """What is shown as the request: :func:`prompt_text` (``last_turn``, or a row that is no
    conversation), or with ``whole`` :data:`WHOLE_CONVERSATION_REQUEST` (the transcript itself
    is the answer, :func:`conversation_answer`)."""
    if mode == "last_turn" or not is_conversation_row(row):
        return prompt_text(row)
    return WHOLE_CONVERSATION_REQUEST


def finish_reasons(row: Row) -> list[tuple[str, str]]:
    """Every ``(where, finish reason)`` the row records: its ``finish_reason`` (a text or a list),
    each ``completion_sources[i].finish_reason``, and every ``*finish_reason(s)`` key of a stage's
    ``metadata`` entry (``complete`` writes ``metadata.<stage>.finish_reasons``)."""
    found: list[tuple[str, str]] = []

    def add(where: str, value: Any) -> None:
        if isinstance(value, str):
            found.append((where, value))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    found.append((f"{where}[{i}]", item))

    add("finish_reason", row.get("finish_reason"))
    sources = row.get("completion_sources")
    if isinstance(sources, list):
        for i, source in enumerate(sources):
            if isinstance(source, dict):
                add(f"completion_sources[{i}].finish_reason", source.get("finish_reason"))
    metadata = row.get("metadata")
    if isinstance(metadata, dict):
        for stage, entry in metadata.items():
            if not isinstance(entry, dict):
                continue
            for key, value in entry.items():
                if key.endswith(("finish_reason", "finish_reasons")):
                    add(f"metadata.{stage}.{key}", value)
    return found


def with_answer(row: Row, text: str) -> Row:
    """A copy of ``row`` with ``text`` as its answer, in TRL's shape for the row (see the module
    docstring): an assistant message list in ``completion`` for a conversational ``prompt``, a
    text ``completion`` for a text ``prompt``, or, for a ``messages`` row without a ``prompt``,
    the last turn of ``messages`` (replacing trailing assistant turns; a stale ``completion``
    is dropped)."""
    out = dict(row)
    prompt = row.get("prompt")
    if is_conversation(prompt):
        out[ANSWER_COLUMN] = [assistant_message(text)]
    elif prompt is None and row.get("messages") is not None:
        out["messages"] = [*without_answer(row["messages"]), assistant_message(text)]
        out.pop(ANSWER_COLUMN, None)
    else:
        out[ANSWER_COLUMN] = text
    return out




def answer_cell(text: str, conversational: bool) -> Any:
    """An answer as a preference pair's ``chosen``/``rejected`` (or a conversational
    ``completion``) holds it: ``[{"role": "assistant", "content": text}]`` beside a
    conversational prompt, else the text."""
    return [assistant_message(text)] if conversational else text


# -- the input of a generation stage ---------------------------------------------------------------

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any, column: str = "messages") -> str | None:
    """What is wrong with a conversation in ``column``, if anything: it must be a non-empty list
    of ``{role, content}`` objects with a known role and text (or content-parts) content."""
    if not isinstance(messages, list) or not messages:
        return f"`{column}` must be a non-empty list of {{role, content}} objects"
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"`{column}[{position}]` must be an object with `role` and `content`"
        if message["role"] not in ROLES:
            return f"`{column}[{position}].role` is {message['role']!r}; use system, user or assistant"
        if not isinstance(message["content"], (str, list)):
            return f"`{column}[{position}].content` must be text"
    return None


def field_column(field: str) -> str:
    """The column a template's replacement field reads: ``a`` for ``{a}``, ``{a.b}``, ``{a[0]}``."""
    return field.split(".", 1)[0].split("[", 1)[0]


def template_columns(template: str) -> list[str]:
    """The columns a ``prompt_template`` reads."""
    return [field_column(field) for _, field, _, _ in string.Formatter().parse(template) if field]


def check_prompt(
    row: Row, *, messages_allowed: bool = True, prompt_template: str | None = None
) -> str | None:
    """What is wrong with the row's ``messages`` or ``prompt`` (the input of a generation stage),
    or, with a ``prompt_template``, which of the columns it needs the row lacks. A ``prompt``
    may be text, or (where ``messages_allowed``) a conversation: TRL's conversational prompt."""
    if prompt_template is not None:
        missing = [c for c in template_columns(prompt_template) if c not in row]
        if missing:
            return f"prompt_template needs column(s) {missing}; the row has {sorted(row)}"
        if row.get("messages") is not None and row.get("prompt") is None:
            # The answer goes to a text `completion`; beside a `messages` list and no `prompt`,
            # TRL would read the row one way or the other (see the module docstring).
            return ("the row has `messages` but no `prompt`, and prompt_template builds the "
                    "request from other columns: the answer would land in `completion` beside "
                    "a conversation it does not answer; drop or rename the `messages` column")
        return None
    if messages_allowed and row.get("messages") is not None:
        problem = check_messages(row["messages"])
        if problem is None and not without_answer(row["messages"]):
            return "`messages` holds no turn before the answer (only assistant turns)"
        return problem
    prompt = row.get("prompt")
    if prompt is None:
        columns = "a `prompt` or `messages` column" if messages_allowed else "a `prompt` column"
        return f"the row needs {columns}; it has {sorted(row)}"
    if messages_allowed and isinstance(prompt, list):
        problem = check_messages(prompt, "prompt")
        if problem is None and prompt[-1]["role"] == "assistant":
            return ("a conversational `prompt` must not end with an assistant turn (the answer "
                    "goes in `completion`); put a conversation to answer again in `messages`")
        return problem
    if not isinstance(prompt, str):
        kind = "text or a list of messages" if messages_allowed else "text"
        return f"`prompt` must be {kind}, got {type(prompt).__name__}"
    if not prompt.strip():
        return "`prompt` is empty"
    return None


def build_messages(
    row: Row, prompt_template: str | None = None, system: str | None = None
) -> list[Message]:
    """The chat request for a row: its template filled in, its ``messages`` (without trailing
    assistant turns: a conversation that already ends in an answer gets that answer
    regenerated), its conversational ``prompt``, or its text ``prompt`` as one user turn; with
    ``system`` put first unless the conversation has its own."""
    if prompt_template is not None:
        messages = [{"role": "user", "content": prompt_template.format(**row)}]
    else:
        messages = prompt_messages(row) or []
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


# -- reasoning traces ------------------------------------------------------------------------------
# A trace sits beside the answer, never in it: in ``reasoning`` (``<column>_reasoning`` beside a
# custom answer column), text for one answer and a list aligned with a list of answers. Written
# only when some answer has a trace, so rows of models without traces keep their old columns.


def has_trace(completions: list[Completion]) -> bool:
    """Whether any completion carries a reasoning trace (a finished or an unfinished one)."""
    return any(c.reasoning is not None or not c.reasoning_ended for c in completions)


def trace_columns(
    column: str, completions: list[Completion], many: bool, *, flag: bool
) -> dict[str, Any]:
    """The trace column (text, or a list aligned with the samples when ``many``) and, when
    traces that never ended are kept (``flag``), ``<column>_truncated`` beside it."""
    traces = [c.reasoning for c in completions]
    cut = [not c.reasoning_ended for c in completions]
    out: dict[str, Any] = {column: traces if many else traces[0]}
    if flag:
        out[f"{column}_truncated"] = cut if many else cut[0]
    return out


def trace_usage(completions: list[Completion]) -> dict[str, Any]:
    """Reasoning token figures for a stage's row metadata."""
    usage: dict[str, Any] = {"reasoning_tokens": sum(c.reasoning_tokens for c in completions)}
    if any(c.reasoning_tokens_estimated for c in completions):
        usage["reasoning_tokens_estimated"] = True
    return usage


def truncated_reason(completion: Completion, *, can_flag: bool = True) -> str:
    """Why a completion whose trace never ended is not an answer (a row failure's reason)."""
    from stillroom.llm.reasoning import unended_reason

    instead = ", or keep such rows flagged with truncated_reasoning: flag" if can_flag else ""
    return unended_reason(completion.finish_reason) + instead


__all__ = [
    "ANSWER_COLUMN",
    "CONVERSATION_OPTION",
    "WHOLE_CONVERSATION_REQUEST",
    "ConversationMode",
    "answer_turn_text",
    "calls_text",
    "conversation_answer",
    "conversation_instruction",
    "is_conversation_row",
    "transcript_text",
    "turn_text",
    "LINEAGE_KEYS",
    "ROLES",
    "Message",
    "PromptTemplate",
    "Row",
    "answer_cell",
    "answer_text",
    "answer_turn",
    "assistant_message",
    "build_messages",
    "cell_text",
    "cell_texts",
    "check_messages",
    "check_prompt",
    "content_text",
    "derived_id",
    "field_column",
    "finish_reasons",
    "has_trace",
    "is_conversation",
    "last_turn",
    "pair_prompt",
    "prompt_messages",
    "prompt_text",
    "row_answer",
    "row_id",
    "row_key",
    "seed_id_of",
    "template_columns",
    "trace_columns",
    "trace_usage",
    "truncated_reason",
    "turn_texts",
    "with_answer",
    "with_lineage",
    "without_answer",
]


def template_problem(template: str) -> str | None:
    """What makes ``template`` unusable as a ``prompt_template``, if anything: a brace without
    its pair, a positional field (``{}`` or ``{0}``) where a column name belongs, an unknown
    conversion, or no ``{column}`` field at all."""
    import string

    columns: list[str] = []
    try:
        for _, field, spec, conversion in string.Formatter().parse(template):
            if field is None:
                continue
            column = field_column(field)
            if not column or column.isdigit():
                shown = "{" + field + "}"
                return (f"{shown} is a positional field; name a column instead, "
                        "e.g. '{question}'")
            if conversion not in (None, "r", "s", "a"):
                return f"{{{field}!{conversion}}} has an unknown conversion (use !r, !s or !a)"
            if spec and "{" in spec:
                return f"{{{field}:{spec}}} nests a field in its format spec; it is not supported"
            columns.append(column)
    except ValueError as error:  # an unbalanced brace: "Single '}' encountered", ...
        return f"is not a valid template: {error} (write a literal brace as '{{{{' or '}}}}')"
    if not columns:
        return "names no column; use '{column}' fields, e.g. '{question}'"
    return None


def checked_prompt_template(value: str | None) -> str | None:
    """``value`` as a stage's ``prompt_template`` option, or a ValueError naming what is wrong
    (for the stages' pydantic validators)."""
    if value is not None:
        problem = template_problem(value)
        if problem:
            raise ValueError(f"prompt_template {value!r} {problem}")
    return value
