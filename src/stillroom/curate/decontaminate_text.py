"""The text side of decontamination: how a cell's texts are read and cut into n-gram hashes
(see :mod:`stillroom.curate.decontaminate` for the method)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from stillroom.data.rows import calls_text

# A token: a whitespace-separated run, trimmed to its first and last word character, so leading
# and trailing punctuation go and a run of punctuation alone is no token.
_TOKEN = re.compile(r"\w(?:\S*\w)?")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def normalize(text: str) -> str:
    """Unicode NFKC, straight quotes, lowercase: what tokens are taken from."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()


def tokenize(text: str) -> list[str]:
    """The tokens n-grams are made of (see the module docstring)."""
    return _TOKEN.findall(normalize(text))


def ngram_hashes(tokens: list[str], n: int) -> list[int]:
    """The hash of every n-gram of ``tokens``, in order (none when there are fewer than n)."""
    return [hash(gram) for gram in zip(*(tokens[k:] for k in range(n)), strict=False)]


def texts_in(
    value: Any, *, numbers: bool = False, roles: Sequence[str] | None = None
) -> list[str]:
    """The texts a cell holds: a string, a list of strings, chat messages (their ``content``,
    which may itself be a list of ``{type: text, text}`` parts, then their tool calls written
    out, :func:`stillroom.data.rows.calls_text`; with ``roles`` only messages of those roles).
    Numbers only when ``numbers`` (a benchmark's numeric answer column named on purpose)."""
    if isinstance(value, str):
        return [value]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [text for item in value for text in texts_in(item, numbers=numbers, roles=roles)]
    if isinstance(value, dict):
        if "content" in value or "role" in value:  # a chat message
            if roles is not None and value.get("role") not in roles:
                return []
            calls = calls_text(value)
            return texts_in(value.get("content")) + ([calls] if calls is not None else [])
        if "text" in value:
            return texts_in(value["text"])
    return []


__all__ = ["ngram_hashes", "normalize", "texts_in", "tokenize"]
