"""``math``: the completion's final answer compared with the reference ``answer`` as mathematics.

Extraction and equivalence are math-verify's (HuggingFace): sympy decides that ``1/2`` equals
``0.5``, ``\\frac{\\sqrt2}{2}`` equals ``\\frac{1}{\\sqrt2}``, ``\\{1,2,3\\}`` equals
``\\{3,2,1\\}`` and ``[1,2)`` is an interval. The final answer of a completion is, in order:

1. a GSM8K-style ``#### X`` line (the last one), taken as the answer text before parsing;
2. what math-verify finds first by its priorities: "final answer is X", a ``\\boxed{X}``,
   "answer: X", then any LaTeX or plain expression, the rightmost one (so ``10 + 21 = 31``
   reads 31).

The reference answer is parsed as LaTeX (``$answer$``) so that ``2(x+1)`` or ``\\frac{1}{2}`` is
read whole; a reference that already holds ``$``, ``\\boxed`` or ``####`` is parsed as written.

math-verify bounds each parse and comparison with ``signal.alarm``, which works only in a
process's main thread. Called from another thread (the ``verify`` stage runs verifiers with
``asyncio.to_thread``), the work goes to a small pool of worker processes, where the alarms work
and sympy's CPU time runs beside the event loop rather than under the GIL.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from stillroom.errors import ConfigError
from stillroom.verify.base import Row, Verdict, Verifier, VerifierInputError, verifiers

# "#### 72" at the start of a line: GSM8K's answer marker (the last one wins).
_GSM8K_ANSWER = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_LATEX_MARKERS = ("$", "\\boxed", "\\(", "\\[", "####")
_MAX_SHOWN = 80  # characters of an extracted answer quoted in a reason


def _answer_text(text: str) -> tuple[str, str | None]:
    """The text to parse, and the GSM8K ``####`` answer it was cut down to, if any."""
    found = _GSM8K_ANSWER.findall(text)
    if found:
        return found[-1], found[-1]
    return text, None


def _shown(parsed: list[Any]) -> str:
    """How an extracted answer is quoted: the text it was read from (math-verify's 2nd item)."""
    if not parsed:
        return ""
    text = str(parsed[1] if len(parsed) > 1 else parsed[0])
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def compare(gold: str, completion: str, timeout_seconds: int) -> dict[str, Any]:
    """Extract both answers and compare them (run in a main thread: math-verify uses alarms)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # Both LaTeX and plain expressions, the library's default pair; boxed answers come right
    # after "final answer is", before other anchors (its default priority).
    targets = (LatexExtractionConfig(), ExprExtractionConfig())
    gold_text, _ = _answer_text(gold)
    if not any(marker in gold_text for marker in _LATEX_MARKERS):
        gold_parsed = parse(f"${gold_text}$", targets, parsing_timeout=timeout_seconds)
    else:
        gold_parsed = []
    if not gold_parsed:
        gold_parsed = parse(gold_text, targets, parsing_timeout=timeout_seconds)
    pred_text, marker = _answer_text(completion)
    pred_parsed = parse(pred_text, targets, parsing_timeout=timeout_seconds)
    result: dict[str, Any] = {
        "expected": _shown(gold_parsed),
        "extracted": _shown(pred_parsed),
        "gsm8k_marker": marker is not None,
    }
    if not gold_parsed:
        result.update(passed=False, reason=f"could not read the reference answer {gold!r}")
    elif not pred_parsed:
        result.update(passed=False, reason="no answer found in the completion")
    elif verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds):
        result.update(
            passed=True,
            reason=f"extracted {result['extracted']}, equivalent to {result['expected']}",
        )
    else:
        result.update(
            passed=False,
            reason=f"extracted {result['extracted']}, expected {result['expected']}",
        )
    return result


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> ProcessPoolExecutor:
    """Worker processes for calls from non-main threads (made once, on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            import multiprocessing
            import os

            # spawn: a fork of a process running an event loop and threads is not safe.
            _pool = ProcessPoolExecutor(
                max_workers=max(1, min(4, os.cpu_count() or 1)),
                mp_context=multiprocessing.get_context("spawn"),
            )
        return _pool


@verifiers.register("math")
class MathVerifier(Verifier):
    """The final answer in ``completion`` equals the reference ``answer`` (math-verify)."""

    name = "math"

    def __init__(
        self,
        answer_column: str = "completion",
        *,
        reference_column: str = "answer",
        timeout_seconds: int = 5,
    ):
        super().__init__(answer_column)
        if not isinstance(timeout_seconds, int) or timeout_seconds < 1:
            # math-verify's alarms take whole seconds.
            raise ConfigError("timeout_seconds must be a whole number of seconds >= 1",
                              key="timeout_seconds")
        self.reference_column = reference_column
        self.required_columns = (reference_column,)
        self.timeout_seconds = timeout_seconds

    def check_row(self, row: Row) -> str | None:
        problem = super().check_row(row)
        if problem:
            return problem
        for column in (self.answer_column, self.reference_column):
            value = row[column]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                return f"`{column}` must be text or a number, got {type(value).__name__}"
        if not str(row[self.reference_column]).strip():
            return f"`{self.reference_column}` is empty"
        return None

    def verify_answer(self, row: Row) -> Verdict:
        problem = self.check_row(row)
        if problem:
            raise VerifierInputError(problem)
        gold, completion = str(row[self.reference_column]), str(row[self.answer_column])
        if threading.current_thread() is threading.main_thread():
            result = compare(gold, completion, self.timeout_seconds)
        else:
            future = _worker_pool().submit(compare, gold, completion, self.timeout_seconds)
            # math-verify bounds each parse and comparison; this bounds the whole (a few parses
            # and comparisons, plus a worker's start-up on first use).
            try:
                result = future.result(timeout=8 * self.timeout_seconds + 60)
            except FutureTimeout:
                return Verdict(False, f"verification took over {8 * self.timeout_seconds + 60} s")
        details = {key: result[key] for key in ("extracted", "expected", "gsm8k_marker")}
        return Verdict(bool(result["passed"]), str(result["reason"]), details)
