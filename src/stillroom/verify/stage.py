"""``verify``: a verifier's verdict on every row, in ``passed`` and ``reason``.

    - type: verify
      kind: math               # a registered verifier (`stillroom verify --help` lists them)
      answer_column: completion
      options: {timeout_seconds: 5}
      drop_failed: false       # true: rows that fail go to dropped/ with their reason
      conversation: last_turn  # a `messages` row: check its last assistant turn, or `whole`:
                               # the transcript of every turn (a regex or length over it all)

Each row gets ``passed`` (bool), ``reason`` (text), ``verify_details`` (what the verifier
extracted or measured, when it says) and ``metadata[<stage name>] = {kind, passed, reason}``.
A verdict is not a generation, so no lineage is added and no row id changes. The verdict is on
the final answer: a ``<think>...</think>`` trace written inline before it is cut off first (the
row keeps its text as it was), a trace that never ended fails with that reason, and a
``reasoning`` column is never read (see :mod:`stillroom.verify.base`). A row the verifier
cannot check (no reference answer, malformed tests) is named, with its file and line, before
anything runs when this is the first stage, and goes to ``failed/`` when it comes from an earlier
stage.

Conversations: with ``conversation: last_turn`` (the default) a ``messages`` row's answer is its
last assistant turn, as for any row; an assistant turn's tool calls are part of its text
(``<tool_call>`` blocks after its content, :func:`stillroom.data.rows.answer_turn_text`), so a
turn that only calls a tool is checked as its calls, not as an empty answer. With ``whole`` the
verifier reads the whole conversation as one transcript (``Role: text`` paragraphs, tool calls
and ``Tool (<name>): result`` turns included; :func:`stillroom.data.rows.conversation_answer`),
with inline reasoning traces cut from the assistant turns. A row that is no conversation (a text
``prompt``) is checked the same either way.

Verifiers are synchronous and may be CPU-heavy (sympy, a sandboxed process), so each runs in a
worker thread: the event loop keeps serving the other rows.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from stillroom.data.rows import (
    CONVERSATION_OPTION,
    ConversationMode,
    answer_turn_text,
    conversation_answer,
    is_conversation_row,
)
from stillroom.errors import ConfigError
from stillroom.llm.reasoning import final_answer
from stillroom.pipeline.stage import (
    Dropped,
    Row,
    RowFailure,
    RowStage,
    StageContext,
    register_stage,
)
from stillroom.verify.base import Verifier, VerifierInputError, verifiers


def build_verifier(kind: str, answer_column: str, options: dict[str, Any]) -> Verifier:
    """The verifier ``kind`` with ``options``; ConfigError names an unknown kind or option."""
    verifier_class = verifiers.get(kind)
    parameters = inspect.signature(verifier_class.__init__).parameters
    accepted = [name for name in parameters if name not in ("self", "answer_column")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"verifier {kind!r} has no option(s) {unknown}; its options: "
            f"{', '.join(accepted) or 'none'}",
            key="options",
        )
    missing = [
        name for name in accepted
        if parameters[name].default is inspect.Parameter.empty
        and parameters[name].kind not in (inspect.Parameter.VAR_KEYWORD,
                                          inspect.Parameter.VAR_POSITIONAL)
        and name not in options
    ]
    if missing:
        raise ConfigError(f"verifier {kind!r} needs option(s) {missing}", key="options")
    try:
        return verifier_class(answer_column=answer_column, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"verifier {kind!r}: {error}", key="options") from None


def _final_part(text: str) -> str:
    """An earlier assistant turn of a whole conversation without its inline reasoning trace."""
    final, _ = final_answer(text)
    return "" if final is None else final


@register_stage
class Verify(RowStage):
    type: Literal["verify"] = "verify"
    kind: str = Field(description="A registered verifier (`stillroom verify --help` lists them).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="The verifier's own options (e.g. a regex `pattern`)."
    )
    answer_column: str = Field(default="completion", description="The column that is checked.")
    drop_failed: bool = Field(
        default=False, description="Send rows that fail to dropped/ (default: keep every row)."
    )
    conversation: ConversationMode = Field(default="last_turn", description=CONVERSATION_OPTION)
    _verifier: Verifier = PrivateAttr()

    @model_validator(mode="after")
    def _build(self) -> Verify:
        try:
            self._verifier = build_verifier(self.kind, self.answer_column, self.options)
        except ConfigError as error:
            # A validation error: a pipeline file names the stage's line and key, and options
            # built in Python name the option at fault (its `option`, e.g. "options").
            raise PydanticCustomError(
                "verifier", "{reason}", {"reason": error.reason, "option": error.key}
            ) from None
        return self

    def identity(self) -> dict[str, Any]:
        # The default is left out, so runs made before the option existed resume as the same run.
        out = super().identity()
        if self.conversation == "last_turn":
            out.pop("conversation", None)
        return out

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    def checked_row(self, row: Row) -> Row:
        """``row`` as the verifier reads it: its answer as text in ``answer_column`` (see the
        module docstring for conversations)."""
        column = self.answer_column
        checked = self._verifier.answer_row(row)
        if not isinstance(row.get(column), str):
            text = answer_turn_text(row, column)  # the verifier's reading, tool calls included
            if text is not None:
                checked = {**row, column: text}
        answer = checked.get(column)
        if self.conversation == "whole" and isinstance(answer, str) and is_conversation_row(row):
            final, _ = final_answer(answer)
            if final is not None:  # an unended trace stays as it is: the verifier fails it
                checked = {**checked, column: conversation_answer(row, final, "whole", _final_part)}
        return checked

    def check_row(self, row: Row) -> str | None:
        return self._verifier.check_row(self.checked_row(row))

    def summary_columns(self) -> list[str]:
        return ["passed"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows checked, rows passed and the share that passed (rows dropped for failing count
        as checked); no share when no row was checked."""
        verdicts = [row["passed"] for row in rows if row.get("passed") is not None]
        passed = sum(1 for verdict in verdicts if verdict is True)
        figures: dict[str, Any] = {"checked": len(verdicts), "passed": passed}
        if verdicts:
            figures["pass rate"] = passed / len(verdicts)
        return figures

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """"math: 31 of 40 rows passed (77.50%)"."""
        if "checked" not in figures:
            return None
        rate = "n/a" if figures.get("pass rate") is None else f"{figures['pass rate']:.2%}"
        return f"{self.kind}: {figures['passed']:,} of {figures['checked']:,} rows passed ({rate})"

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        # The answer as text, wherever the row keeps it (a `messages` row: its last turn, or
        # the whole transcript with `conversation: whole`).
        checked = self.checked_row(row)
        problem = self._verifier.check_row(checked)
        if problem:
            raise RowFailure(problem, kind="VerifierInputError")
        try:
            verdict = await asyncio.to_thread(self._verifier.verify, checked)
        except VerifierInputError as error:
            raise RowFailure(str(error), kind="VerifierInputError") from None
        except Exception as error:  # the verifier broke (e.g. its worker process died): failed/
            raise RowFailure(f"{type(error).__name__}: {error}", kind="VerifierError") from error
        out = dict(row)
        out["passed"] = verdict.passed
        out["reason"] = verdict.reason
        if verdict.details:
            out["verify_details"] = dict(verdict.details)
        metadata = dict(out.get("metadata") or {})
        metadata[ctx.stage_name] = {
            "kind": self.kind,
            "passed": verdict.passed,
            "reason": verdict.reason,
        }
        out["metadata"] = metadata
        if self.drop_failed and not verdict.passed:
            # Dropped, not Drop: the row in dropped/ keeps its verdict columns.
            return [Dropped(out, f"{self.kind}: {verdict.reason}")]
        return out

