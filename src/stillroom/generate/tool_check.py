"""``tool_check``: APIGen's three checks on tool-calling conversations (Liu et al. 2024).

    - type: tool_check
      format: true            # each call names an offered tool, its arguments fit its schema
      execution: true         # each call ran without error
      semantic: true          # a judge: do the calls and their results answer the query?
      backend: judge          # the semantic judge
      tools: {python: tools/calculator.py}   # needed only to run calls that have no result
      on_fail: drop           # or flag: keep the row, verdicts in its columns

A call run here that could not run for a reason outside the call (its MCP server died or could
not start, the sandbox could not be set up, or, with ``timeout_fails_row``, it timed out) sends
the row to ``failed/`` rather than dropping it: a rerun checks it again.

The checks (:mod:`stillroom.verify.tool_checks`) run in APIGen's order and a row that fails one
is not checked further (a call whose arguments do not fit cannot run; a call that did not run
answers nothing):

1. **format**: every call of every assistant turn names a tool offered to the row (its ``tools``
   column, else the stage's tool set), its arguments parse as a JSON object, and they validate
   against that tool's ``parameters`` (jsonschema). With ``require_calls`` (the default) a
   conversation without any call fails: the data is about calling tools.
2. **execution**: every call ran without error. The outcome ``tool_use`` recorded for each call
   (``metadata[<tool_use stage>].calls``) is read; a call with no recorded outcome (data made
   elsewhere, or only calls and no results) is run now through the stage's tool set, and what
   came back is kept in ``execution_results``.
3. **semantic**: a judge, answering JSON ``{"reason", "verdict": "yes"|"no"}`` (constrained
   where the backend can), is shown the tools, the user's request, each call with its result and
   the final answer, and says whether the calls and results answer the request.

Columns: ``format_ok``, ``execution_ok``, ``semantic_ok`` (None: not checked), ``semantic_reason``,
``tool_checks_passed`` and ``tool_check_reason`` (the first failure: the check and the call).
With ``on_fail: drop`` a failed row goes to ``dropped/`` with that reason. The card reports the
format validity, execution pass and semantic pass rates (each over the rows that reached the
check) and the assistant turns per conversation.

The stage lives here, beside ``tool_use``, rather than in ``verify/``: it runs tools
(:mod:`stillroom.tools`), which themselves run in ``verify``'s sandbox.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from stillroom.data.rows import Row, check_messages, row_id, row_key, seed_id_of, with_lineage
from stillroom.feedback.judging import StructuredMode
from stillroom.generate.tool_use import ToolsStage, error_kind, result_text, run_call
from stillroom.llm.tool_calls import tool_names
from stillroom.pipeline.stage import Dropped, RowFailure, StageContext, register_stage
from stillroom.tools.turns import raise_infrastructure
from stillroom.verify.tool_checks import (
    CHECKS,
    Call,
    check_figures,
    check_line,
    conversation_calls,
    execution_failure,
    format_failure,
    judge_semantics,
    recorded_outcomes,
)
from stillroom.verify.tool_checks_prompts import SEMANTIC


@register_stage
class ToolCheck(ToolsStage):
    type: Literal["tool_check"] = "tool_check"
    format: bool = Field(default=True, description="Check each call against its tool's schema.")
    execution: bool = Field(default=True, description="Check that each call ran without error.")
    semantic: bool = Field(default=True, description="Ask a judge whether the calls answer the query.")
    require_calls: bool = Field(
        default=True, description="A conversation without any tool call fails the format check."
    )
    on_fail: Literal["drop", "flag"] = Field(
        default="drop", description="drop: a failed row goes to dropped/; flag: it is kept."
    )
    timeout_fails_row: bool = Field(
        default=True,
        description="A call run here (one with no recorded outcome) that runs past "
        "`tools.timeout` sends the row to failed/ (a rerun retries it), like a dead MCP server; "
        "false: it fails the execution check.",
    )
    backend: str = Field(default="default", description="Backend of the semantic judge.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(
        default=None, ge=16, description="Default: the longest answer the JSON schema allows."
    )
    reason_chars: int = Field(default=400, ge=20, le=4000)
    seed: int | None = None
    structured: StructuredMode = "auto"
    max_reasks: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _some_check(self) -> ToolCheck:
        if not (self.format or self.execution or self.semantic):
            raise PydanticCustomError(
                "tool_check_none", "format, execution and semantic are all off: turn one on", {})
        return self

    def backend_names(self) -> set[str]:
        return {self.backend} if self.semantic else set()

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        if self.semantic:
            out["template"] = SEMANTIC.version
        return out

    def check_row(self, row: Row) -> str | None:
        problem = check_messages(row.get("messages"))
        return problem or self.tools_problem(row)

    def summary_columns(self) -> list[str]:
        return ["format_ok", "execution_ok", "semantic_ok", "metadata"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Each check's pass rate over the rows that reached it, and turns per conversation."""
        return check_figures(rows)

    def result_line(self, figures: dict[str, Any]) -> str | None:
        return check_line(figures)

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        messages: list[dict[str, Any]] = row["messages"]
        tools = await self.offered_tools(row)
        calls = conversation_calls(messages)
        verdicts: dict[str, bool | None] = {check: None for check in CHECKS}
        failure: str | None = None
        invalid = 0
        out = dict(row)

        if self.format:
            failure, invalid = format_failure([call for call, _ in calls], tools,
                                              require_calls=self.require_calls)
            verdicts["format"] = failure is None
        if self.execution and failure is None:
            outcomes = recorded_outcomes(row, len(calls))
            if None in outcomes:
                calls, outcomes, out["execution_results"] = await self._run_unrecorded(
                    calls, outcomes, tools)
            failure = execution_failure(calls, outcomes)
            verdicts["execution"] = failure is None
        judgment = None
        if self.semantic and failure is None:
            judgment = await judge_semantics(
                ctx.client(self.backend), messages, tools, calls,
                reason_chars=self.reason_chars, temperature=self.temperature,
                max_tokens=self.max_tokens, seed=self.seed if self.seed is not None else ctx.seed,
                structured=self.structured, max_reasks=self.max_reasks)
            verdicts["semantic"] = judgment.value["verdict"] == "yes"
            if not verdicts["semantic"]:
                failure = f"semantic check: the judge said no: {judgment.value['reason']}"

        if out.get("id") is None:  # a given id is carried as it is (an int stays an int)
            out["id"] = row_key(row)
        for check in CHECKS:
            out[f"{check}_ok"] = verdicts[check]
        out["semantic_reason"] = judgment.value["reason"] if judgment is not None else None
        out["tool_checks_passed"] = failure is None
        out["tool_check_reason"] = failure
        model = None
        if judgment is not None:
            model = judgment.completion.model or ctx.client(self.backend).backend.model
        out = with_lineage(
            out, ctx.stage_name, method="tool_check", step="checks", parent_id=row_id(row),
            seed_id=seed_id_of(row) or row_key(row), model=model,
            template=SEMANTIC if judgment is not None else None,
            checks=[check for check in CHECKS if getattr(self, check)],
            calls=len(calls), invalid_calls=invalid,
            answers=judgment.answers if judgment is not None else 0,
        )
        if failure is not None and self.on_fail == "drop":
            return [Dropped(out, failure)]
        return out

    async def _run_unrecorded(
        self, calls: list[tuple[Call, str | None]], outcomes: list[str | None],
        tools: list[dict[str, Any]],
    ) -> tuple[list[tuple[Call, str | None]], list[str | None], list[dict[str, Any]]]:
        """Run the calls without a recorded outcome through the tool set: the calls paired with
        the results the judge is to see (a conversation's own result where it has one), their
        outcomes, and ``execution_results`` (one entry per call; null fields for calls not
        run)."""
        if self.tools is None:
            count = outcomes.count(None)
            raise RowFailure(
                f"{count} call(s) have no recorded outcome (not made by tool_use); give the "
                "stage `tools:` to run them for the execution check", kind="BadInput")
        pending = [index for index, outcome in enumerate(outcomes) if outcome is None]
        names = tool_names(tools)
        ran = await asyncio.gather(
            *(run_call(self.toolset(), names, calls[index][0]) for index in pending))
        # A server that died or a sandbox that could not start says nothing of the call: the
        # row goes to failed/ (a rerun checks it again), not to dropped/ for good.
        raise_infrastructure(list(ran), [str((calls[index][0].get("function") or {}).get("name"))
                                         for index in pending],
                             timeout_fails_row=self.timeout_fails_row)
        executed: list[dict[str, Any]] = [
            {"name": None, "ok": None, "content": None, "error": None} for _ in calls]
        outcomes, paired = list(outcomes), list(calls)
        for index, result in zip(pending, ran, strict=True):
            call, shown = calls[index]
            executed[index] = {"name": (call.get("function") or {}).get("name"),
                               "ok": result.ok, "content": result_text(result),
                               "error": result.error}
            outcomes[index] = error_kind(result)
            # The conversation's own result stays what the judge sees; a fresh one fills a gap.
            # A failure is reported with the error of this run.
            paired[index] = (call, result_text(result) if shown is None or not result.ok else shown)
        return paired, outcomes, executed
