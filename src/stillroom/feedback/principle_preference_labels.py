"""How the ``principle_preference`` stage (:mod:`stillroom.feedback.principle_preference`)
reads the judge's verdict on one order of the two candidates.

* :func:`resolve_mode`: which mode a backend can do (logprobs from a raw prompt, logprobs over
  chat, or text) and where its labels come from.
* Logprob modes: :func:`choice_letter` recognises a token that is "A" or "B" with only wrapping
  around it; :func:`letter_probabilities` turns one position's ``top_logprobs`` into normalized
  probabilities of A and B (bounded when one letter is not listed).
* Text mode: :func:`parse_choice` finds the letter in a worded answer.
* :class:`OrderLabel`: the verdict on one order, and the probability that the first candidate is
  the better one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from stillroom.errors import ConfigError

if TYPE_CHECKING:
    from stillroom.llm.backend import Backend

Mode = Literal["auto", "logprobs", "text"]
LabelSource = Literal["raw_prompt_logprobs", "chat_logprobs", "text"]
# The two candidates, in the order of the row (OrderLabel.shown says which was (A) and (B)).
FIRST, SECOND = "first", "second"


# -- reading the judge's answer --------------------------------------------------------------------

# What may wrap a letter in a token: spaces, byte-level BPE / SentencePiece space marks, brackets,
# markdown and punctuation ("(A", " A", "A)", "**A").
_TOKEN_WRAPPING = " \t\n\r\u0120\u2581()[]*_.:,;'\"`"
# Tokens with nothing but wrapping: skipped before the letter in chat mode.
_LETTERS = ("A", "B")


def choice_letter(token: str) -> str | None:
    """``A`` or ``B`` when ``token`` is that letter with only wrapping around it, else None.

    Case matters: a lowercase "a" is far more often the article than the option.
    """
    core = token.strip(_TOKEN_WRAPPING)
    return core if core in _LETTERS else None


@dataclass(frozen=True, slots=True)
class LetterProbabilities:
    p_a: float
    p_b: float
    bounded: bool


def letter_probabilities(alternatives: list[dict[str, Any]]) -> LetterProbabilities | None:
    """Normalized probabilities of A and B from one position's ``top_logprobs``, or None when
    neither letter is listed.

    Variants of a letter (" A", "(A") are summed. A letter missing from the list is no more
    likely than the least likely listed token, so that probability stands in for it (an upper
    bound, which can only make the label less confident) and the result says ``bounded``.
    """
    mass = {letter: 0.0 for letter in _LETTERS}
    found: set[str] = set()
    for alternative in alternatives:
        letter = choice_letter(str(alternative.get("token", "")))
        if letter is not None:
            mass[letter] += math.exp(float(alternative["logprob"]))
            found.add(letter)
    if not found:
        return None
    bounded = len(found) < len(_LETTERS)
    if bounded:
        floor = math.exp(min(float(alternative["logprob"]) for alternative in alternatives))
        for letter in _LETTERS:
            if letter not in found:
                mass[letter] = floor
    total = mass["A"] + mass["B"]
    return LetterProbabilities(mass["A"] / total, mass["B"] / total, bounded)


def letter_position(logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The generated token that should be the letter: the first that is not only "(" or markup."""
    for entry in logprobs:
        if str(entry.get("token", "")).strip(_TOKEN_WRAPPING):
            return entry
    return logprobs[0]


def top_alternatives(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry's top_logprobs, with the generated token itself when the list lacks it."""
    top = list(entry.get("top_logprobs") or [])
    if "token" in entry and "logprob" in entry and all(
        alternative.get("token") != entry["token"] for alternative in top
    ):
        top.append({"token": entry["token"], "logprob": entry["logprob"]})
    return top


_LEADING_LETTER = re.compile(
    r"^[\s*_\"'`(\[]*(?:(?i:option|answer|choice)\s*:?\s*\(?)?([AB])"
    r"(?=\s*$|[)\].:,;*_'\"`]|\s*\n)"
)
_PARENTHESISED = re.compile(r"\(([AB])\)")
_PHRASED = re.compile(
    r"(?i:answer is|answer:|option|choice|choose|pick|prefer)\s*:?\s*\(?([AB])(?![A-Za-z0-9])"
)


def parse_choice(text: str) -> str | None:
    """The option letter a judge answered in words: "A", "(B)", "**A**", "The answer is (B)".

    None when no letter is found or the answer names both (ambiguous)."""
    match = _LEADING_LETTER.match(text)
    if match:
        return match.group(1)
    bracketed = set(_PARENTHESISED.findall(text))
    if len(bracketed) == 1:
        return bracketed.pop()
    phrased = set(_PHRASED.findall(text))
    if len(phrased) == 1:
        return phrased.pop()
    return None


# -- modes -----------------------------------------------------------------------------------------


def resolve_mode(
    mode: Mode, backend_class: type[Backend], backend_name: str = "default"
) -> tuple[Literal["logprobs", "text"], LabelSource]:
    """The mode used with a backend of ``backend_class`` and where its labels come from.

    Raises ConfigError when ``mode`` asks for logprobs from a backend that returns none.
    """
    if mode in ("auto", "logprobs") and backend_class.supports_logprobs:
        if backend_class.supports_raw_prompt:
            return "logprobs", "raw_prompt_logprobs"
        return "logprobs", "chat_logprobs"
    if mode == "logprobs":
        raise ConfigError(
            f"backend {backend_name!r} ({backend_class.kind}) does not return logprobs, so "
            "`mode: logprobs` cannot read soft labels; use `mode: text` (hard labels) or `auto`, "
            "or an OpenAI-compatible, llama.cpp or transformers backend",
            key="mode",
        )
    return "text", "text"


@dataclass(frozen=True, slots=True)
class OrderLabel:
    """The judge's verdict on one order of the two candidates."""

    shown: tuple[str, str]  # which candidate was (A) and which (B)
    p_a: float
    p_b: float
    label_source: LabelSource
    bounded: bool
    answer: str
    model: str

    @property
    def p_first(self) -> float:
        """The probability that the first candidate is the better one."""
        return self.p_a if self.shown[0] == FIRST else self.p_b

    def record(self) -> dict[str, Any]:
        return {
            "shown": list(self.shown),
            "p_a": self.p_a,
            "p_b": self.p_b,
            "label_source": self.label_source,
            "bounded": self.bounded,
            "answer": self.answer,
        }

