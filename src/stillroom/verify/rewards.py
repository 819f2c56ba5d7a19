"""stillroom's verifiers as reward functions for TRL's GRPOTrainer (and any trainer that calls a
reward the same way).

TRL 1.16 calls each reward function as ``f(prompts=..., completions=..., completion_ids=...,
**columns)``: one entry per sampled completion, and every other dataset column as a list aligned
with them (the row's ``answer``, ``tests``, ... repeated for each of its generations), plus
``trainer_state``, ``log_extra`` and ``log_metric``. A completion is text for a text prompt, or a
one-message list ``[{"role": "assistant", "content": ...}]`` for a conversational one.

:class:`VerifierReward` turns one registered verifier (``math``, ``code``, ``exact``, ...) into
such a function. Each completion becomes the row the verifier reads: the dataset's columns, with
the completion's *final answer* in the answer column. The reward is the verdict's ``reward``
(1.0 passed, 0.0 not). So the code that grades an evaluation, keeps a rejection sample and
rewards an RL step is one code: a fix to a verifier is a fix to all three, and the hardening the
verifiers carry against hostile answers (the code verifier's sandbox and its outside check of
every assert, math-verify's bounded parsing) is what stands between the policy and a hacked
reward.

What an answer is: the completion's inline ``<think> ... </think>`` trace is cut off first, so a
right number in the trace earns nothing, and a trace that never ends holds no answer and gets 0;
the answer left is graded by :meth:`stillroom.verify.base.Verifier.verify`, as every verdict is.
Here the cut is stricter than for evaluation, since a policy *learns* whatever slips through:

* the tags are matched without regard to case or to white space inside them (``<THINK>``,
  ``< think >``, ``</ think>``): a policy that drifts to another spelling must not get its trace
  graded as its answer;
* ``opened`` (``think_opened`` of ``stillroom train grpo``) says the completion starts *inside*
  the trace: then a completion without the end tag never left its trace and earns 0, instead of
  having its unfinished thought graded. By default (``None``, "auto") it is read from the
  prompt TRL sampled the completion from: a text prompt that ends with the start tag (after
  white space), as the R1-distill and QwQ templates render it, opened the trace. The dataset's own ``completion``
(a teacher's answer), ``reasoning`` and ``messages`` columns are never passed to the verifier:
the policy's completion must not be graded by, or fall back to, the teacher's.

:class:`RowVerifierReward` reads the verifier from each row instead (the ``verifier`` and
``verifier_options`` columns of ``stillroom export rl``), so an exported file trains as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stillroom.data.rows import Row
from stillroom.errors import ConfigError
from stillroom.llm.reasoning import THINK_END, THINK_START, final_answer
from stillroom.verify.base import Verdict, Verifier, VerifierInputError

# What TRL adds to the dataset's columns when it calls a reward function.
TRL_KEYWORDS = frozenset({"trainer_state", "log_extra", "log_metric", "environments",
                          "completion_ids"})
# Dataset columns that hold someone else's answer or trace: never part of the graded row.
NOT_GRADED = ("completion", "reasoning", "messages")
# Columns a verifier may not read its reference from: the answer column (``completion``, where
# the policy's answer is put: the answer would be checked against itself), the never-graded
# ones (absent from the graded row), and ``prompt`` (TRL keeps it from the reward's columns).
NOT_REFERENCE = frozenset({*NOT_GRADED, "prompt"})
VERIFIER_COLUMN = "verifier"
OPTIONS_COLUMN = "verifier_options"


class RewardSpec(BaseModel):
    """One reward: a registered verifier with its options, and its weight in the sum."""

    model_config = ConfigDict(extra="forbid")

    verifier: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    # Finite and not negative: TRL sums weight x reward, so NaN or inf poisons every advantage,
    # and a negative weight would reward failing the check.
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    name: str | None = Field(default=None, min_length=1)

    @field_validator("verifier")
    @classmethod
    def _known(cls, value: str) -> str:
        from stillroom.verify.base import verifiers

        if value not in verifiers.items():
            raise ValueError(f"unknown verifier {value!r}; known: {', '.join(sorted(verifiers.items()))}")
        return value

    def label(self) -> str:
        return self.name or self.verifier


def build(spec: RewardSpec) -> VerifierReward:
    """The reward function of ``spec``; ConfigError names a bad option, and an option that
    points the verifier's reference at a column it may not read (see :data:`NOT_REFERENCE`)."""
    from stillroom.verify.stage import build_verifier

    verifier = build_verifier(spec.verifier, "completion", dict(spec.options))
    for column in verifier.required_columns:
        if column in NOT_REFERENCE:
            option = next((key for key, value in spec.options.items() if value == column), None)
            raise ConfigError(
                f"the {spec.verifier} verifier may not read its reference from `{column}`: "
                + ("that is where the policy's answer goes, so every answer would match itself"
                   if column == verifier.answer_column else
                   "that column is never passed to a reward (it holds a prompt, or someone "
                   "else's answer or trace)") + "; name the column that holds the reference",
                key=option or "options")
    return VerifierReward(verifier, spec.label())


class ThinkTags:
    """How the reward finds a completion's inline trace: the tags, matched without regard to
    case or to white space inside them, and whether the prompt opened the trace.

    Written here rather than with :class:`stillroom.llm.reasoning.ThinkTags` because that one
    splits what a configured backend returns, exactly as configured; a reward faces a policy
    that may drift to any spelling of the tags, and is the only place that must not be fooled.
    """

    def __init__(self, start: str = THINK_START, end: str = THINK_END,
                 opened: bool | None = None):
        if not start or not end or start == end:
            raise ConfigError("the think tags must be two different non-empty texts",
                              key="think_start")
        self.start, self.end, self.opened = start, end, opened  # opened None: auto
        self._start = re.compile(r"\s*" + _tag_pattern(start), re.IGNORECASE)
        self._end = re.compile(_tag_pattern(end), re.IGNORECASE)
        self._opens = re.compile(_tag_pattern(start) + r"\s*\Z", re.IGNORECASE)

    def ends_prompt(self, prompt: Any) -> bool:
        """Whether ``prompt`` (a text prompt) ends with the start tag: the template opened the
        trace. A conversational prompt is rendered by the trainer, out of sight: False."""
        return isinstance(prompt, str) and self._opens.search(prompt) is not None

    def answer(self, text: str, prompt: Any = None) -> tuple[str | None, str]:
        """The final answer of ``text`` (sampled after ``prompt``) and, when there is none, why:
        :func:`stillroom.llm.reasoning.final_answer` on the text with its tags made canonical."""
        opened = self.ends_prompt(prompt) if self.opened is None else self.opened
        answer: str | None = text
        # A second trace right after the first (``<think>a</think><THINK>b</THINK> 42``) is a
        # trace too: cut until the answer no longer begins with a start tag.
        while answer is not None:
            head = self._start.match(answer)
            if not head and not opened:
                return answer, ""
            answer, why = self._cut(answer, head, opened)
            opened = False
        return None, why

    def _cut(self, text: str, head: re.Match[str] | None, opened: bool) -> tuple[str | None, str]:
        if head:
            text = self.start + text[head.end():]
        # Only the tags that decide the cut are rewritten: the answer after them is kept as is.
        tail = self._end.search(text, len(self.start) if head else 0)
        if tail:
            text = text[:tail.start()] + self.end + text[tail.end():]
        return final_answer(text, self.start, self.end, opened=opened)


def _tag_pattern(tag: str) -> str:
    """``<name>`` or ``</name>`` with any white space inside; another tag as written."""
    found = re.fullmatch(r"<\s*(/?)\s*([^<>/\s]+)\s*>", tag)
    if not found:
        return re.escape(tag)
    slash = r"/\s*" if found.group(1) else ""
    return rf"<\s*{slash}{re.escape(found.group(2))}\s*>"


def completion_text(completion: Any) -> str:
    """The text of one completion: TRL's text, or the content of its (last) assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list | tuple) and completion:
        message = completion[-1]
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def rows_of(completions: Sequence[Any], columns: dict[str, Any]) -> list[Row]:
    """One row per completion from TRL's column lists, without the columns never graded."""
    count = len(completions)
    listed = {key: value for key, value in columns.items()
              if key not in TRL_KEYWORDS and key not in NOT_GRADED
              and isinstance(value, list | tuple) and len(value) == count}
    return [{key: value[index] for key, value in listed.items()} for index in range(count)]


class VerifierReward:
    """A verifier as a TRL reward function (see the module docstring).

    ``verdicts`` keeps the last call's verdicts, for a look at why completions failed.
    """

    def __init__(self, verifier: Verifier, name: str | None = None,
                 tags: ThinkTags | None = None):
        self.verifier = verifier
        # TRL names a reward by its __name__ in the logs (rewards/<name>/mean).
        self.__name__ = name or verifier.name
        self.tags = tags or ThinkTags()
        self.verdicts: list[Verdict] = []

    def grade(self, completion: Any, row: Row, prompt: Any = None) -> Verdict:
        # The trace is cut here, with the reward's tolerant tags and `opened`; the answer left
        # is graded by Verifier.verify, as in evaluation and rejection sampling.
        answer, why = self.tags.answer(completion_text(completion), prompt)
        if answer is None:
            return Verdict(False, why, {"reasoning_ended": False})
        try:
            return self.verifier.verify({**row, self.verifier.answer_column: answer})
        except VerifierInputError as error:
            # The reference columns were checked before training (check_rows), so this is the
            # answer's doing (e.g. a type the verifier refuses): no reward, training goes on.
            return Verdict(False, f"cannot be checked: {error}")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **columns: Any) -> list[float]:
        rows = rows_of(completions, columns)
        self.verdicts = [self.grade(c, row, prompt)
                         for c, row, prompt in zip(completions, rows, _prompts(prompts, completions),
                                                   strict=True)]
        log_metric = columns.get("log_metric")
        if callable(log_metric) and self.verdicts:
            unended = sum(v.details.get("reasoning_ended") is False for v in self.verdicts)
            log_metric(f"rewards/{self.__name__}/trace_unended", unended / len(self.verdicts))
        return [verdict.reward for verdict in self.verdicts]

    def problem(self, row: Row) -> tuple[str, str] | None:
        """What makes ``row`` uncheckable (its reference columns), and the column at fault."""
        graded = {key: value for key, value in row.items() if key not in NOT_GRADED}
        problem = self.verifier.check_row({**graded, self.verifier.answer_column: ""})
        if not problem:
            return None
        missing = [c for c in self.verifier.required_columns if row.get(c) is None]
        return problem, missing[0] if missing else self.__name__

    def check_rows(self, rows: Sequence[Row], where: str = "the data") -> None:
        """Every row can be checked (its reference columns are there and well formed):
        ConfigError naming the column when a row lacks it, before any training."""
        for index, row in enumerate(rows):
            found = self.problem(row)
            if found:
                raise ConfigError(f"{where}, {_row_name(index, row)}: {found[0]}", key=found[1])


class RowVerifierReward:
    """The reward named by each row: its ``verifier`` column (a registered verifier) with
    ``verifier_options`` (a JSON object, or its text) as options. Verifiers are built once per
    distinct (name, options)."""

    __name__ = "verifier"

    def __init__(self, tags: ThinkTags | None = None) -> None:
        self._built: dict[tuple[str, str], VerifierReward] = {}
        self.tags = tags or ThinkTags()

    def reward_of(self, name: Any, options: Any) -> VerifierReward:
        if not isinstance(name, str) or not name:
            raise ConfigError("a row's `verifier` column is missing or empty", key=VERIFIER_COLUMN)
        parsed = _options(options)
        key = (name, json.dumps(parsed, sort_keys=True))
        if key not in self._built:
            self._built[key] = build(RewardSpec(verifier=name, options=parsed))
        built = self._built[key]
        built.tags = self.tags  # set late too: the trainer decides `opened` after reading rows
        return built

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **columns: Any) -> list[float]:
        rows = rows_of(completions, columns)
        rewards = []
        for completion, row, prompt in zip(completions, rows, _prompts(prompts, completions),
                                           strict=True):
            reward = self.reward_of(row.get(VERIFIER_COLUMN), row.get(OPTIONS_COLUMN))
            rewards.append(reward.grade(completion, row, prompt).reward)
        return rewards

    def check_rows(self, rows: Sequence[Row], where: str = "the data") -> None:
        for index, row in enumerate(rows):
            try:
                found = self.reward_of(row.get(VERIFIER_COLUMN), row.get(OPTIONS_COLUMN)).problem(row)
            except ConfigError as error:
                raise ConfigError(f"{where}, {_row_name(index, row)}: {error.reason}",
                                  key=error.key) from None
            if found:
                raise ConfigError(f"{where}, {_row_name(index, row)}: {found[0]}", key=found[1])


def _prompts(prompts: Any, completions: Sequence[Any]) -> list[Any]:
    """TRL's prompts, one per completion (None for each when a caller passed none)."""
    if isinstance(prompts, list | tuple) and len(prompts) == len(completions):
        return list(prompts)
    return [None] * len(completions)


def _row_name(index: int, row: Row) -> str:
    return f"row {index} (id {row['id']!r})" if row.get("id") is not None else f"row {index}"


def _options(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ConfigError(f"`{OPTIONS_COLUMN}` is not JSON: {error}", key=OPTIONS_COLUMN) from None
    if not isinstance(value, dict):
        raise ConfigError(f"`{OPTIONS_COLUMN}` must be a JSON object", key=OPTIONS_COLUMN)
    return value


__all__ = [
    "NOT_GRADED",
    "NOT_REFERENCE",
    "OPTIONS_COLUMN",
    "VERIFIER_COLUMN",
    "RewardSpec",
    "RowVerifierReward",
    "ThinkTags",
    "VerifierReward",
    "build",
    "completion_text",
    "rows_of",
]
