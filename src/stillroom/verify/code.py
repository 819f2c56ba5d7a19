"""The code verifier: the candidate program runs against its tests in the sandbox.

``tests`` is either a string of Python (asserts) run after the candidate in the same program, or
stdin/stdout pairs: a list of ``{"input": ..., "output": ...}`` or the APPS-style
``{"inputs": [...], "outputs": [...]}``. For pairs the candidate runs once per pair and every
stripped stdout must equal the stripped expected output (trailing spaces of each line ignored).
"""

from __future__ import annotations

import re
from typing import Any

from stillroom.verify.base import Row, Verdict, Verifier, VerifierInputError, verifiers
from stillroom.verify.sandbox import Limits, SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_SHOWN = 200  # characters of expected/got quoted in a reason


def extract_code(text: str) -> str:
    """The first ```python fenced block, or the whole text when there is none."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _shown(text: str) -> str:
    text = repr(text)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@verifiers.register("code")
class CodeVerifier(Verifier):
    name = "code"

    def __init__(
        self,
        answer_column: str = "completion",
        tests_column: str = "tests",
        cpu_seconds: int = 2,
        wall_seconds: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 16,
        file_size_mb: int = 1,
        output_bytes: int = 64_000,
    ):
        super().__init__(answer_column)
        self.tests_column = tests_column
        self.required_columns = (tests_column,)
        self.limits = Limits(
            cpu_seconds=cpu_seconds,
            wall_seconds=wall_seconds,
            memory_mb=memory_mb,
            max_processes=max_processes,
            file_size_mb=file_size_mb,
            output_bytes=output_bytes,
        )

    def check_row(self, row: Row) -> str | None:
        problem = super().check_row(row)
        if problem:
            return problem
        try:
            self._tests(row)
        except VerifierInputError as exc:
            return str(exc)
        return None

    def _tests(self, row: Row) -> str | list[tuple[str, str]]:
        """The row's tests: an assert program or (input, output) pairs."""
        tests: Any = row.get(self.tests_column)
        column = f"`{self.tests_column}`"
        if isinstance(tests, str):
            if not tests.strip():
                raise VerifierInputError(f"the {column} column is empty")
            return tests
        if isinstance(tests, dict):
            if set(tests) >= {"inputs", "outputs"}:
                inputs, outputs = tests["inputs"], tests["outputs"]
                if not isinstance(inputs, list) or not isinstance(outputs, list):
                    raise VerifierInputError(f"{column}: `inputs` and `outputs` must be lists")
                if len(inputs) != len(outputs):
                    raise VerifierInputError(
                        f"{column}: {len(inputs)} inputs but {len(outputs)} outputs"
                    )
                tests = [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]
            else:
                raise VerifierInputError(
                    f"{column} must be a string of asserts, a list of {{input, output}} pairs "
                    "or {inputs: [...], outputs: [...]}; got a dict with keys "
                    f"{sorted(tests)}"
                )
        if not isinstance(tests, list):
            raise VerifierInputError(
                f"{column} must be a string of asserts or a list of {{input, output}} pairs, "
                f"not {type(tests).__name__}"
            )
        if not tests:
            raise VerifierInputError(f"the {column} list is empty")
        pairs = []
        for i, pair in enumerate(tests):
            if not isinstance(pair, dict) or not {"input", "output"} <= set(pair):
                raise VerifierInputError(
                    f"{column}[{i}] must be an object with `input` and `output`"
                )
            if not isinstance(pair["input"], str) or not isinstance(pair["output"], str):
                raise VerifierInputError(f"{column}[{i}]: `input` and `output` must be strings")
            pairs.append((pair["input"], pair["output"]))
        return pairs

    def verify(self, row: Row) -> Verdict:
        problem = self.check_row(row)
        if problem:
            raise VerifierInputError(problem)
        code = extract_code(str(row[self.answer_column]))
        tests = self._tests(row)
        if isinstance(tests, str):
            result = run_python(code + "\n\n# --- tests ---\n" + tests + "\n", limits=self.limits)
            if result.ok:
                return Verdict(True, "all asserts passed", {"sandbox": _brief(result)})
            return Verdict(False, f"tests failed: {result.reason}", {"sandbox": _brief(result)})
        for i, (stdin, expected) in enumerate(tests):
            result = run_python(code, stdin=stdin, limits=self.limits)
            where = f"test {i + 1}/{len(tests)}"
            details = {"test": i, "sandbox": _brief(result)}
            if not result.ok:
                return Verdict(False, f"{where}: {result.reason}", details)
            got = _normalize(result.stdout)
            if got != _normalize(expected):
                details.update(expected=expected, got=result.stdout)
                return Verdict(
                    False,
                    f"{where}: wrong output: expected {_shown(expected.strip())}, "
                    f"got {_shown(result.stdout.strip())}",
                    details,
                )
        return Verdict(True, f"all {len(tests)} stdin/stdout tests passed")


def _brief(result: SandboxResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "reason": result.reason,
        "stderr": result.stderr[-2000:],
    }
