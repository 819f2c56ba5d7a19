"""The texts in a cell: what a filter, an embedder or a judge reads from any column.

A cell holds a text, a list of texts, a chat message (``{"role", "content"}``), a list of messages
(a conversation), or a list of any of these. A message's ``content`` is a text, content parts
(``[{"type": "text", "text": ...}, {"type": "image_url", ...}]``), or nothing (``None``: an
assistant turn that only calls a tool).

* :func:`cell_texts` / :func:`cell_text`: every text in a cell, in order (a list, or joined);
  ``roles`` keeps only the messages of those roles.
* :func:`content_text`: one message's content as text; :func:`turn_text`: one turn's text as a
  reader sees it (its content, then its tool calls written as ``<tool_call>`` blocks).
* :func:`transcript_text`: a conversation as ``Role: text`` paragraphs (tool turns named by
  their tool), what a judge is shown of it.
* :func:`turn_texts`: ``(index, text)`` of the turns of some roles in a conversation, for a
  reader that names where a text came from (``messages[2]``).
* :func:`last_turn`, :func:`answer_turn`: where a conversation's last turn of a role is, and
  where its answer is (its final turn, when that is the assistant's).

Import these from :mod:`stillroom.data.rows`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stillroom.llm.tool_calls import calls_as_text


def content_text(content: Any, sep: str = "\n") -> str | None:
    """A message's content as text: a string, or the texts of a content-parts list joined by
    ``sep`` (parts without text, such as images, left out); None when it holds no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        texts = [part for part in parts if isinstance(part, str)]
        return sep.join(texts) if texts else None
    return None


def calls_text(message: Any) -> str | None:
    """An assistant turn's ``tool_calls`` written as text (:func:`calls_as_text`: one
    ``<tool_call>`` block per call), or None when the turn calls nothing (calls without a
    function name are left out). Calls are part of what
    the assistant said: a reader that left them out would see a calling turn as empty."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list):
        return None
    # A call without a named function (a bare {"id": ...}) says nothing a reader could read.
    calls = [call for call in calls if isinstance(call, dict)
             and isinstance(call.get("function"), dict) and call["function"].get("name")]
    return calls_as_text(calls) if calls else None


def turn_text(message: Any) -> str | None:
    """One turn's text as a reader sees it: its content (:func:`content_text`), then its tool
    calls (:func:`calls_text`) on the next line. None when it holds neither (a ``None`` content
    and no calls); ``""`` for an empty content without calls."""
    if not isinstance(message, dict):
        return None
    text = content_text(message.get("content"))
    calls = calls_text(message)
    if calls is None:
        return text
    return f"{text}\n{calls}" if text else calls


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def turn_label(message: dict[str, Any]) -> str:
    """How a transcript names a turn: ``User``, ``Assistant``, ``Tool (get_weather)`` (a tool
    turn with its tool's name, so a reader knows which call the result answers)."""
    role = str(message.get("role"))
    label = ROLE_NAMES.get(role, role)
    name = message.get("name")
    if role == "tool" and isinstance(name, str) and name:
        label = f"{label} ({name})"
    return label


def transcript_text(messages: Sequence[Any]) -> str:
    """A conversation as one text: each turn a ``Label: text`` paragraph (:func:`turn_label`,
    :func:`turn_text`), items that are not messages
    skipped. What a judge reads of a conversation: every turn, tool calls and results included."""
    return "\n\n".join(
        f"{turn_label(message)}: {turn_text(message) or ''}"
        for message in messages
        if _is_message(message)
    )


def _is_message(value: Any) -> bool:
    # A role makes a message: OpenAI's format lets an assistant turn that only calls tools
    # leave `content` out, and such a turn is still part of the conversation.
    return isinstance(value, dict) and isinstance(value.get("role"), str)


def turn_texts(messages: Sequence[Any], roles: Sequence[str] | None = None) -> list[tuple[int, str]]:
    """The ``(index, text)`` of each turn of ``messages`` whose role is one of ``roles`` (every
    turn when ``roles`` is None) and that holds text (:func:`turn_text`: its content and its
    tool calls); items that are not messages are skipped."""
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or (roles is not None and message.get("role") not in roles):
            continue
        text = turn_text(message)
        if text is not None:
            out.append((index, text))
    return out


def last_turn(messages: Sequence[Any], role: str, before: int | None = None) -> int | None:
    """The index of the last ``role`` message of ``messages`` (among those before index
    ``before``, when given); items that are not messages are skipped. None when there is none."""
    end = len(messages) if before is None else before
    for index in range(end - 1, -1, -1):
        message = messages[index]
        if _is_message(message) and message["role"] == role:
            return index
    return None


def answer_turn(messages: Sequence[Any]) -> int | None:
    """The index of a conversation's answer: its final message, when that is the assistant's
    (items that are not messages are skipped); None when the conversation is not answered."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if _is_message(message):
            return index if message["role"] == "assistant" else None
    return None


def cell_texts(value: Any, roles: Sequence[str] | None = None) -> list[str] | None:
    """Every text in a cell, in order: a text; a message's content (a text, or the texts of its
    content parts; none for a message with ``None`` content) followed by its tool calls
    (:func:`calls_text`); a content part's ``text``; the texts of each item of a list. With
    ``roles``, messages of other roles give no text.

    None when the cell holds something that is not text: ``None``, a number, an object that is
    neither a message nor a content part, or a list with such an item. An empty list is ``[]``.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        if "content" in value or "role" in value:  # a chat message
            if roles is not None and value.get("role") not in roles:
                return []
            content = value.get("content")
            said = [] if content is None else cell_texts(content)
            calls = calls_text(value)
            if said is None or calls is None:
                return said
            return [*said, calls]
        if "text" in value:  # a content part {"type": "text", "text": ...}
            return cell_texts(value["text"])
        if "type" in value:  # a content part without text (an image, a file)
            return []
        return None
    if isinstance(value, list | tuple):
        texts: list[str] = []
        for item in value:
            found = cell_texts(item, roles)
            if found is None:
                return None
            texts.extend(found)
        return texts
    return None


def cell_text(value: Any, roles: Sequence[str] | None = None, sep: str = "\n") -> str | None:
    """The texts of a cell (:func:`cell_texts`) joined by ``sep``, empty texts left out; None when
    the cell holds no text at all (not text, an empty list, or no message of ``roles``)."""
    texts = cell_texts(value, roles)
    if not texts:
        return None
    return sep.join(text for text in texts if text)


__all__ = [
    "ROLE_NAMES",
    "answer_turn",
    "calls_text",
    "cell_text",
    "cell_texts",
    "content_text",
    "last_turn",
    "transcript_text",
    "turn_label",
    "turn_text",
    "turn_texts",
]
