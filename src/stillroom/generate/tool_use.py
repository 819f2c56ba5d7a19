"""``tool_use``: answer each row's conversation with tool calls, run the calls, and go on until
the model answers (APIGen's "answer with calls", made multi-turn).

    - type: tool_use
      backend: teacher
      tools: {python: tools/calculator.py}   # or {mcp: {command: [...]}}, or both
      max_turns: 4            # assistant turns; a row still calling tools after that is dropped
      tool_choice: auto       # the first turn's; later turns are always auto

Each turn sends the conversation so far with ``GenerationParams.tools`` (the row's ``tools``
column when it has one, else every tool of the stage's tool set). The answer is appended as an
assistant turn (:func:`~stillroom.llm.tool_calls.assistant_turn`); when it calls tools, each call
runs through the tool set and one tool turn per call follows it (its content the result, or the
error text when the call did not run or raised), and the model is asked again. Each call gets
an id unique in the conversation (``call_<turn>_<i>``; backends number calls anew each answer,
and Anthropic refuses an id seen twice), which its tool turn names. The loop ends
with an answer that calls nothing, or at ``max_turns``: such a row goes to ``dropped/`` with the
reason ``turn limit``, never into ``data/`` cut short. So does a row whose final answer is empty,
cut off at ``max_tokens``, or only tool-call markup (a model without a tool API echoing the
``<tool_response>`` format instead of answering). With ``stop_after_calls`` the row ends once the
first answer's calls have run, APIGen's own form (a query, the calls, their results; the model is
not asked to answer from them).

A call is run only when it names a tool offered to the row and its arguments parse as a JSON
object; otherwise its tool turn says why (``UnknownTool: ...``, ``InvalidArguments: ...``), as an
API would answer the model, and the conversation goes on. The tool set itself checks the
arguments against the tool's schema. A call that could not run for a reason outside it (its
MCP server died, stopped answering or could not start; the sandbox could not be set up; with
``timeout_fails_row``, the default, a timeout) is no tool turn: the whole row goes to
``failed/`` and a rerun retries it. Every call's outcome (``ok`` or the error's kind) is in
``metadata[<stage>].calls``, which ``tool_check`` reads. A request that still fails after its
retries sends the whole row to ``failed/``; its answered turns stay in the request cache, so a
rerun asks only for the rest (the calls are run again: their results are not cached).

Output: ``messages`` (the conversation, TRL-ready: assistant ``tool_calls`` and ``tool`` turns)
and ``tools`` (the offered tools as JSON text). A row given as a ``prompt`` comes out as
``messages`` (only ``messages`` holds a conversation that goes on past one answer).

The tool set is built once per event loop and ``tools:`` option, and shared by the stages that
give the same option (an MCP server is started on first use and kept for the run); it ends with
the run's event loop, or earlier with :meth:`ToolsStage.aclose`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stillroom.data.rows import (
    Row,
    check_messages,
    prompt_messages,
    row_id,
    row_key,
    seed_id_of,
    with_lineage,
)
from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig
from stillroom.llm.tool_calls import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    TOOL_RESPONSE_END,
    TOOL_RESPONSE_START,
    ToolSchemaError,
    assistant_turn,
    call_arguments,
    normalize_tools,
    tool_names,
    tool_turn,
    tools_text,
)
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import (
    Dropped,
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)
from stillroom.tools import ToolResult, ToolsConfig, ToolSet
from stillroom.tools.checks import (
    TOOL_CHOICE_KEYWORDS,
    check_tools_now,
    static_tool_names,
    unknown_choice,
)
from stillroom.tools.turns import conversation_ids, raise_infrastructure
from stillroom.verify.tool_checks import conversation_figures

TOOLS_COLUMN = "tools"
PROTOCOL_TAGS = (TOOL_CALL_START, TOOL_CALL_END, TOOL_RESPONSE_START, TOOL_RESPONSE_END)


def error_kind(result: ToolResult) -> str:
    """``ok``, or the kind of a failed call (``ToolError``, ``Timeout``, ...)."""
    return "ok" if result.ok else (result.kind or "ToolError")


def row_tools_problem(row: Row) -> str | None:
    """What is wrong with the row's ``tools`` column, if it has one."""
    value = row.get(TOOLS_COLUMN)
    if value is None:
        return None
    try:
        if not normalize_tools(value, where=f"`{TOOLS_COLUMN}`"):
            return f"`{TOOLS_COLUMN}` is an empty list: offer at least one tool"
    except ToolSchemaError as error:
        return str(error)
    return None


# The tool sets in use: event loop id -> (that loop, {stage's tools option: tool set}). A set
# belongs to the loop its MCP session was opened on; stages run again under another loop (the
# Python API runs each pipeline in its own) get their own.
_OPEN: dict[int, tuple[asyncio.AbstractEventLoop, dict[str, ToolSet]]] = {}


class ToolsStage(RowStage):
    """What the tool stages share: a ``tools:`` option (a tool set to list and run tools), the
    tools offered to a row, and the tool set's life (built once per event loop and option,
    closed by :meth:`aclose` or with the loop)."""

    # The card's copy of the pipeline writes the tools file absolute (Stage.path_options).
    path_options = ("tools.python",)

    tools: ToolsConfig | None = Field(
        default=None,
        description="The tool set: a Python file of functions (`python:`) and/or an MCP server "
        "(`mcp:`); relative paths are read from the pipeline file's folder.",
    )

    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("tools")
    @classmethod
    def _tools_build(cls, value: ToolsConfig | None, info: ValidationInfo) -> ToolsConfig | None:
        # A missing file or a bad function is reported now, before any row is read.
        if value is not None:
            try:
                value.build(pipeline_dir(info))
            except ConfigError as error:
                # The tools file's own file:line (a bad function, an import) is kept: the
                # pipeline file's line alone does not say where in the tools file to look.
                place = error.path or ""
                if error.line is not None:
                    place = f"{place}:{error.line}" if place else f"line {error.line}"
                where = "".join(f"{part}: " for part in (error.key, place) if part)
                raise PydanticCustomError("tools", "{reason}", {"reason": where + error.reason}) \
                    from None
        return value

    @model_validator(mode="after")
    def _remember_dir(self, info: ValidationInfo) -> ToolsStage:
        self._base_dir = pipeline_dir(info) or self._base_dir
        return self

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        # Two tools of one name (a Python function and an MCP tool) would fail every row at
        # run time: found now, listing the MCP server once when there is also a Python file.
        check_tools_now(self.tools, self._base_dir)

    def _toolset_key(self) -> str:
        assert self.tools is not None
        return json.dumps([str(self._base_dir), self.tools.model_dump(mode="json")],
                          sort_keys=True)

    def toolset(self) -> ToolSet:
        """The tool set of this stage's ``tools:`` on the running event loop, built on first
        use and shared with every stage that has the same option (one MCP server per run)."""
        if self.tools is None:
            raise RowFailure(
                f"stage {self.type!r} needs a `tools:` option to run calls", kind="BadInput"
            )
        loop = asyncio.get_running_loop()
        held = _OPEN.get(id(loop))
        if held is None or held[0] is not loop:
            held = _OPEN[id(loop)] = (loop, {})
        key = self._toolset_key()
        if key not in held[1]:
            held[1][key] = self.tools.build(self._base_dir)
        return held[1][key]

    async def aclose(self) -> None:
        """Close this stage's tool set (stop a started MCP server); a later use builds a new
        one. Without it, the tool set ends with the run's event loop (an MCP session's task is
        cancelled when ``asyncio.run`` returns)."""
        if self.tools is None:
            return
        loop = asyncio.get_running_loop()
        held = _OPEN.get(id(loop))
        toolset = held[1].pop(self._toolset_key(), None) if held and held[0] is loop else None
        if toolset is not None:
            await toolset.aclose()

    async def offered_tools(self, row: Row) -> list[dict[str, Any]]:
        """The tools offered to ``row``: its ``tools`` column, else the whole tool set."""
        if row.get(TOOLS_COLUMN) is not None:
            problem = row_tools_problem(row)
            if problem:
                raise RowFailure(problem, kind="BadInput")
            return normalize_tools(row[TOOLS_COLUMN])
        if self.tools is None:
            raise RowFailure(
                f"the row has no `{TOOLS_COLUMN}` column and the stage has no `tools:` option: "
                "nothing says which tools to offer",
                kind="BadInput",
            )
        try:
            listed = await self.toolset().tools()
        except Exception as error:  # an MCP server that does not start, a broken file
            raise RowFailure(f"could not list the tools: {type(error).__name__}: {error}",
                             kind="ToolsUnavailable") from error
        return normalize_tools(listed)

    def tools_identity(self) -> dict[str, Any] | None:
        """What decides the tools' results (a file digest, an MCP command), for the run's
        fingerprint; None without a tool set."""
        if self.tools is None:
            return None
        return self.tools.build(self._base_dir).identity()

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["toolset"] = self.tools_identity()
        return out

    def tools_problem(self, row: Row) -> str | None:
        """The row's ``tools`` column, when any, is usable; without one the stage's option must
        name a tool set."""
        problem = row_tools_problem(row)
        if problem:
            return problem
        if row.get(TOOLS_COLUMN) is None and self.tools is None:
            return (f"the row has no `{TOOLS_COLUMN}` column and the stage has no `tools:` "
                    "option: nothing says which tools to offer")
        return None


async def run_call(toolset: ToolSet, offered: list[str], call: dict[str, Any]) -> ToolResult:
    """Run one call the way a tool API would: a tool that was not offered, or arguments that
    are not a JSON object, are answered with an error instead of being run."""
    name = (call.get("function") or {}).get("name")
    if name not in offered:
        return ToolResult.failed(
            "UnknownTool", f"{name!r} is not one of the offered tools ({', '.join(offered)})")
    try:
        arguments = call_arguments(call)
    except ValueError as error:
        return ToolResult.failed("InvalidArguments", str(error))
    return await toolset.call(str(name), arguments)


def _call_name(call: dict[str, Any]) -> str:
    return str((call.get("function") or {}).get("name", ""))


def result_text(result: ToolResult) -> str:
    """A tool turn's content: the result, or the error the model is shown instead."""
    return result.content if result.ok else str(result.error)


@register_stage
class ToolUse(ToolsStage):
    type: Literal["tool_use"] = "tool_use"
    backend: str = Field(default="default", description="Backend of the model that calls tools.")
    max_turns: int = Field(
        default=4, ge=1, le=32,
        description="Most assistant turns; a row still calling tools after them is dropped.",
    )
    tool_choice: str = Field(
        default="auto",
        description="First turn: auto, none, required, or a tool's name (that tool must be "
        "called); later turns are auto. A name is checked against the tools before any request.",
    )
    timeout_fails_row: bool = Field(
        default=True,
        description="A call that runs past `tools.timeout` sends the row to failed/ (a rerun "
        "retries it), like a dead MCP server; false: the timeout is a tool turn the model reads "
        "(for tools that are expected to hang sometimes).",
    )
    stop_after_calls: bool = Field(
        default=False,
        description="APIGen's single-step form: end once the first answer's calls have run "
        "(the row ends with their tool turns; no final answer is asked for).",
    )
    system: str | None = Field(default=None, description="A system turn put first, if none.")
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(default=512, ge=1)
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    @model_validator(mode="after")
    def _needs_tools(self) -> ToolUse:
        if self.tools is None:
            raise PydanticCustomError(
                "tool_use_tools", "tool_use runs the calls: give `tools:` (a python file "
                "and/or an MCP server)", {})
        return self

    @field_validator("tool_choice")
    @classmethod
    def _known_choice(cls, value: str, info: ValidationInfo) -> str:
        # A typo here would fail every row at run time: a keyword or a tool of the Python file
        # now (an MCP server's tools are listed in check_backends, before any request).
        tools = info.data.get("tools")
        if value in TOOL_CHOICE_KEYWORDS or not isinstance(tools, ToolsConfig):
            return value
        names = static_tool_names(tools, pipeline_dir(info))
        if value not in names and tools.mcp is None:
            raise PydanticCustomError("tool_choice", "{reason}", {
                "reason": unknown_choice(value, names, "tools.python")})
        return value

    def backend_names(self) -> set[str]:
        return {self.backend}

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        check_tools_now(self.tools, self._base_dir, self.tool_choice)

    def check_row(self, row: Row) -> str | None:
        if row.get("messages") is not None:
            problem = check_messages(row["messages"])
            if problem:
                return problem
        if prompt_messages(row) is None:
            return f"the row needs `messages` or a `prompt` to answer; it has {sorted(row)}"
        return self.tools_problem(row)

    def summary_columns(self) -> list[str]:
        return ["metadata"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Conversations, assistant turns per conversation, calls and how many ran."""
        return conversation_figures(rows)

    def result_line(self, figures: dict[str, Any]) -> str | None:
        if not figures.get("conversations"):
            return None
        return (f"tool_use: {figures['conversations']:,} conversations, "
                f"{figures['assistant turns per conversation']:.2f} assistant turns each, "
                f"{figures['calls ok']:,} of {figures['calls']:,} calls ran")

    def _choice(self, turn: int, names: list[str]) -> str | dict[str, Any]:
        if turn > 0 or self.tool_choice in TOOL_CHOICE_KEYWORDS:
            return "auto" if turn > 0 else self.tool_choice
        if self.tool_choice not in names:
            raise RowFailure(
                f"tool_choice {self.tool_choice!r} is not one of the row's tools ({names})",
                kind="BadInput")
        return {"type": "function", "function": {"name": self.tool_choice}}

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        offered = await self.offered_tools(row)
        names = tool_names(offered)
        conversation = list(prompt_messages(row) or [])
        if self.system is not None and conversation[0].get("role") != "system":
            conversation.insert(0, {"role": "system", "content": self.system})
        client = ctx.client(self.backend)
        calls_record: list[dict[str, Any]] = []
        answers: list[Completion] = []
        final: Completion | None = None
        ended = False  # an answer without calls, or the calls of stop_after_calls, ended it
        for turn in range(self.max_turns):
            params = GenerationParams(
                temperature=self.temperature, max_tokens=self.max_tokens,
                seed=self.seed if self.seed is not None else ctx.seed,
                tools=offered, tool_choice=self._choice(turn, names),
            )
            # A RequestFailed goes through: the whole row to failed/, never a part of it.
            completion = await client.generate(Request(messages=list(conversation), params=params))
            answers.append(completion)
            calls = conversation_ids(completion.tool_calls or [], conversation)
            conversation.append(assistant_turn(completion.text, calls))
            if not calls:
                final, ended = completion, True
                break
            results = await asyncio.gather(
                *(run_call(self.toolset(), names, call) for call in calls))
            raise_infrastructure(list(results), [_call_name(call) for call in calls],
                                 timeout_fails_row=self.timeout_fails_row)
            for call, result in zip(calls, results, strict=True):
                conversation.append(tool_turn(call, result_text(result)))
                calls_record.append({"turn": turn, "id": str(call.get("id", "")),
                                     "name": _call_name(call),
                                     "status": error_kind(result)})
            if self.stop_after_calls:
                ended = True
                break
        out = dict(row)
        out.pop("prompt", None)
        out.pop("completion", None)
        if out.get("id") is None:  # a given id is carried as it is (an int stays an int)
            out["id"] = row_key(row)
        out["messages"] = conversation
        out[TOOLS_COLUMN] = tools_text(offered)
        models = list(dict.fromkeys(c.model for c in answers if c.model))
        out = with_lineage(
            out, ctx.stage_name, method="tool_use", step="conversation",
            parent_id=row_id(row), seed_id=seed_id_of(row) or row_key(row),
            model=models[0] if len(models) == 1 else (models or client.backend.model),
            template=None,
            turns=len(answers), calls=calls_record,
            finish_reasons=[str(c.finish_reason) for c in answers],
            prompt_tokens=sum(c.prompt_tokens for c in answers),
            completion_tokens=sum(c.completion_tokens for c in answers),
        )
        reason = self._drop_reason(final, ended)
        return [Dropped(out, reason)] if reason else out

    def _drop_reason(self, final: Completion | None, ended: bool) -> str | None:
        if not ended:
            return (f"turn limit: still calling tools after max_turns {self.max_turns} "
                    "assistant turns")
        if final is None:  # stop_after_calls: the calls and their results are the answer
            return None
        if not final.reasoning_ended:
            return "final answer cut off while reasoning (no answer after the trace)"
        if final.finish_reason == "length":
            return f"final answer cut off at max_tokens {self.max_tokens}"
        if not final.text.strip():
            return "empty final answer"
        if any(tag in final.text for tag in PROTOCOL_TAGS):
            # A model asked in the <tool_call> text format sometimes echoes the protocol back
            # as its answer; a student trained on that would learn to answer in tags.
            return "final answer holds tool-call markup (<tool_call>/<tool_response>), not an answer"
        return None

