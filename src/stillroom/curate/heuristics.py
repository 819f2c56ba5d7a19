"""``heuristic_filter``: cheap quality checks on prompts and completions, each with its own reason.

    - type: heuristic_filter
      empty: true               # empty or placeholder answers ("", "N/A", "TODO", "[insert ...]")
      unfinished: true          # the answer stopped at the token limit (finish_reason "length")
      length:                   # bounds per text; null: no bound
        unit: words             # or chars
        min_prompt: 1
        max_prompt: null
        min_completion: 1
        max_completion: null
      refusal:                  # refusal and boilerplate phrases (a built-in list) + yours
        phrases: ["I'd rather not"]
      repetition: true          # repeated lines and word n-grams (Gopher's thresholds)
      language: [en]            # off by default; the languages a text may be in
      drop: true                # false: keep every row, only record what failed

Every check can be switched off (``refusal: false``) or tuned (a mapping of its options);
``true`` means its defaults. From Python: :func:`heuristic_filter` runs the stage alone and
returns the run with ``summary["heuristic_filter"]``; :func:`heuristic_stage` builds the stage
from keyword options (a bad one is a ConfigError naming it, for a CLI); :func:`heuristic_outcome`
and :func:`outcome_line` say what it did in a finished run; :meth:`HeuristicFilter.findings`
checks one row without a pipeline.

What is checked
---------------
The *prompt* is ``prompt_column`` (default ``auto``: ``prompt``, else ``instruction``, else the
user turns of ``messages``); the *completion* is ``completion_column`` (default ``auto``:
``completion``, ``response`` or ``output``, else the last turn of ``messages`` when it is the
assistant's, else ``chosen``, text or conversational). A named column may hold a list of texts
(``completions``): each is checked and named, ``completions[2]``. A row without a completion
gets only the prompt checks (a prompt-only data set); a row with neither fails (``failed/``).

The checks, in the order that decides the drop reason (a row failing several is dropped for the
first; its lineage lists all of them):

1. ``empty`` (completion): nothing but whitespace; a whole answer that is a placeholder ("N/A",
   "TODO", "TBD", "...", "null", "no answer", plus ``placeholders`` of your own; compared without
   case, surrounding quotes or a final period); or an unfilled placeholder anywhere in it
   ("[insert name]", "[your answer here]", "lorem ipsum"). A template the user asked for may hold
   such brackets on purpose; switch the check off for such data.
2. ``unfinished``: a finish reason in ``finish_reasons`` (default ``length``: the model hit its
   token limit, so the answer is cut off). Looked up where stillroom's stages record it: a
   ``finish_reason`` column, ``completion_sources[i].finish_reason`` (``completions``), and any
   ``*finish_reason`` / ``*finish_reasons`` key of a lineage entry in ``metadata`` (``complete``
   writes ``finish_reasons``, ``magpie`` ``response_finish_reason``). A row that records none
   passes. One truncated sample of several drops the row (its pairs would use it).
3. ``length``: each text's word count (whitespace-separated) or character count against
   ``min_prompt``/``max_prompt``/``min_completion``/``max_completion``; bounds are inclusive.
   The defaults only require one word on each side that is present.
4. ``refusal`` (``columns``, default the completion): a phrase of the built-in refusal list ("I
   can't help with", "I must decline", ...) or boilerplate list ("As an AI language model", "my
   knowledge cutoff", ...), or of ``phrases``, anywhere in the text; compared without case, with
   curly quotes made straight and whitespace collapsed, and not inside a longer word.
   ``builtin: false`` uses only yours.
5. ``repetition`` (``columns``, default the completion), on texts of at least ``min_words``
   words (default 50: Gopher removes documents under 50 words before these rules apply, so its
   thresholds were set on such texts). Gopher's repetition rules (Rae et al. 2021, "Scaling
   Language Models: Methods, Analysis & Insights from Training Gopher", Table A1; the same
   defaults as datatrove's ``GopherRepetitionFilter``), measured our way:

   * ``duplicate_lines`` (0.30): the share of non-blank lines (lines with a letter or digit; a
     lone ``}`` is no line here, so code is not punished for its brackets) that repeat an
     earlier line;
   * ``top_ngrams`` ({2: 0.20, 3: 0.18, 4: 0.16}): the share of the text's characters (word
     characters, whitespace not counted) inside occurrences of its most frequent word n-gram
     (one that occurs at least twice), words compared without case;
   * ``duplicate_ngrams`` ({5: 0.15, 6: 0.14, ..., 10: 0.10}): the share of characters inside
     word n-grams that already occurred earlier in the text: what a model stuck in a loop
     writes.

   A text fails when a share is *above* its limit. Overlapping occurrences count their words
   once, so a share is never above 1.
6. ``language`` (off unless ``languages`` is given; ``columns`` default both sides): py3langid
   (a Naive Bayes identifier over byte n-grams whose model ships in the wheel; Lui & Baldwin
   2012, langid.py), with probabilities normalized. Fenced and inline code and URLs are removed
   first; a text with fewer than ``min_letters`` letters left (default 20) is not judged. A text
   fails when its most likely language is not one of ``languages`` *and* that language's
   probability is at least ``min_confidence`` (default 0.5): an unsure guess (code, formulas,
   names) never drops a row, nor does py3langid's ``zxx`` (no linguistic content). Codes are
   py3langid's: ISO 639-1 where there is one (``en``, ``de``, ``zh``), else ISO 639-3
   (``yue``); 140 in all.

Output
------
* Kept rows: unchanged, with lineage in ``metadata[<stage name>]``: ``method:
  heuristic_filter``, ``checks`` (those switched on), ``failed`` (empty), and
  ``detected_languages`` (``{column, language, confidence}`` per judged text) when the language
  check is on.
* Dropped rows (``dropped/``): ``drop_reason`` is the first failure's reason, prefixed with its
  check, e.g. ``empty: the completion is a placeholder ('N/A')``, ``unfinished: finish_reason is
  'length' (metadata.complete.finish_reasons[0])``, ``length: the completion has 3 words, fewer
  than 5``, ``refusal: the completion contains 'as an ai language model' (boilerplate)``,
  ``repetition: repeated 5-grams cover 41% of the completion's characters (max 15%)``,
  ``language: the completion reads as de (0.98), not en``. The row gets ``heuristic_failures``: every failure,
  in check order, each ``{check, column, reason}`` (also in its lineage as ``failed``).
* ``drop: false`` keeps every row and writes ``heuristic_failures`` on each (empty when it
  passed): a dry run to tune the settings on.
* The run's report: rows failing some check and, per check, the rows failing it (first or not).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from stillroom.errors import ConfigError
from stillroom.generate.lineage import row_id, seed_id_of, with_lineage
from stillroom.pipeline.stage import (
    Dropped,
    Row,
    RowFailure,
    RowStage,
    StageContext,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.pipeline.pipeline import RunResult

Side = Literal["prompt", "completion"]
CHECK_ORDER = ("empty", "unfinished", "length", "refusal", "repetition", "language")

# -- built-in lists (our own wording) -----------------------------------------------------------

# A whole answer that is one of these holds nothing (compared lowercased, quotes and a final
# period removed).
PLACEHOLDERS = (
    "n/a", "na", "todo", "tbd", "tba", "...", "\u2026", "null", "placeholder", "(empty)",
    "<empty>", "[empty]", "no answer", "answer here", "your answer here", "insert answer here",
    "-", "--", "?",
)
# An unfilled placeholder anywhere in an answer.
_PLACEHOLDER_SPAN = re.compile(
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


def _plain(text: str) -> str:
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


def _switch(value: Any) -> Any:
    """``true`` -> the check's defaults, ``false``/null -> off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


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


# -- findings --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check on one text of a row."""

    check: str  # one of CHECK_ORDER
    column: str  # "completion", "messages[3]", "completions[1]", "metadata.complete..."
    reason: str  # the drop reason, prefixed with the check

    def record(self) -> dict[str, str]:
        return {"check": self.check, "column": self.column, "reason": self.reason}


def _side_name(column: str, side: Side) -> str:
    """How a text is named in a reason: "the completion", "the prompt (messages[0])"."""
    return f"the {side}" if column == side else f"the {side} ({column})"


def _finish_reasons(row: Row) -> list[tuple[str, str]]:
    """Every (where, finish reason) the row records."""
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


def _message_texts(column: str, messages: list[Any], side: Side) -> list[tuple[str, str]]:
    """Prompt: the user turns; completion: the last turn, when it is the assistant's."""
    turns = [
        (i, m) for i, m in enumerate(messages) if isinstance(m, dict) and "content" in m
    ]
    if side == "prompt":
        picked = [(i, m) for i, m in turns if m.get("role") == "user"]
    else:
        picked = turns[-1:] if turns and turns[-1][1].get("role") == "assistant" else []
    out = []
    for i, message in picked:
        content = message["content"]
        if isinstance(content, list):  # content parts
            content = "\n".join(
                part.get("text", "") for part in content if isinstance(part, dict)
            )
        if isinstance(content, str):
            out.append((f"{column}[{i}]", content))
    return out


def _cell_texts(column: str, value: Any, side: Side) -> list[tuple[str, str]] | None:
    """The texts of one cell, named; None when the cell holds none."""
    if isinstance(value, str):
        return [(column, value)]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [(f"{column}[{i}]", item) for i, item in enumerate(value)]
        if all(isinstance(item, dict) for item in value):
            if column == "messages" or side == "prompt":
                texts = _message_texts(column, value, side)
            else:  # a conversational `chosen`: its assistant turns
                texts = [
                    (f"{column}[{i}]", item["content"])
                    for i, item in enumerate(value)
                    if item.get("role") == "assistant" and isinstance(item.get("content"), str)
                ]
            return texts or None
    return None


_AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "instruction", "messages"),
    "completion": ("completion", "response", "output", "messages", "chosen"),
}


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class HeuristicFilter(RowStage):
    type: Literal["heuristic_filter"] = "heuristic_filter"
    prompt_column: str = Field(
        default="auto", description="auto: prompt, instruction, or the user turns of messages."
    )
    completion_column: str = Field(
        default="auto",
        description="auto: completion, response, output, the last assistant turn of messages, "
        "or chosen.",
    )
    empty: EmptyCheck | None = Field(default_factory=EmptyCheck)
    unfinished: UnfinishedCheck | None = Field(default_factory=UnfinishedCheck)
    length: LengthCheck | None = Field(default_factory=LengthCheck)
    refusal: RefusalCheck | None = Field(default_factory=RefusalCheck)
    repetition: RepetitionCheck | None = Field(default_factory=RepetitionCheck)
    language: LanguageCheck | None = Field(
        default=None, description="Off unless languages are given, e.g. `language: [en]`."
    )
    drop: bool = Field(default=True, description="false: keep every row, only record failures.")

    @field_validator("empty", "unfinished", "length", "refusal", "repetition", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        return _switch(value)

    @field_validator("language", mode="before")
    @classmethod
    def _languages(cls, value: Any) -> Any:
        if value is True:
            raise ValueError("say which languages, e.g. `language: [en]`")
        if isinstance(value, str):
            return {"languages": [value]}
        if isinstance(value, list):
            return {"languages": value}
        return _switch(value)

    _phrases: re.Pattern[str] | None = PrivateAttr(default=None)
    _phrase_kinds: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _compile(self) -> HeuristicFilter:
        if not self.checks():
            raise ValueError("every check is switched off; switch one on")
        if self.refusal is not None:
            self._phrases, self._phrase_kinds = _phrase_pattern(self.refusal)
        return self

    def checks(self) -> list[str]:
        """The checks switched on, in order."""
        return [name for name in CHECK_ORDER if getattr(self, name) is not None]

    # -- the texts of a row --------------------------------------------------------------------

    def texts(self, row: Row, side: Side) -> list[tuple[str, str]] | None:
        """The named texts of ``side``; None when the row has no such column."""
        chosen = self.prompt_column if side == "prompt" else self.completion_column
        candidates = _AUTO_COLUMNS[side] if chosen == "auto" else (chosen,)
        for column in candidates:
            if column in row and row[column] is not None:
                texts = _cell_texts(column, row[column], side)
                if texts is not None:
                    return texts
        return None

    def check_row(self, row: Row) -> str | None:
        for side, chosen in (("prompt", self.prompt_column), ("completion", self.completion_column)):
            if chosen != "auto" and row.get(chosen) is None:
                return f"the row has no `{chosen}` ({side}_column); it has {sorted(row)}"
        if self.texts(row, "prompt") is None and self.texts(row, "completion") is None:
            return (
                "the row has no prompt or completion to check (looked for "
                f"{', '.join(dict.fromkeys(_AUTO_COLUMNS['prompt'] + _AUTO_COLUMNS['completion']))}"
                f"); it has {sorted(row)}; name them with prompt_column / completion_column"
            )
        return None

    # -- the checks ----------------------------------------------------------------------------

    def findings(self, row: Row) -> tuple[list[Finding], list[dict[str, Any]]]:
        """Every failed check of ``row``, in check order, and the languages detected."""
        prompts = self.texts(row, "prompt") or []
        completions = self.texts(row, "completion") or []
        sides: dict[Side, list[tuple[str, str]]] = {"prompt": prompts, "completion": completions}
        out: list[Finding] = []
        detected: list[dict[str, Any]] = []
        if self.empty is not None:
            out += self._empty(self.empty, completions)
        if self.unfinished is not None:
            out += self._unfinished(self.unfinished, row)
        if self.length is not None:
            out += self._length(self.length, sides)
        if self.refusal is not None:
            out += self._refusal(self.refusal, sides)
        if self.repetition is not None:
            out += self._repetition(self.repetition, sides)
        if self.language is not None:
            out += self._language(self.language, sides, detected)
        return out, detected

    def _empty(self, check: EmptyCheck, texts: list[tuple[str, str]]) -> list[Finding]:
        placeholders = {_plain(p) for p in check.placeholders}
        if check.builtin:
            placeholders.update(PLACEHOLDERS)
        out = []
        for column, text in texts:
            name = _side_name(column, "completion")
            key = _plain(text).strip("\"'`*")
            if not key:
                out.append(Finding("empty", column, f"empty: {name} is empty"))
            elif key in placeholders or key.rstrip(".!") in placeholders:
                out.append(Finding(
                    "empty", column, f"empty: {name} is a placeholder ({text.strip()[:40]!r})"
                ))
            elif check.builtin and (span := _PLACEHOLDER_SPAN.search(text)) is not None:
                out.append(Finding(
                    "empty", column, f"empty: {name} holds a placeholder ({span.group(0)[:40]!r})"
                ))
        return out

    def _unfinished(self, check: UnfinishedCheck, row: Row) -> list[Finding]:
        for where, reason in _finish_reasons(row):
            if reason in check.finish_reasons:
                return [Finding("unfinished", where,
                                f"unfinished: finish_reason is {reason!r} ({where})")]
        return []

    def _length(
        self, check: LengthCheck, sides: dict[Side, list[tuple[str, str]]]
    ) -> list[Finding]:
        out = []
        for side, texts in sides.items():
            low, high = getattr(check, f"min_{side}"), getattr(check, f"max_{side}")
            for column, text in texts:
                size = len(text.split()) if check.unit == "words" else len(text)
                unit = check.unit if size != 1 else check.unit[:-1]
                name = _side_name(column, side)
                if low is not None and size < low:
                    out.append(Finding("length", column,
                                       f"length: {name} has {size:,} {unit}, fewer than {low:,}"))
                elif high is not None and size > high:
                    out.append(Finding("length", column,
                                       f"length: {name} has {size:,} {unit}, more than {high:,}"))
        return out

    def _refusal(
        self, check: RefusalCheck, sides: dict[Side, list[tuple[str, str]]]
    ) -> list[Finding]:
        if self._phrases is None:
            self._phrases, self._phrase_kinds = _phrase_pattern(check)
        pattern, kinds = self._phrases, self._phrase_kinds
        out = []
        for side in check.columns:
            for column, text in sides[side]:
                found = pattern.search(_plain(text))
                if found is not None:
                    phrase = found.group(0)
                    out.append(Finding(
                        "refusal", column,
                        f"refusal: {_side_name(column, side)} contains {phrase!r} "
                        f"({kinds.get(phrase, 'your phrase')})",
                    ))
        return out

    def _repetition(
        self, check: RepetitionCheck, sides: dict[Side, list[tuple[str, str]]]
    ) -> list[Finding]:
        out = []
        for side in check.columns:
            for column, text in sides[side]:
                words = text.split()
                if len(words) < check.min_words:
                    continue
                problem = _repetition_problem(check, text, words)
                if problem is not None:
                    name = _side_name(column, side)
                    out.append(Finding("repetition", column, f"repetition: {problem.format(name=name)}"))
        return out

    def _language(
        self,
        check: LanguageCheck,
        sides: dict[Side, list[tuple[str, str]]],
        detected: list[dict[str, Any]],
    ) -> list[Finding]:
        out = []
        allowed = ", ".join(check.languages)
        for side in check.columns:
            for column, text in sides[side]:
                guess = detect_language(text, check.min_letters)
                if guess is None:
                    continue
                language, confidence = guess
                detected.append(
                    {"column": column, "language": language, "confidence": round(confidence, 4)}
                )
                if (
                    language not in check.languages
                    and language != NO_LANGUAGE
                    and confidence >= check.min_confidence
                ):
                    out.append(Finding(
                        "language", column,
                        f"language: {_side_name(column, side)} reads as {language} "
                        f"({confidence:.2f}), not {allowed}",
                    ))
        return out

    # -- the stage -------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        found, detected = self.findings(row)
        records = [finding.record() for finding in found]
        extra: dict[str, Any] = {"checks": self.checks(), "failed": records}
        if self.language is not None:
            extra["detected_languages"] = detected
        out = with_lineage(
            row,
            ctx.stage_name,
            method="heuristic_filter",
            step=found[0].check if found else "passed",
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=None,
            template=None,
            **extra,
        )
        if not self.drop:
            out["heuristic_failures"] = records
            return out
        if not found:
            return out
        out["heuristic_failures"] = records
        return [Dropped(out, found[0].reason)]

    def summary_columns(self) -> list[str]:
        return ["heuristic_failures"]

    def tally(self, rows: list[Row]) -> dict[str, Any]:
        """Rows failing some check, and rows failing each (a row counts once per check)."""
        failing = 0
        by_check: Counter[str] = Counter()
        for row in rows:
            records = row.get("heuristic_failures") or []
            checks = {r.get("check") for r in records if isinstance(r, dict)}
            if checks:
                failing += 1
            by_check.update(check for check in checks if isinstance(check, str))
        return {
            "rows_failing": failing,
            "by_check": {name: by_check.get(name, 0) for name in self.checks()},
        }

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows failing a check, and per check how many rows fail it (first reason or not)."""
        tally = self.tally(rows)
        figures: dict[str, Any] = {"rows failing a check": tally["rows_failing"]}
        for name, count in tally["by_check"].items():
            figures[f"failing {name}"] = count
        return figures


def _phrase_pattern(check: RefusalCheck) -> tuple[re.Pattern[str], dict[str, str]]:
    """One regex for every phrase (not inside a longer word), and each phrase's kind."""
    phrases = [("your phrase", _plain(p)) for p in check.phrases]
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


def _repetition_problem(check: RepetitionCheck, text: str, words: list[str]) -> str | None:
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


def heuristic_stage(**options: Any) -> HeuristicFilter:
    """A :class:`HeuristicFilter` from keyword options (each check: True, False, a dict of its
    options, or its model); a bad option is a ConfigError naming it (``refusal.phrases``)."""
    try:
        return HeuristicFilter.model_validate(options)
    except ValidationError as validation:
        problem = validation.errors()[0]
        key = ".".join(str(part) for part in problem["loc"]) or None
        raise ConfigError(str(problem["msg"]).removeprefix("Value error, "), key=key) from None


def heuristic_outcome(
    out: str | os.PathLike[str], stage: HeuristicFilter, stage_name: str = "heuristic_filter"
) -> dict[str, Any]:
    """What the stage did in the run written to ``out``: ``rows_checked`` (rows in ``data/`` plus
    the rows this stage dropped), ``rows_dropped``, ``rows_failing`` and ``by_check``."""
    from stillroom.data.output import OutputFolder

    folder = OutputFolder(Path(out))
    kept = folder.read_columns("data", ["heuristic_failures"])
    dropped = [
        row for row in folder.read_columns("dropped", ["stage", "heuristic_failures"])
        if row.get("stage") == stage_name
    ]
    return {
        "rows_checked": len(kept) + len(dropped),
        "rows_dropped": len(dropped),
        **stage.tally(kept + dropped),
    }


def outcome_line(outcome: dict[str, Any]) -> str:
    """One line for the terminal: "heuristics: 12 of 400 rows dropped (empty 3, refusal 9)"."""
    counts = ", ".join(f"{name} {count:,}" for name, count in outcome["by_check"].items() if count)
    verb = "dropped" if outcome["rows_dropped"] or not outcome["rows_failing"] else "failing"
    shown = outcome["rows_dropped"] if verb == "dropped" else outcome["rows_failing"]
    line = f"heuristics: {shown:,} of {outcome['rows_checked']:,} rows {verb}"
    return f"{line} ({counts})" if counts else line


def heuristic_filter(
    input: str | os.PathLike[str] | list[Row],
    out: str | os.PathLike[str],
    *,
    prompt_column: str = "auto",
    completion_column: str = "auto",
    empty: EmptyCheck | dict[str, Any] | bool = True,
    unfinished: UnfinishedCheck | dict[str, Any] | bool = True,
    length: LengthCheck | dict[str, Any] | bool = True,
    refusal: RefusalCheck | dict[str, Any] | bool = True,
    repetition: RepetitionCheck | dict[str, Any] | bool = True,
    language: LanguageCheck | dict[str, Any] | list[str] | bool | None = None,
    drop: bool = True,
    **run_options: Any,
) -> RunResult:
    """Run the heuristic checks over ``input``: a pipeline of one ``heuristic_filter`` stage.

    Each check takes ``True`` (its defaults), ``False`` (off), or its options (a dict or the
    check's model). Returns the RunResult; its ``summary["heuristic_filter"]`` is
    :func:`heuristic_outcome`. Bad options raise ConfigError before anything is read.
    """
    from stillroom.pipeline.pipeline import Pipeline

    stage = heuristic_stage(
        prompt_column=prompt_column,
        completion_column=completion_column,
        empty=empty,
        unfinished=unfinished,
        length=length,
        refusal=refusal,
        repetition=repetition,
        language=language,
        drop=drop,
    )
    pipeline = Pipeline([stage], input=input, name="stillroom heuristic_filter")
    result = pipeline.run(out, **run_options)
    summary = dict(getattr(result, "summary", None) or {})
    summary["heuristic_filter"] = heuristic_outcome(result.out, stage)
    result.summary = summary
    return result
