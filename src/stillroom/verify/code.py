"""The code verifier: the candidate program runs against its tests in the sandbox.

``tests`` is either a string of Python (asserts) or stdin/stdout pairs: a list of
``{"input": ..., "output": ...}`` or the APPS-style ``{"inputs": [...], "outputs": [...]}``.

Pairs: the candidate runs once per pair as a script, and every stripped stdout must equal the
stripped expected output (trailing spaces of each line ignored).

Asserts: the verdict is an RL reward, so exit status 0 proves nothing, and nothing the sandbox
says is believed without a check. The verifier splits every ``assert`` of the tests into
*leaves* (the parts that need the answer: ``candidate(xs)``, a test variable, ``s.lower()`` of
one) and a *residual* (everything else: the expected values, the arithmetic, the comparisons,
``abs``, ``sorted``, ``math.isclose`` ...). Only the leaves go into the sandbox. There our
:data:`HARNESS` imports the answer as module ``solution``, runs the tests one top-level
statement at a time in a namespace of their own, and at each execution of an assert reports the
plain values of its leaves (``None``, numbers, strings, containers of them; anything else only
as "an object of type X"). The verifier then evaluates the residual with those values
substituted, in a small interpreter of its own (``_Eval``). An answer can make a leaf's value
anything it likes, but it never sees the residual, so it still has to produce the values the
tests expect. ``docs/sandbox.md`` has the design, what is checked inside the sandbox rather than
here, and the attacks it was tried against.

This module holds :class:`CodeVerifier` (registered as ``"code"``) and runs the stdin/stdout
pairs itself; the rest lives beside it, each module importing only those above it in this list:

- ``code_extract.py``: :func:`extract_code`, the block of an answer that is verified.
- ``code_values.py``: the caps on reported values, decoding them (:func:`from_plain`,
  :class:`Opaque`), and quoting values in reasons.
- ``code_harness.py``: :data:`HARNESS`, the self-contained program run in the sandbox with
  ``-I -S``, and the hooks the rewritten tests call it by.
- ``code_builtins.py``: what a residual's names and operators mean outside, with size guards.
- ``code_asserts.py``: splitting each assert into leaves and a residual (:class:`Site`), and
  rewriting the tests for the harness.
- ``code_unroll.py``: loops over literal cases, written out before the split.
- ``code_residual.py``: the residual's interpreter (``_Eval``), with its step and time budgets.
- ``code_plan.py``: :class:`TestPlan`, from the tests' text to the verdict: reading the
  harness's report and saying why an assert failed.

Their public names are importable from here too (``__all__``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from stillroom.verify.base import Row, Verdict, Verifier, VerifierInputError, verifiers
from stillroom.verify.code_asserts import Site
from stillroom.verify.code_extract import extract_code
from stillroom.verify.code_harness import GENERATOR, HARNESS, ITERABLE
from stillroom.verify.code_plan import TestPlan, _brief, _shadowed
from stillroom.verify.code_values import (
    INT_BITS,
    REPORT_BYTES,
    VALUE_BYTES,
    VALUE_ITEMS,
    Opaque,
    _shown_value,
    from_plain,
)
from stillroom.verify.sandbox import Limits, run_python

__all__ = [
    "GENERATOR",
    "HARNESS",
    "INSIDE_ASSERTS",
    "INT_BITS",
    "ITERABLE",
    "REPORT_BYTES",
    "VALUE_BYTES",
    "VALUE_ITEMS",
    "CodeVerifier",
    "Opaque",
    "Site",
    "TestPlan",
    "extract_code",
    "from_plain",
]

INSIDE_ASSERTS = ("allow", "fail")


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


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
        disk_mb: int = 16,
        output_bytes: int = 64_000,
        inside_asserts: str = "allow",
    ):
        super().__init__(answer_column)
        self.tests_column = tests_column
        self.required_columns = (tests_column,)
        self.limits = Limits(  # ValueError naming the option when one is not positive
            cpu_seconds=cpu_seconds,
            wall_seconds=wall_seconds,
            memory_mb=memory_mb,
            max_processes=max_processes,
            file_size_mb=file_size_mb,
            disk_mb=disk_mb,
            output_bytes=output_bytes,
        )
        if inside_asserts not in INSIDE_ASSERTS:
            raise ValueError(
                f"inside_asserts must be one of {', '.join(INSIDE_ASSERTS)}, got {inside_asserts!r}"
            )
        # "fail": an assert whose truth had to be computed inside the sandbox (see
        # docs/sandbox.md) fails the row; "allow" counts it in the verdict's details.
        self.inside_asserts = inside_asserts

    def check_row(self, row: Row) -> str | None:
        problem = super().check_row(row)
        if problem:
            return problem
        try:
            self._tests(row)
        except VerifierInputError as exc:
            return str(exc)
        return None

    def _tests(self, row: Row) -> TestPlan | list[tuple[str, str]]:
        """The row's tests: a plan of asserts or (input, output) pairs."""
        tests: Any = row.get(self.tests_column)
        column = f"`{self.tests_column}`"
        if isinstance(tests, str):
            if not tests.strip():
                raise VerifierInputError(f"the {column} column is empty")
            return TestPlan.of(tests, column, inside_asserts=self.inside_asserts)
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

    def verify_answer(self, row: Row) -> Verdict:
        problem = self.check_row(row)
        if problem:
            raise VerifierInputError(problem)
        code = extract_code(str(row[self.answer_column]))
        tests = self._tests(row)
        if isinstance(tests, TestPlan):
            shadowed = _shadowed(tests, code)
            if shadowed:
                names = ", ".join(f"`{name}`" for name in shadowed)
                return Verdict(
                    False,
                    f"the answer defines {names} for its module, which the tests use as the "
                    "built-in: the verifier evaluates the tests' "
                    f"{names} itself and cannot check such an answer (rename the answer's "
                    "function, or the task's)",
                    {"shadowed": shadowed},
                )
            result = run_python(
                HARNESS,
                files={"solution.py": code, "steps.json": json.dumps({"steps": tests.steps})},
                limits=replace(
                    self.limits, output_bytes=max(self.limits.output_bytes, REPORT_BYTES)
                ),
            )
            return tests.judge(result, self.limits)
        for i, (stdin, expected) in enumerate(tests):
            result = run_python(code, stdin=stdin, limits=self.limits)
            where = f"test {i + 1}/{len(tests)}"
            details = {"test": i, "sandbox": _brief(result)}
            if not result.ok:
                return Verdict(False, f"{where}: {result.reason}", details)
            if result.stdout_truncated:
                return Verdict(
                    False,
                    f"{where}: output over {self.limits.output_bytes} bytes (cut there)",
                    details,
                )
            got = _normalize(result.stdout)
            if got != _normalize(expected):
                details.update(expected=expected, got=result.stdout)
                return Verdict(
                    False,
                    f"{where}: wrong output: expected {_shown_value(expected.strip())}, "
                    f"got {_shown_value(result.stdout.strip())}",
                    details,
                )
        return Verdict(True, f"all {len(tests)} stdin/stdout tests passed")
