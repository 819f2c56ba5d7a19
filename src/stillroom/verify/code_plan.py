"""A row's asserts from the tests' text to the verdict: :class:`TestPlan`.

:meth:`TestPlan.of` parses the tests, writes literal case loops out
(:mod:`~stillroom.verify.code_unroll`) and splits every assert
(:mod:`~stillroom.verify.code_asserts`): the steps go to the harness, the sites (residuals) stay
here. :meth:`TestPlan.judge` reads the harness's report strictly (:class:`_Report`: one record
per line, steps in order, every value well formed; a damaged or forged report fails the row and
never raises), evaluates each reported execution's residual
(:mod:`~stillroom.verify.code_residual`) and says why an assert failed. Also :func:`_shadowed`,
which finds the names an answer defines that the tests use as built-ins.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from stillroom.verify.base import Verdict, VerifierInputError
from stillroom.verify.code_asserts import (
    Site,
    _bound,
    _is_leaf,
    _names,
    _RaisedAsserts,
    _Rewriter,
)
from stillroom.verify.code_residual import _CHECK_SECONDS, _TOTAL_TICKS, _Eval, _Fail
from stillroom.verify.code_unroll import _Unroller
from stillroom.verify.code_values import (
    _PLAIN_KINDS,
    REPORT_BYTES,
    Opaque,
    _clip,
    _leaf_value,
    _Problem,
    _shown_value,
    _Use,
)
from stillroom.verify.sandbox import Limits, SandboxResult, limit_reached


@dataclass(frozen=True)
class TestPlan:
    """The tests as the harness gets them (``steps``: one source per top-level statement, with
    every assert rewritten into the evaluation of its leaves) and what only the verifier knows
    (``sites``: the residuals)."""

    steps: list[str]
    lines: list[int]  # the line in the tests of each step
    sources: list[str]  # each step as written
    sites: list[Site]
    inside_asserts: str = "allow"
    names: dict[str, Any] = field(default_factory=dict)  # what a residual's names mean here

    @classmethod
    def of(cls, tests: str, column: str = "`tests`", inside_asserts: str = "allow") -> TestPlan:
        """The plan of ``tests`` (cached: a row is checked before it is verified, and rejection
        sampling verifies many answers against one row's tests; a plan is never changed)."""
        return _plan_of(tests, column, inside_asserts)

    @classmethod
    def _build(cls, tests: str, column: str, inside_asserts: str) -> TestPlan:
        try:
            tree = ast.parse(tests)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            message = getattr(exc, "msg", None) or str(exc)
            raise VerifierInputError(
                f"{column}: not valid Python: {message}" + (f" (line {line})" if line else "")
            ) from None
        tree = _RaisedAsserts().visit(tree)
        tree = _Unroller(tree).run()
        if not any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
            raise VerifierInputError(
                f"{column} holds no assert statement, so nothing in them could fail: the "
                "verdict comes from asserts only. unittest-style tests (TestCase classes, "
                "unittest.main) and tests that raise or print instead of asserting are not "
                "supported; write them as asserts, e.g. `assert add(1, 2) == 3`, or "
                "`def check(candidate):` with asserts, then `check(add)`"
            )
        sites: list[Site] = []
        names = _names(tree)
        rewriter = _Rewriter(tests, sites, names)
        steps = []
        for statement in tree.body:
            rewritten = rewriter.visit(copy.deepcopy(statement))
            module = ast.Module(rewritten if isinstance(rewritten, list) else [rewritten], [])
            steps.append(ast.unparse(ast.fix_missing_locations(module)))
        sources = [ast.get_source_segment(tests, s) or ast.unparse(s) for s in tree.body]
        lines = [s.lineno for s in tree.body]
        return cls(steps, lines, sources, sites, inside_asserts, names)

    def judge(self, result: SandboxResult, limits: Limits) -> Verdict:
        """The verdict from the harness's report and how the program ended; never raises."""
        report = _Report(self, limits)
        try:
            problem = report.read(result.stdout)
        except Exception as exc:  # noqa: BLE001  (a report must never crash the verifier)
            problem = f"it could not be read ({type(exc).__name__})"
        details: dict[str, Any] = {"sandbox": _brief(result)}
        details["asserts"] = report.counts()
        passed, total = details["asserts"]["passed"], details["asserts"]["total"]
        tally = f"{passed} of {total} asserts passed"
        if problem and result.ok:
            return Verdict(False, f"the test report is damaged or forged: {problem}", details)
        if result.stdout_truncated:
            return Verdict(
                False,
                f"{tally}; the test report is over {REPORT_BYTES} bytes (the asserts reported "
                "too many or too large values)",
                details,
            )
        if report.failure:
            return Verdict(False, f"{tally}; {report.failure}", details)
        if not report.done:  # killed, or it ended the harness: the report stops short
            running = report.steps_seen
            where = (
                "the solution"
                if running == 0
                else f"tests line {self.lines[running - 1]}"
                if running <= len(self.lines)
                else "the end of the tests"
            )
            how = "exit 0" if result.reason == "ok" else result.reason
            return Verdict(
                False,
                f"{tally}; the program ended in {where}, before the tests did: {how}",
                details,
            )
        if not result.ok:
            return Verdict(False, f"{tally}; after the tests: {result.reason}", details)
        for index, site in enumerate(self.sites):
            if site.leaves and not report.complete[index]:
                return Verdict(False, f"{tally}; {report.never_ran(index)}", details)
        inside = details["asserts"]["checked_inside"]
        if inside and self.inside_asserts == "fail":
            index = next(i for i, why in enumerate(report.inside) if why)
            site = self.sites[index]
            return Verdict(
                False,
                f"{tally}; tests line {site.line}: `{_clip(site.source)}` was checked inside "
                f"the sandbox ({report.inside[index]}), and inside_asserts is 'fail'",
                details,
            )
        note = f" ({inside} checked inside the sandbox)" if inside else ""
        return Verdict(True, f"{total} of {total} asserts passed{note}", details)


def _shadowed(plan: TestPlan, answer: str) -> list[str]:
    """The names the tests use as built-ins (or ``math``) that the answer defines for its
    module: the tests then meant the answer's function (a task to write ``sorted``?) or the
    answer wants its own ``abs`` called with the expected value. Either way the assert cannot
    be checked as written."""
    tree = _parse(answer)
    if tree is None:
        return []
    defined: set[str] = set()
    pending: list[ast.AST] = list(ast.iter_child_nodes(tree))
    while pending:  # module level, including inside if/for/try blocks, but not in functions
        node = pending.pop()
        if isinstance(node, ast.Import) and all(a.name == "math" for a in node.names):
            defined.update(a.asname for a in node.names if a.asname and a.asname != "math")
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
            continue
        defined.update(_bound(node) if not isinstance(node, ast.arg) else [])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Only what it declares global lands in the module.
            for inner in ast.walk(node):
                if isinstance(inner, ast.Global):
                    defined.update(inner.names)
            continue
        if not isinstance(node, ast.ClassDef):
            pending.extend(ast.iter_child_nodes(node))
    used = {
        node.id
        for site in plan.sites
        for node in ast.walk(site.residual)
        if isinstance(node, ast.Name) and node.id in plan.names
    }
    return sorted(used & defined)


def _parse(source: str | None) -> ast.AST | None:
    if source is None:
        return None
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _brief(result: SandboxResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "timed_out": result.timed_out,
        "reason": result.reason,
        "stderr": result.stderr[-2000:],
    }


class _Report:
    """Reads the harness's records, strictly: one record per line, steps in order, each site
    known, every value well formed, nothing after the end. Anything else: damaged or forged."""

    def __init__(self, plan: TestPlan, limits: Limits):
        self.plan, self.limits = plan, limits
        sites = len(plan.sites)
        self.steps_seen = 0
        self.done = False
        self.solution_failed = False
        self.complete = [0] * sites  # executions in which every leaf it needed had a value
        self.raised = [""] * sites  # the last exception that left it, when one did
        self.failed = [False] * sites
        self.inside = [site.inside for site in plan.sites]
        self.failure = ""  # the first failure, as said in the reason
        self.budget = [_TOTAL_TICKS, time.monotonic() + _CHECK_SECONDS]  # steps, deadline

    def counts(self) -> dict[str, int]:
        held = checked = inside = no_leaves = 0
        for index, site in enumerate(self.plan.sites):
            if self.failed[index]:
                continue
            if not site.leaves:
                no_leaves += 1
                held += self.done  # holds unless it ran false (it may never run)
            elif self.complete[index]:
                held += 1
                checked += 1
                inside += bool(self.inside[index])
        return {
            "passed": held,
            "total": len(self.plan.sites),
            "checked_outside": checked - inside,
            "checked_inside": inside,
            "without_leaves": no_leaves,
        }

    def never_ran(self, index: int) -> str:
        site = self.plan.sites[index]
        where = f"tests line {site.line}: `{_clip(site.source)}`"
        if self.raised[index]:
            return (
                f"{where} never completed: each time, {self.raised[index]} left it (and the "
                "tests went on)"
            )
        return f"{where} never ran (tests must call their test functions, e.g. `check(add)`)"

    def read(self, text: str) -> str:
        """'' when the report is well formed, else what is wrong with it."""
        for number, line in enumerate(text.splitlines(), 1):
            if self.done:
                return "records after the end"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                return f"line {number} is not a record"
            if type(record) is not dict:
                return f"line {number} is not a record"
            problem = self._take(record)
            if problem:
                return f"line {number}: {problem}"
        return ""

    def _take(self, record: dict[str, Any]) -> str:
        keys = set(record)
        if keys == {"done"}:
            # Every step, or only the solution's when it failed (the tests would only fail on).
            expected = 1 if self.solution_failed else len(self.plan.steps) + 1
            if type(record["done"]) is not int or record["done"] != self.steps_seen:
                return "an end that does not match the steps"
            if self.steps_seen != expected:
                return "an end before every step ran"
            self.done = True
            return ""
        if "step" in keys:
            step = record["step"]
            if type(step) is not int or step != self.steps_seen:
                return f"step {step!r} where step {self.steps_seen} was due"
            if step > len(self.plan.steps) or (self.solution_failed and step > 0):
                return f"step {step} does not exist"
            if keys == {"step", "ok"} and record["ok"] is True:
                self.steps_seen += 1
                return ""
            if keys != {"step", "error", "line"} or type(record["error"]) is not str:
                return "a malformed step"
            if not (record["line"] is None or type(record["line"]) is int):
                return "a malformed step"
            self.steps_seen += 1
            self.solution_failed = step == 0
            self._fail(self._step_error(step, record["error"], record["line"]))
            return ""
        if "site" in keys:
            index = record["site"]
            if type(index) is not int or not 0 <= index < len(self.plan.sites):
                return f"no assert number {index!r}"
            if self.steps_seen == 0 or self.solution_failed:
                return "an assert reported while no test ran"
            if keys == {"site", "raised"} and type(record["raised"]) is str:
                self.raised[index] = record["raised"][:300] or "an exception"
                return ""
            if keys != {"site", "leaves", "pairs"}:
                return f"assert {index}: a malformed record"
            return self._execution(index, record["leaves"], record["pairs"])
        return "an unknown record"

    def _execution(self, index: int, leaves: Any, pairs: Any) -> str:
        """One complete execution of assert ``index``: its residual is evaluated here."""
        site = self.plan.sites[index]
        if time.monotonic() > self.budget[1]:
            return f"it takes more than {_CHECK_SECONDS:g} s to check"
        if type(leaves) is not list or len(leaves) != len(site.leaves):
            return f"assert {index}: reported with the wrong number of values"
        if type(pairs) is not list or len(pairs) != len(site.pairs):
            return f"assert {index}: reported with the wrong number of comparisons"
        if not all(p is None or type(p) is bool for p in pairs):
            return f"assert {index}: a malformed comparison"
        use = _Use()
        try:
            values = [_leaf_value(v, use) for v in leaves]
        except Exception as exc:  # noqa: BLE001  (ValueError, TypeError, ArithmeticError ...)
            return f"assert {index}: a malformed value ({type(exc).__name__}: {_clip(str(exc), 80)})"
        facts = dict(zip(site.pairs, pairs, strict=True))
        evaluator = _Eval(site, values, facts, self.plan.names, use, self.budget)
        why = ""
        try:
            if not evaluator.truth(evaluator.ev(site.residual, {})):
                why = _why_false(evaluator, site, values)
        except _Fail as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001  (TypeError on an opaque value, ZeroDivision ...)
            why = _why_raised(site, values, exc)
        if site.leaves:
            self.complete[index] += 1
        if use.inside and not self.inside[index]:
            self.inside[index] = use.inside
        if why:
            self.failed[index] = True
            if site.message:
                why = f"{_clip(site.message, 100)} ({why})"
            self._fail(f"tests line {site.line}: `{_clip(site.source)}`: AssertionError: {why}")
        return ""

    def _step_error(self, step: int, error: str, line: int | None) -> str:
        error = error[:300]
        hint = limit_reached(error, self.limits)
        if hint:
            error = f"{hint}: {error}"
        where = f" (solution.py line {line})" if line else ""
        if step == 0:
            return f"the solution failed: {error}{where}"
        statement = _clip(self.plan.sources[step - 1].splitlines()[0])
        return f"tests line {self.plan.lines[step - 1]}: `{statement}` raised {error}{where}"

    def _fail(self, why: str) -> None:
        self.failure = self.failure or why


def _why_false(evaluator: _Eval, site: Site, values: list[Any]) -> str:
    """Why an assert that evaluated to False did: got/expected for ``x == <expected>``, else
    the values of its leaves."""
    residual = site.residual
    if (
        isinstance(residual, ast.Compare)
        and len(residual.ops) == 1
        and isinstance(residual.ops[0], ast.Eq)
    ):
        sides = [residual.left, residual.comparators[0]]
        has = [any(_is_leaf(n) for n in ast.walk(side)) for side in sides]
        if has[0] != has[1]:
            got, expected = (sides[0], sides[1]) if has[0] else (sides[1], sides[0])
            try:
                got_value = evaluator.ev(got, {})
                expected_value = evaluator.ev(expected, {})
            except Exception:  # noqa: BLE001
                pass
            else:
                return f"got {_shown_value(got_value)}, expected {_shown_value(expected_value)}"
    shown = [
        f"`{source}` = {_shown_value(value, 80)}"
        for source, value in zip(site.leaves, values, strict=True)
        if type(value) is not _Problem
    ][:4]
    return "it is false" + (f" ({', '.join(shown)})" if shown else "")


def _why_raised(site: Site, values: list[Any], exc: Exception) -> str:
    opaque = [
        (source, value.kind)
        for source, value in zip(site.leaves, values, strict=True)
        if type(value) is Opaque
    ]
    if opaque and isinstance(exc, TypeError):
        source, kind = opaque[0]
        return (
            f"`{source}` returned an object of type {kind}, which the verifier cannot check "
            f"outside the sandbox ({exc}): values an assert checks must be plain data "
            f"({_PLAIN_KINDS})"
        )
    return f"checking it raised {type(exc).__name__}: {_clip(str(exc), 200)}"


@functools.lru_cache(maxsize=256)
def _plan_of(tests: str, column: str, inside_asserts: str) -> TestPlan:
    return TestPlan._build(tests, column, inside_asserts)
