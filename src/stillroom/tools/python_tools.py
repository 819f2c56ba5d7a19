"""Python functions as tools: described from the file's source, each call run in the sandbox.

Every call is a fresh sandboxed process (:func:`stillroom.verify.sandbox.run_python`, about 0.1 s
to start here) running :data:`~stillroom.tools.python_tool_runner.RUNNER` beside the tools file,
so a tool can neither touch the run nor remember anything between calls: the same call gives the
same result, which is what lets a row be checked again on resume. Calls run in threads
(``asyncio.to_thread``), so a stage's calls overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from stillroom.tools.base import ToolResult, ToolSet, argument_problem, unknown_tool
from stillroom.tools.python_schema import ToolFunction, read_tools
from stillroom.tools.python_tool_runner import NOT_JSON, RUNNER, TOOLS_FILE
from stillroom.verify.sandbox import Limits, SandboxResult, run_python

# A result the size of a long web page is still a tool turn a model can read; beyond that it is
# a tool's bug, told as one rather than cut silently.
RESULT_BYTES = 1_000_000
# The runner's report is the result JSON-escaped, which at worst writes a byte as six (\u0001):
# read that much, so a result under the limit is never cut and the limit is judged on the
# result itself, not on its escaped form.
REPORT_BYTES = 6 * RESULT_BYTES + 4096


class PythonToolSet(ToolSet):
    def __init__(self, path: Path, *, functions: list[str] | None = None, timeout: float = 10.0,
                 limits: Limits | None = None, key: str = "tools.python"):
        self.path = path
        self.source = path.read_text(encoding="utf-8") if path.is_file() else ""
        self._functions = {tool.name: tool for tool in read_tools(
            path, functions=functions, key=key)}
        self.timeout = timeout
        base = limits or Limits()
        # The wall clock is the call's timeout; CPU time gets as long, so a busy tool reads as
        # "Timeout" like a slow one, not as a CPU kill.
        self.limits = replace(base, wall_seconds=timeout,
                              cpu_seconds=max(base.cpu_seconds, math.ceil(timeout) + 1),
                              output_bytes=max(base.output_bytes, REPORT_BYTES))

    @property
    def functions(self) -> dict[str, ToolFunction]:
        return dict(self._functions)

    async def tools(self) -> list[dict[str, Any]]:
        return [tool.tool for tool in self._functions.values()]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        function = self._functions.get(name)
        if function is None:
            return unknown_tool(name, list(self._functions))
        problem = argument_problem(arguments, function.tool["function"]["parameters"])
        if problem:
            return ToolResult.failed("InvalidArguments", problem)
        request = json.dumps({"function": name, "arguments": arguments,
                              "enums": function.enum_arguments,
                              "collections": function.collection_arguments},
                             ensure_ascii=False)
        result = await asyncio.to_thread(
            run_python, RUNNER, stdin=request, limits=self.limits,
            files={TOOLS_FILE: self.source})
        return self._result(name, result)

    def _result(self, name: str, result: SandboxResult) -> ToolResult:
        if result.timed_out:
            return ToolResult.failed("Timeout", f"{name} ran past its {self.timeout:g} s")
        if result.reason.startswith("sandbox setup failed"):
            return ToolResult.failed("ServerError", result.reason)
        if result.stdout_truncated:
            return ToolResult.failed(
                "ToolError", f"{name} returned more than {self.limits.output_bytes:,} bytes of "
                f"JSON-escaped result (the limit is {RESULT_BYTES:,} bytes)")
        report = _report(result.stdout)
        if report is None:
            # No report: the process ended under the runner (os._exit, a kill, a limit).
            why = "exit 0" if result.reason == "ok" else result.reason
            return ToolResult.failed("ToolError", f"{name} ended without returning ({why})")
        if report.get("ok"):
            content = str(report.get("content", ""))
            size = len(content.encode("utf-8", "surrogatepass"))
            if size > RESULT_BYTES:
                return ToolResult.failed(
                    "ToolError", f"{name} returned {size:,} bytes, more than the limit of "
                    f"{RESULT_BYTES:,} bytes")
            return ToolResult(content=content)
        kind = str(report.get("type") or "Error")
        message = str(report.get("message") or "")
        if kind == NOT_JSON:
            return ToolResult.failed("ToolError", message.replace("the return value", f"the return value of {name}", 1))
        return ToolResult.failed("ToolError", f"{kind}: {message}" if message else kind)

    def identity(self) -> dict[str, Any]:
        return {"python": {
            "file": self.path.name,
            "sha256": hashlib.sha256(self.source.encode()).hexdigest(),
            "functions": list(self._functions),
            # The runner decides results too (how values become text).
            "runner": hashlib.sha256(RUNNER.encode()).hexdigest()[:16],
            "timeout": self.timeout,
        }}


def _report(stdout: str) -> dict[str, Any] | None:
    """The runner's one report line, or None when stdout is anything else."""
    lines = stdout.splitlines()
    if len(lines) != 1:
        return None
    try:
        report = json.loads(lines[0])
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


__all__ = ["RESULT_BYTES", "PythonToolSet"]
