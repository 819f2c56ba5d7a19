"""The checks of ``heuristic_filter``: each check's options, the built-in phrase and placeholder
lists, and the text measures the checks apply (language identification, Gopher's repetition
shares).

What each check does, and its defaults, is described in :mod:`stillroom.curate.heuristics`,
whose :class:`~stillroom.curate.heuristics.HeuristicFilter` runs them over a row's texts.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Side = Literal["prompt", "completion"]


# -- built-in lists (our own wording) -----------------------------------------------------------

# A whole answer that is one of these holds nothing (compared lowercased, quotes and a final
# period removed).
PLACEHOLDERS = (
    "n/a", "na", "todo", "tbd", "tba", "...", "\u2026", "null", "placeholder", "(empty)",
    "<empty>", "[empty]", "no answer", "answer here", "your answer here", "insert answer here",
    "-", "--", "?",
)
# An unfilled placeholder anywhere in an answer.
PLACEHOLDER_SPAN = re.compile(
    r"\[\s*(?:insert|your|add|enter|fill in|placeholder|todo)\b[^\]\n]{0,80}\]|lorem ipsum",
    re.IGNORECASE,
)
REFUSAL_PHRASES = (
    "i cannot help with", "i can't help with", "i cannot assist with", "i can't assist with",
    "i'm unable to help", "i am unable to help", "i'm not able to help", "i am not able to help",
    "i cannot fulfill", "i can't fulfill", "i cannot comply", "i can't comply",
    "i won't be able to help", "i must decline", "i'm sorry, but i can't",
    "i'm sorry, but i cannot", "i am sorry, but i cannot", "i cannot answer that",
    "i can't answer that", "i'm not comfortable",
)
BOILERPLATE_PHRASES = (
    "as an ai language model", "as a language model", "as a large language model",
    "as an ai assistant", "as an ai developed by", "i am an ai language model",
    "i'm an ai language model", "my knowledge cutoff", "as of my last knowledge update",
    "as of my last update", "my training data only goes", "i don't have access to real-time",
    "i do not have access to real-time", "i don't have personal opinions",
    "i do not have personal opinions", "i don't have personal experiences",
    "i do not have personal experiences", "i don't have feelings",
)
# py3langid's label for text with no linguistic content (numbers, symbols): never a reason.
NO_LANGUAGE = "zxx"
GOPHER_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
GOPHER_DUPLICATE_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPACE = re.compile(r"\s+")
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|https?://\S+", re.DOTALL)


def plain_text(text: str) -> str:
    """Lowercase, straight quotes, single spaces: how phrases are compared."""
    return _SPACE.sub(" ", text.translate(_QUOTES).lower()).strip()


# -- options ---------------------------------------------------------------------------------------


def _completion_side() -> list[Side]:
    return ["completion"]


def _both_sides() -> list[Side]:
    return ["prompt", "completion"]


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmptyCheck(_Check):
    placeholders: list[str] = Field(
        default_factory=list, description="More whole-answer placeholders (besides the built-in)."
    )
    builtin: bool = Field(default=True, description="Use the built-in placeholders too.")


class UnfinishedCheck(_Check):
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["length"],
        min_length=1,
        description="Finish reasons that mean the answer was cut off.",
    )


class LengthCheck(_Check):
    unit: Literal["words", "chars"] = "words"
    min_prompt: int | None = Field(default=1, ge=0)
    max_prompt: int | None = Field(default=None, ge=1)
    min_completion: int | None = Field(default=1, ge=0)
    max_completion: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthCheck:
        for side in ("prompt", "completion"):
            low, high = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{side} ({low}) is above max_{side} ({high})")
        return self


class RefusalCheck(_Check):
    phrases: list[str] = Field(default_factory=list, description="More phrases to drop.")
    builtin: bool = Field(default=True, description="Use the built-in phrase lists too.")
    columns: list[Side] = Field(default_factory=_completion_side, min_length=1)

    @field_validator("phrases")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        if any(not phrase.strip() for phrase in value):
            raise ValueError("a phrase must not be empty")
        return value

    @model_validator(mode="after")
    def _something(self) -> RefusalCheck:
        if not self.builtin and not self.phrases:
            raise ValueError("builtin: false needs phrases of your own (or refusal: false)")
        return self


class RepetitionCheck(_Check):
    columns: list[Side] = Field(default_factory=_completion_side, min_length=1)
    min_words: int = Field(default=50, ge=1, description="Shorter texts are not measured.")
    duplicate_lines: float | None = Field(default=0.30, gt=0, le=1)
    top_ngrams: dict[int, float] = Field(default_factory=lambda: dict(GOPHER_TOP_NGRAMS))
    duplicate_ngrams: dict[int, float] = Field(
        default_factory=lambda: dict(GOPHER_DUPLICATE_NGRAMS)
    )

    @field_validator("top_ngrams", "duplicate_ngrams")
    @classmethod
    def _limits(cls, value: dict[int, float]) -> dict[int, float]:
        for n, limit in value.items():
            if not 1 <= n <= 20:
                raise ValueError(f"n-gram length {n} must be 1 to 20")
            if not 0 < limit <= 1:
                raise ValueError(f"the limit for {n}-grams must be above 0 and at most 1")
        return dict(sorted(value.items()))


class LanguageCheck(_Check):
    languages: list[str] = Field(min_length=1, description="Language codes a text may be in (en).")
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    min_letters: int = Field(default=20, ge=1)
    columns: list[Side] = Field(default_factory=_both_sides, min_length=1)

    @field_validator("languages")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        codes = [code.strip().lower() for code in value]
        known = set(language_identifier().labels)
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise ValueError(
                f"unknown language code(s) {unknown}; py3langid knows {', '.join(sorted(known))}"
            )
        return codes


# -- language identification -------------------------------------------------------------------

_identifier: Any = None
_identifier_lock = threading.Lock()


def language_identifier() -> Any:
    """py3langid's identifier with normalized probabilities, loaded once (about a second)."""
    global _identifier
    with _identifier_lock:
        if _identifier is None:
            try:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier
            except ImportError:
                raise ValueError(
                    "the language check needs py3langid: pip install py3langid"
                ) from None
            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def detect_language(text: str, min_letters: int = 20) -> tuple[str, float] | None:
    """The most likely language of ``text`` and its probability; None when too little text is
    left once code and URLs are removed."""
    plain = _CODE.sub(" ", text)
    if sum(char.isalpha() for char in plain) < min_letters:
        return None
    language, confidence = language_identifier().classify(plain)
    return str(language), float(confidence)


# -- the measures ----------------------------------------------------------------------------------


def duplicate_line_share(text: str) -> tuple[int, int]:
    """(lines that repeat an earlier one, lines): lines with a letter or digit only."""
    seen: set[str] = set()
    lines = repeats = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not any(char.isalnum() for char in line):
            continue
        lines += 1
        if line in seen:
            repeats += 1
        else:
            seen.add(line)
    return repeats, lines


def _covered_chars(lengths: list[int], starts: list[int], n: int) -> int:
    covered = [False] * len(lengths)
    for start in starts:
        for position in range(start, start + n):
            covered[position] = True
    return sum(length for length, hit in zip(lengths, covered, strict=True) if hit)


def top_ngram_share(words: list[str], n: int) -> tuple[float, str]:
    """The share of word characters inside occurrences of the most frequent n-gram (one seen at
    least twice), and that n-gram; (0, "") when no n-gram repeats."""
    lowered = [word.lower() for word in words]
    grams = list(zip(*(lowered[k:] for k in range(n)), strict=False))
    if not grams:
        return 0.0, ""
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0, ""
    lengths = [len(word) for word in words]
    starts = [i for i, gram in enumerate(grams) if gram == top]
    return _covered_chars(lengths, starts, n) / max(1, sum(lengths)), " ".join(top)


def duplicate_ngram_share(words: list[str], n: int) -> float:
    """The share of word characters inside n-grams that already occurred earlier."""
    lowered = [word.lower() for word in words]
    seen: set[tuple[str, ...]] = set()
    starts = []
    for i, gram in enumerate(zip(*(lowered[k:] for k in range(n)), strict=False)):
        if gram in seen:
            starts.append(i)
        else:
            seen.add(gram)
    if not starts:
        return 0.0
    lengths = [len(word) for word in words]
    return _covered_chars(lengths, starts, n) / max(1, sum(lengths))


# -- the refusal and repetition tests --------------------------------------------------------------


def phrase_pattern(check: RefusalCheck) -> tuple[re.Pattern[str], dict[str, str]]:
    """One regex for every phrase (not inside a longer word), and each phrase's kind."""
    phrases = [("your phrase", plain_text(p)) for p in check.phrases]
    if check.builtin:
        phrases += [("refusal", p) for p in REFUSAL_PHRASES]
        phrases += [("boilerplate", p) for p in BOILERPLATE_PHRASES]
    kinds: dict[str, str] = {}
    for kind, phrase in phrases:
        kinds.setdefault(phrase, kind)
    # Longest first: the reason names the most specific phrase that matched.
    ordered = sorted(kinds, key=len, reverse=True)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)")
    return pattern, kinds


def repetition_problem(check: RepetitionCheck, text: str, words: list[str]) -> str | None:
    """What is too repetitive about ``text`` (with ``{name}`` to fill in), or None."""
    if check.duplicate_lines is not None:
        repeats, lines = duplicate_line_share(text)
        if lines and repeats / lines > check.duplicate_lines:
            return (
                f"{repeats} of {lines} lines of {{name}} repeat an earlier line "
                f"({repeats / lines:.0%}, max {check.duplicate_lines:.0%})"
            )
    for n, limit in check.top_ngrams.items():
        share, gram = top_ngram_share(words, n)
        if share > limit:
            shown = gram if len(gram) <= 40 else gram[:37] + "..."
            return (
                f"the {n}-gram {shown!r} covers {share:.0%} of {{name}}'s characters "
                f"(max {limit:.0%})"
            )
    for n, limit in check.duplicate_ngrams.items():
        share = duplicate_ngram_share(words, n)
        if share > limit:
            return f"repeated {n}-grams cover {share:.0%} of {{name}}'s characters (max {limit:.0%})"
    return None
