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
``true`` means its defaults. From Python: :func:`stillroom.api.heuristic_filter` runs the stage
alone; what it did is in the run's ``summary["stage_results"]`` (:meth:`HeuristicFilter.summarize`,
also in the card); :meth:`HeuristicFilter.findings` checks one row without a pipeline. Each
check's options, the built-in lists and the text measures are in
:mod:`~stillroom.curate.heuristic_checks`.

What is checked
---------------
The *prompt* is ``prompt_column`` (default ``auto``: ``prompt``, else ``instruction``, else the
user turns of ``messages``); the *completion* is ``completion_column`` (default ``auto``:
``completion``, ``response`` or ``output``, else the last turn of ``messages`` when it is the
assistant's, else ``chosen``, text or conversational). An assistant turn's tool calls are part
of its text (``<tool_call>`` blocks after its content), so a turn that only calls a tool is
not an empty answer. A named column may hold a list of texts
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
* The run's report (``summarize``): rows checked, dropped and failing some check and, per
  check, the rows failing it (first or not).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from stillroom.curate.heuristic_checks import (
    NO_LANGUAGE,
    PLACEHOLDER_SPAN,
    PLACEHOLDERS,
    EmptyCheck,
    LanguageCheck,
    LengthCheck,
    RefusalCheck,
    RepetitionCheck,
    Side,
    UnfinishedCheck,
    detect_language,
    phrase_pattern,
    plain_text,
    repetition_problem,
)
from stillroom.data.rows import (
    answer_turn,
    finish_reasons,
    row_id,
    seed_id_of,
    turn_text,
    turn_texts,
    with_lineage,
)
from stillroom.pipeline.stage import (
    Dropped,
    Row,
    RowFailure,
    RowStage,
    StageContext,
    register_stage,
)

CHECK_ORDER = ("empty", "unfinished", "length", "refusal", "repetition", "language")

# -- options (each check's own are in heuristic_checks) --------------------------------------------


def _switch(value: Any) -> Any:
    """``true`` -> the check's defaults, ``false``/null -> off."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


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


def _message_texts(column: str, messages: list[Any], side: Side) -> list[tuple[str, str]]:
    """Prompt: the user turns; completion: the last turn, when it is the assistant's."""
    if side == "prompt":
        return [(f"{column}[{i}]", text) for i, text in turn_texts(messages, ("user",))]
    at = answer_turn(messages)
    # A turn that only calls a tool is its calls, not an empty answer (turn_text).
    text = None if at is None else turn_text(messages[at])
    return [] if text is None else [(f"{column}[{at}]", text)]


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
                    (f"{column}[{i}]", text) for i, text in turn_texts(value, ("assistant",))
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
            self._phrases, self._phrase_kinds = phrase_pattern(self.refusal)
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
        placeholders = {plain_text(p) for p in check.placeholders}
        if check.builtin:
            placeholders.update(PLACEHOLDERS)
        out = []
        for column, text in texts:
            name = _side_name(column, "completion")
            key = plain_text(text).strip("\"'`*")
            if not key:
                out.append(Finding("empty", column, f"empty: {name} is empty"))
            elif key in placeholders or key.rstrip(".!") in placeholders:
                out.append(Finding(
                    "empty", column, f"empty: {name} is a placeholder ({text.strip()[:40]!r})"
                ))
            elif check.builtin and (span := PLACEHOLDER_SPAN.search(text)) is not None:
                out.append(Finding(
                    "empty", column, f"empty: {name} holds a placeholder ({span.group(0)[:40]!r})"
                ))
        return out

    def _unfinished(self, check: UnfinishedCheck, row: Row) -> list[Finding]:
        for where, reason in finish_reasons(row):
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
            self._phrases, self._phrase_kinds = phrase_pattern(check)
        pattern, kinds = self._phrases, self._phrase_kinds
        out = []
        for side in check.columns:
            for column, text in sides[side]:
                found = pattern.search(plain_text(text))
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
                problem = repetition_problem(check, text, words)
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
        # drop_reason tells a row in data/ (none) from one in dropped/.
        return ["heuristic_failures", "drop_reason"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows checked (those in ``data/`` and those this stage dropped), rows dropped, rows
        failing some check, and per check the rows failing it (a row counts once per check)."""
        checked = dropped = failing = 0
        by_check: Counter[str] = Counter()
        for row in rows:
            records = row.get("heuristic_failures") or []
            in_data = row.get("drop_reason") is None
            # Only this stage writes failures on a row it drops; a row a later stage dropped
            # after it passed here has none.
            mine = self.drop and bool(records) and not in_data
            if not (in_data or mine):
                continue
            checked += 1
            dropped += mine
            checks = {r.get("check") for r in records if isinstance(r, dict)}
            failing += bool(checks)
            by_check.update(check for check in checks if isinstance(check, str))
        figures: dict[str, Any] = {
            "rows checked": checked, "rows dropped": dropped, "rows failing a check": failing,
        }
        for name in self.checks():
            figures[f"failing {name}"] = by_check.get(name, 0)
        return figures

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """"heuristics: 12 of 400 rows dropped (empty 3, refusal 9)" ("failing" with drop off)."""
        if "rows checked" not in figures:
            return None
        counts = ", ".join(
            f"{name} {figures[f'failing {name}']:,}"
            for name in self.checks() if figures.get(f"failing {name}")
        )
        dropped, failing = figures["rows dropped"], figures["rows failing a check"]
        verb = "dropped" if dropped or not failing else "failing"
        line = f"heuristics: {dropped if verb == 'dropped' else failing:,} of "
        line += f"{figures['rows checked']:,} rows {verb}"
        return f"{line} ({counts})" if counts else line
