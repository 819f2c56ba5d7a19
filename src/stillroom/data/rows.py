"""Where a row's prompt and answer are: the row shapes stillroom writes and reads.

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

from typing import Any, TypeGuard

Row = dict[str, Any]
Message = dict[str, Any]

ANSWER_COLUMN = "completion"
"""The default answer column; the one whose answer may live in ``messages`` instead."""


def content_text(content: Any) -> str | None:
    """A message's content as text: a string, or the text parts of a content-parts list joined
    by newlines; None when it holds no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        texts = [part for part in parts if isinstance(part, str)]
        return "\n".join(texts) if texts else None
    return None


def is_conversation(value: Any) -> TypeGuard[list[Message]]:
    """A non-empty list of ``{role, content}`` messages (TRL's conversational value)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def assistant_message(text: str) -> Message:
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


__all__ = [
    "ANSWER_COLUMN",
    "Message",
    "answer_text",
    "assistant_message",
    "content_text",
    "is_conversation",
    "pair_prompt",
    "prompt_messages",
    "row_answer",
    "with_answer",
    "without_answer",
]
