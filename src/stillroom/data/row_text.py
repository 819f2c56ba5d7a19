"""The texts in a cell: what a filter, an embedder or a judge reads from any column.

A cell holds a text, a list of texts, a chat message (``{"role", "content"}``), a list of messages
(a conversation), or a list of any of these. A message's ``content`` is a text, content parts
(``[{"type": "text", "text": ...}, {"type": "image_url", ...}]``), or nothing (``None``: an
assistant turn that only calls a tool).

* :func:`cell_texts` / :func:`cell_text`: every text in a cell, in order (a list, or joined);
  ``roles`` keeps only the messages of those roles.
* :func:`content_text`: one message's content as text.
* :func:`turn_texts`: ``(index, text)`` of the turns of some roles in a conversation, for a
  reader that names where a text came from (``messages[2]``).
* :func:`last_turn`, :func:`answer_turn`: where a conversation's last turn of a role is, and
  where its answer is (its final turn, when that is the assistant's).

Import these from :mod:`stillroom.data.rows`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value and "content" in value


def turn_texts(messages: Sequence[Any], roles: Sequence[str] | None = None) -> list[tuple[int, str]]:
    """The ``(index, text)`` of each turn of ``messages`` whose role is one of ``roles`` (every
    turn when ``roles`` is None) and whose content holds text (:func:`content_text`); items that
    are not messages are skipped."""
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or (roles is not None and message.get("role") not in roles):
            continue
        text = content_text(message.get("content"))
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
    content parts; none for a message with ``None`` content); a content part's ``text``; the
    texts of each item of a list. With ``roles``, messages of other roles give no text.

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
            return [] if content is None else cell_texts(content)
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
    "answer_turn",
    "cell_text",
    "cell_texts",
    "content_text",
    "last_turn",
    "turn_texts",
]
