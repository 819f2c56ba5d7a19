"""The semantic check's judge prompt (APIGen's third check), its answer schema and a lenient
reader for backends that cannot constrain their answer."""

from __future__ import annotations

import json
import re
from typing import Any

from stillroom.data.rows import PromptTemplate, content_text
from stillroom.feedback.judging import schema_prompt
from stillroom.llm.tool_calls import call_arguments

# In our own words. APIGen's semantic checker asks whether the calls and their results fit
# what the query asks for: the right functions, arguments that say what the user said, and
# results that hold the answer. The judge is told to check exactly that, not the prose.
SEMANTIC = PromptTemplate(
    "tool_check.semantic",
    "A user asked an AI assistant something. The assistant could call the functions listed "
    "below, and answered by calling some of them. Decide whether these calls, with these "
    "arguments, and their results answer what the user asked.\n\n"
    "Answer \"no\" when a call uses the wrong function, when an argument differs from what "
    "the user said or leaves out something they asked for, when part of the request is never "
    "handled, or when the results do not hold what the user needs. Answer \"yes\" only when "
    "the calls do what the user asked and their results answer it.\n\n"
    "## Functions\n{tools}\n\n## User's request\n{query}\n\n## Calls and results\n{calls}\n\n"
    "{answer}## Verdict\n{reply}",
)

SYSTEM = "You are a careful reviewer of AI assistants' function calls."

NO_RESULT = "(no result)"


def tools_summary(tools: list[dict[str, Any]]) -> str:
    """Each tool's name, parameter names and description: what the calls are judged against
    (the format check has already held the arguments to the full schemas)."""
    lines = []
    for tool in tools:
        function = tool["function"]
        names = ", ".join((function.get("parameters") or {}).get("properties") or {})
        lines.append(f"- {function['name']}({names}): "
                     f"{function.get('description') or '(no description)'}")
    return "\n".join(lines)


def calls_listing(calls: list[dict[str, Any]], results: list[str | None]) -> str:
    lines = []
    for number, (call, result) in enumerate(zip(calls, results, strict=True), start=1):
        function = call.get("function") or {}
        try:
            arguments = json.dumps(call_arguments(call), ensure_ascii=False)
        except ValueError:
            arguments = str(function.get("arguments"))
        lines.append(f"{number}. {function.get('name')}({arguments})\n"
                     f"   result: {NO_RESULT if result is None else result}")
    return "\n".join(lines)


def semantic_prompt(tools: list[dict[str, Any]], query: str, calls: list[dict[str, Any]],
                    results: list[str | None], answer: str | None) -> str:
    answer_text = f"## The assistant's final answer\n{answer}\n\n" if answer else ""
    return SEMANTIC.format(
        tools=tools_summary(tools), query=query, calls=calls_listing(calls, results),
        answer=answer_text,
        reply=schema_prompt('{"reason": "<one or two sentences>", "verdict": "yes" or "no"}'),
    )


def semantic_schema(reason_chars: int) -> dict[str, Any]:
    # The reason comes first, so a model writes its grounds before its verdict.
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": reason_chars},
            "verdict": {"enum": ["yes", "no"]},
        },
        "required": ["reason", "verdict"],
        "additionalProperties": False,
    }


_VERDICT = re.compile(r"\bverdict\b\W*(yes|no)\b", re.IGNORECASE)


def read_plain_verdict(text: str, reason_chars: int = 4000) -> dict[str, Any] | None:
    """``Verdict: yes`` (the last one) in plain text, the rest of the text as the reason."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    reason = _VERDICT.sub("", text).strip() or "(none given)"
    return {"reason": reason[:reason_chars], "verdict": found[-1].lower()}


def query_text(messages: list[dict[str, Any]]) -> str:
    """What the user asked: the user turns before the first assistant turn."""
    parts = []
    for message in messages:
        if message.get("role") == "assistant":
            break
        if message.get("role") == "user":
            parts.append(str(content_text(message.get("content")) or ""))
    return "\n\n".join(parts)
