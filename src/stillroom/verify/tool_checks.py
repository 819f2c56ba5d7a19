"""APIGen's three checks on tool-calling conversations (Liu et al. 2024), as functions the
``tool_check`` stage (:mod:`stillroom.generate.tool_check`) applies in order:

1. **format** (:func:`format_failure`): every call names an offered tool, its arguments parse
   as a JSON object, and they validate against that tool's ``parameters`` (jsonschema);
2. **execution** (:func:`execution_failure`): every call ran without error, by the outcome
   ``tool_use`` recorded (:func:`recorded_outcomes`) or one the stage got by running it;
3. **semantic** (:func:`judge_semantics`): a judge says whether the calls and their results
   answer the user's request.

A failure is told as the check and the call (``format check: call 2 (convert): arguments at
$.unit: 'parsec' is not one of [...]``). Nothing here runs a tool: the checks read
conversations, so they hold for data made anywhere.
"""

from __future__ import annotations

import functools
from typing import Any

from stillroom.data.rows import Row, content_text
from stillroom.feedback.judging import Judgment, StructuredMode, ask_judge
from stillroom.llm.client import LLMClient
from stillroom.llm.structured import json_length_bound
from stillroom.llm.tool_calls import call_arguments, tool_names, tool_parameters
from stillroom.llm.types import GenerationParams
from stillroom.pipeline.stage import RowFailure
from stillroom.verify.tool_checks_prompts import (
    SYSTEM,
    query_text,
    read_plain_verdict,
    semantic_prompt,
    semantic_schema,
)

CHECKS = ("format", "execution", "semantic")
Call = dict[str, Any]


def conversation_calls(messages: list[dict[str, Any]]) -> list[tuple[Call, str | None]]:
    """Every call of every assistant turn, in order, with its result: the content of the tool
    turn answering it among the tool turns right after that assistant turn (matched by
    ``tool_call_id``, else by position, since some sources number calls anew each turn), or
    None when there is none."""
    found: list[tuple[Call, str | None]] = []
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if not calls:
            continue
        answers: list[dict[str, Any]] = []
        for later in messages[index + 1:]:
            if later.get("role") != "tool":
                break
            answers.append(later)
        by_id = {str(a.get("tool_call_id")): a for a in answers if a.get("tool_call_id")}
        for position, call in enumerate(calls):
            answer = by_id.get(str(call.get("id")))
            if answer is None and len(answers) == len(calls):
                answer = answers[position]
            content = None if answer is None else str(content_text(answer.get("content")) or "")
            found.append((call, content))
    return found


def call_label(number: int, call: Call) -> str:
    return f"call {number} ({(call.get('function') or {}).get('name')})"


# -- format ---------------------------------------------------------------------------------


def format_problem(call: Call, tools: list[dict[str, Any]]) -> str | None:
    """Why ``call`` is not a well-formed call of one of ``tools``, if it is not."""
    import jsonschema

    name = (call.get("function") or {}).get("name")
    parameters = tool_parameters(tools, name) if isinstance(name, str) else None
    if parameters is None:
        return f"{name!r} is not an offered tool ({', '.join(tool_names(tools))})"
    try:
        arguments = call_arguments(call)
    except ValueError as error:
        return str(error)
    try:
        validator = jsonschema.validators.validator_for(parameters)(parameters)
        worst = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except jsonschema.exceptions.SchemaError as error:
        raise RowFailure(f"tool {name!r} has an invalid parameters schema: {error.message}",
                         kind="BadInput") from None
    if worst is not None:
        return f"arguments at {worst.json_path}: {worst.message}"
    return None


def format_failure(calls: list[Call], tools: list[dict[str, Any]], *,
                   require_calls: bool) -> tuple[str | None, int]:
    """The format check's failure (the first bad call), or None; and how many calls are bad."""
    bad = [(number, call, why) for number, call in enumerate(calls, start=1)
           if (why := format_problem(call, tools)) is not None]
    if bad:
        number, call, why = bad[0]
        return f"format check: {call_label(number, call)}: {why}", len(bad)
    if not calls and require_calls:
        return "format check: no tool call in the conversation", 0
    return None, 0


# -- execution ------------------------------------------------------------------------------


def stage_entry(row: Row, method: str) -> dict[str, Any] | None:
    """The row's lineage entry of the (last) stage of ``method``, if any."""
    found = None
    for entry in (row.get("metadata") or {}).values():
        if isinstance(entry, dict) and entry.get("method") == method:
            found = entry
    return found


def recorded_outcomes(row: Row, count: int) -> list[str | None]:
    """For each of the conversation's ``count`` calls, the outcome ``tool_use`` recorded
    (``ok`` or an error kind), or None. ``tool_use`` made the last calls of the conversation;
    calls its input already held come before them and have no record."""
    recorded = list((stage_entry(row, "tool_use") or {}).get("calls") or [])[-count:] if count else []
    return [None] * (count - len(recorded)) + [str(item.get("status")) for item in recorded]


def execution_failure(calls: list[tuple[Call, str | None]],
                      outcomes: list[str | None]) -> str | None:
    """The execution check's failure (the first call whose outcome is not ``ok``, with its
    error text), or None. ``calls`` pairs each call with its result text."""
    for number, ((call, result), outcome) in enumerate(zip(calls, outcomes, strict=True),
                                                        start=1):
        if outcome != "ok":
            # A failed call's result is its error text, which begins with its kind.
            detail = (result or "").removeprefix(f"{outcome}:").strip()
            reason = f"execution check: {call_label(number, call)}: {outcome}"
            return f"{reason}: {detail}" if detail else reason
    return None


# -- semantic -------------------------------------------------------------------------------


async def judge_semantics(
    client: LLMClient, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
    calls: list[tuple[Call, str | None]], *, reason_chars: int, temperature: float,
    max_tokens: int | None, seed: int, structured: StructuredMode, max_reasks: int,
) -> Judgment:
    """The judge's ``{"reason", "verdict": "yes"|"no"}`` on whether the calls and their results
    answer the user's request (shown with the final answer, when the conversation has one)."""
    final = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
    answer = None
    if final is not None and not final.get("tool_calls"):
        answer = str(content_text(final.get("content")) or "") or None
    schema = semantic_schema(reason_chars)
    prompt = semantic_prompt(tools, query_text(messages), [call for call, _ in calls],
                             [result for _, result in calls], answer)
    return await ask_judge(
        client,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        schema=schema,
        params=GenerationParams(temperature=temperature,
                                max_tokens=max_tokens or json_length_bound(schema), seed=seed),
        read_text=functools.partial(read_plain_verdict, reason_chars=reason_chars),
        structured=structured,
        max_reasks=max_reasks,
        what="semantic check",
    )


# -- figures --------------------------------------------------------------------------------


def conversation_figures(rows: list[Row]) -> dict[str, Any]:
    """Over the rows ``tool_use`` answered: conversations, mean assistant turns, calls and the
    calls that ran (``ok``); read from the lineage (a row's ``messages`` need not be read)."""
    turns: list[int] = []
    calls = ok = 0
    for row in rows:
        entry = stage_entry(row, "tool_use")
        if entry is None or entry.get("turns") is None:
            continue
        turns.append(int(entry["turns"]))
        for call in entry.get("calls") or []:
            calls += 1
            ok += call.get("status") == "ok"
    if not turns:
        return {}
    return {"conversations": len(turns),
            "assistant turns per conversation": sum(turns) / len(turns),
            "calls": calls, "calls ok": ok}


def check_figures(rows: list[Row]) -> dict[str, Any]:
    """Each check's pass rate over the rows that reached it (``<check>_ok`` not null), the
    calls checked and well-formed, and the assistant turns per conversation."""
    figures: dict[str, Any] = {}
    for check in CHECKS:
        verdicts = [row[f"{check}_ok"] for row in rows if row.get(f"{check}_ok") is not None]
        if verdicts:
            passed = sum(1 for verdict in verdicts if verdict)
            label = "format validity" if check == "format" else f"{check} pass"
            figures[f"{check} checked"] = len(verdicts)
            figures[f"{check} passed"] = passed
            figures[f"{label} rate"] = passed / len(verdicts)
    entries = [entry for row in rows if (entry := stage_entry(row, "tool_check")) is not None]
    if entries:
        figures["calls checked"] = sum(int(entry.get("calls") or 0) for entry in entries)
        figures["calls well-formed"] = figures["calls checked"] - sum(
            int(entry.get("invalid_calls") or 0) for entry in entries)
    conversations = conversation_figures(rows)
    if conversations:
        figures["assistant turns per conversation"] = (
            conversations["assistant turns per conversation"])
    return figures


def check_line(figures: dict[str, Any]) -> str | None:
    """"tool_check: format 18/20 (90.0%), execution 15/18 (83.3%), semantic 12/15 (80.0%);
    2.10 assistant turns per conversation"."""
    parts = [f"{check} {figures[f'{check} passed']:,}/{figures[f'{check} checked']:,} "
             f"({figures[f'{check} passed'] / figures[f'{check} checked']:.1%})"
             for check in CHECKS if figures.get(f"{check} checked")]
    if not parts:
        return None
    line = "tool_check: " + ", ".join(parts)
    if figures.get("assistant turns per conversation") is not None:
        line += f"; {figures['assistant turns per conversation']:.2f} assistant turns per conversation"
    return line
