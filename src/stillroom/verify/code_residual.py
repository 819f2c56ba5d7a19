"""The residual's interpreter (:class:`_Eval`): an assert's residual evaluated by the verifier,
with the values its leaves reported in the sandbox put in the leaves' places.

It takes only the node types the splitter leaves outside (``code_asserts``), gives them Python's
own semantics, and calls the guarded names of :mod:`~stillroom.verify.code_builtins`; the
residual's text comes from the tests and its values are plain data or
:class:`~stillroom.verify.code_values.Opaque`, so nothing the answer did runs here. Identity, and
a comparison of two objects that are not plain data, can only be known in the sandbox: taken from
its report and counted as checked inside (``_Use``). Steps and time are budgeted (``_TICKS`` per
execution of an assert, ``_TOTAL_TICKS`` and ``_CHECK_SECONDS`` per report), so a forged report
cannot keep the verifier busy; an assert that does not hold raises :class:`_Fail`.
"""

from __future__ import annotations

import ast
import operator
import re
import time
from collections.abc import Callable
from typing import Any

from stillroom.verify.code_asserts import _AST_OPS, _LEAF, Site, _is_leaf, _leaf_index
from stillroom.verify.code_builtins import _MATH_MODULE, _STR_METHODS, _binop, _guard_str_method
from stillroom.verify.code_values import (
    _MAX_ITEMS,
    Opaque,
    _has_opaque,
    _no_opaque,
    _Problem,
    _Use,
)

_TICKS = 1_000_000  # steps of the residual's interpreter for one execution of an assert
_TOTAL_TICKS = 10_000_000  # and for the whole report
_CHECK_SECONDS = 10.0  # and its time: a forged report cannot keep the verifier busy

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
    "is": operator.is_,
    "is not": operator.is_not,
}


class _Fail(Exception):
    """The assert does not hold; the message says why."""


class _Eval:
    """The residual's interpreter: the nodes the splitter leaves outside, with the leaves'
    values, Python's own semantics on them, and guards where a value from the sandbox could
    make a step too costly."""

    def __init__(
        self,
        site: Site,
        values: list[Any],
        facts: dict[tuple[int, str, int], bool | None],
        names: dict[str, Any],
        use: _Use,
        budget: list[Any],
    ):
        self.site, self.values, self.facts, self.names = site, values, facts, names
        self.use, self.budget = use, budget
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        self.budget[0] -= 1
        if self.ticks > _TICKS or self.budget[0] < 0:
            raise _Fail("checking it outside the sandbox took too many steps")
        if not self.budget[0] & 4095 and time.monotonic() > self.budget[1]:
            raise _Fail("checking the report outside the sandbox took too long")

    def truth(self, value: Any) -> bool:
        return bool(value)

    def ev(self, node: ast.AST, scope: dict[str, Any]) -> Any:  # noqa: C901  (one node type each)
        self.tick()
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in scope:
                return scope[node.id]
            if node.id.startswith(_LEAF):
                index = int(node.id[1:])
                value = self.values[index]
                if type(value) is _Problem:
                    raise _Fail(value.why.replace("{leaf}", self.site.leaves[index]))
                return value
            return self.names[node.id]
        if isinstance(node, ast.BoolOp):
            result: Any = None
            for value_node in node.values:
                result = self.ev(value_node, scope)
                if self.truth(result) != isinstance(node.op, ast.And):
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.ev(node.operand, scope)
            if isinstance(node.op, ast.Not):
                return not self.truth(operand)
            unary: dict[type, Callable[[Any], Any]] = {
                ast.USub: operator.neg,
                ast.UAdd: operator.pos,
                ast.Invert: operator.invert,
            }
            return unary[type(node.op)](operand)
        if isinstance(node, ast.BinOp):
            return _binop(node.op, self.ev(node.left, scope), self.ev(node.right, scope))
        if isinstance(node, ast.Compare):
            return self.compare(node, scope)
        if isinstance(node, ast.IfExp):
            branch = node.body if self.truth(self.ev(node.test, scope)) else node.orelse
            return self.ev(branch, scope)
        if isinstance(node, ast.Call):
            function = self.ev(node.func, scope)
            args: list[Any] = []
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    args.extend(self.ev(arg.value, scope))
                else:
                    args.append(self.ev(arg, scope))
            kwargs = {k.arg: self.ev(k.value, scope) for k in node.keywords if k.arg}
            return function(*args, **kwargs)
        if isinstance(node, ast.Attribute):
            target = self.ev(node.value, scope)
            if target is _MATH_MODULE or (type(target) is str and node.attr in _STR_METHODS):
                method = getattr(target, node.attr)
                return _guard_str_method(node.attr, method) if type(target) is str else method
            raise TypeError(f"attribute {node.attr!r} is not computed outside the sandbox")
        if isinstance(node, ast.Subscript):
            target = self.ev(node.value, scope)
            if type(target) is Opaque:
                raise TypeError(f"an object of type {target.kind} is not subscriptable outside")
            return target[self.ev(node.slice, scope)]
        if isinstance(node, ast.Slice):
            return slice(
                *(self.ev(p, scope) if p is not None else None
                  for p in (node.lower, node.upper, node.step))
            )
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    items.extend(self.ev(element.value, scope))
                else:
                    items.append(self.ev(element, scope))
            return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            return {
                self.ev(k, scope): self.ev(v, scope)
                for k, v in zip(node.keys, node.values, strict=True)
                if k is not None
            }
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self.comprehension(node, scope)
        if isinstance(node, ast.Lambda):
            params = [a.arg for a in node.args.args]

            def function_(*args: Any) -> Any:
                if len(args) != len(params):
                    raise TypeError("wrong number of arguments")
                return self.ev(node.body, {**scope, **dict(zip(params, args, strict=True))})

            return function_
        if isinstance(node, ast.JoinedStr):
            return "".join(self.ev(v, scope) for v in node.values)
        if isinstance(node, ast.FormattedValue):
            value = self.ev(node.value, scope)
            _no_opaque(value)
            value = {-1: value, 115: str(value), 114: repr(value), 97: ascii(value)}[
                node.conversion
            ]
            spec = self.ev(node.format_spec, scope) if node.format_spec is not None else ""
            widths = [int(n) for n in re.findall(r"\d+", spec)]
            if widths and max(widths) > _MAX_ITEMS:
                raise OverflowError("a format too wide to compute outside the sandbox")
            return format(value, spec)
        raise TypeError(f"{type(node).__name__} is not evaluated outside the sandbox")

    def comprehension(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        assert isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp))
        out: list[Any] = []

        def walk(k: int, inner: dict[str, Any]) -> None:
            if k == len(node.generators):
                if isinstance(node, ast.DictComp):
                    out.append((self.ev(node.key, inner), self.ev(node.value, inner)))
                else:
                    out.append(self.ev(node.elt, inner))
                return
            generator = node.generators[k]
            for item in self.ev(generator.iter, inner):
                self.tick()
                bound = dict(inner)
                _bind(generator.target, item, bound)
                if all(self.truth(self.ev(test, bound)) for test in generator.ifs):
                    walk(k + 1, bound)

        walk(0, scope)
        if isinstance(node, ast.DictComp):
            return dict(out)
        if isinstance(node, ast.SetComp):
            return set(out)
        return out if isinstance(node, ast.ListComp) else iter(out)

    def compare(self, node: ast.Compare, scope: dict[str, Any]) -> bool:
        left_node = node.left
        left = self.ev(left_node, scope)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _AST_OPS[type(op_node)]
            right = self.ev(right_node, scope)
            if not self.holds(left_node, left, op, right_node, right):
                return False
            left_node, left = right_node, right
        return True

    def holds(self, left_node: ast.AST, left: Any, op: str, right_node: ast.AST, right: Any) -> bool:
        if _is_leaf(left_node) and _is_leaf(right_node):
            pair = (_leaf_index(left_node), op, _leaf_index(right_node))
            if op in ("is", "is not") or (_has_opaque(left) and _has_opaque(right)):
                # Identity, or two objects that are not plain data: only the sandbox saw them.
                fact = self.facts.get(pair)
                if fact is None:
                    raise _Fail(
                        f"`{self.site.leaves[pair[0]]} {op} {self.site.leaves[pair[2]]}` "
                        "was not reported"
                    )
                kinds = [v.kind if type(v) is Opaque else type(v).__name__ for v in (left, right)]
                self.use.inside = self.use.inside or (
                    "identity of two objects"
                    if op in ("is", "is not")
                    else f"a comparison of objects of types {kinds[0]} and {kinds[1]}"
                )
                return fact
        return bool(_COMPARE[op](left, right))


def _bind(target: ast.expr, value: Any, scope: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    assert isinstance(target, (ast.Tuple, ast.List))
    items = list(value)
    if len(items) != len(target.elts):
        raise ValueError(f"cannot unpack {len(items)} values into {len(target.elts)}")
    for element, item in zip(target.elts, items, strict=True):
        _bind(element, item, scope)
