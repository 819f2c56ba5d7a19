"""What ``tool_use`` and ``tool_check`` do with a call's outcome and a call's id, beyond running
it: which failures are the machinery's (the row goes to failed/, not a tool turn), and call ids
unique in a conversation."""

from __future__ import annotations

from typing import Any

from stillroom.pipeline.stage import RowFailure
from stillroom.tools.base import ToolResult

# Outcomes that say nothing about the call or the tool's code but about the machinery that runs
# it (an MCP server that died, stopped answering or could not start; a sandbox that could not be
# set up): recording them as tool turns would put an infrastructure failure into the data as if
# the tool had answered it. The whole row goes to failed/ instead, and a rerun retries it.
INFRASTRUCTURE_KINDS = ("ServerError",)


def failed_infrastructure(result: ToolResult, *, timeout_fails_row: bool) -> bool:
    """Whether ``result`` is a failure of what runs the tool rather than of the tool: a
    ``ServerError`` always; a ``Timeout`` when ``timeout_fails_row`` (a tool that always hangs
    is the tool's fault, but a slow server or a loaded machine is not, and only a rerun tells
    them apart)."""
    return result.kind in INFRASTRUCTURE_KINDS or (timeout_fails_row and result.kind == "Timeout")


def raise_infrastructure(results: list[ToolResult], names: list[str], *,
                         timeout_fails_row: bool) -> None:
    """RowFailure for the first infrastructure failure among ``results`` (see
    :func:`failed_infrastructure`), so the row goes to failed/ whole, never to data/ or dropped/
    with an error turn the model never caused."""
    for name, result in zip(names, results, strict=True):
        if failed_infrastructure(result, timeout_fails_row=timeout_fails_row):
            raise RowFailure(f"call of {name!r} did not run: {result.error}",
                             kind=str(result.kind))


def conversation_ids(calls: list[dict[str, Any]],
                     conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``calls`` (one answer's) with ids unique in ``conversation``: ``call_<turn>_<i>``, turn
    the number of assistant turns before this one. Backends number calls anew each answer (the
    text emulation, llama.cpp, the echo server: ``call_0`` every turn), and an id seen twice in
    a conversation is refused by Anthropic and makes a tool turn's answer ambiguous; the tool
    turns are written from these calls, so they name the same ids."""
    used = {str(call.get("id")) for message in conversation
            for call in (message.get("tool_calls") or []) if isinstance(call, dict)}
    turn = sum(message.get("role") == "assistant" for message in conversation)
    out: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        call_id = f"call_{turn}_{index}"
        while call_id in used:  # an input conversation that already used the name
            call_id += "x"
        used.add(call_id)
        out.append({**call, "id": call_id})
    return out


__all__ = ["INFRASTRUCTURE_KINDS", "conversation_ids", "failed_infrastructure",
           "raise_infrastructure"]
