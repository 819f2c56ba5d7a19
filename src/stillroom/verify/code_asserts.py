"""The tests' asserts, split: each into *leaves* (the parts that need the answer, evaluated in
the sandbox in the assert's own frame) and a *residual* (the rest, kept and evaluated by the
verifier), and the tests rewritten for the harness.

:func:`_names` says what a residual's names mean (those of
:mod:`~stillroom.verify.code_builtins`, less what the tests bind themselves); :class:`_Splitter`
makes a leaf of every largest part that cannot be evaluated from the tests' text alone;
:class:`_Rewriter` replaces each assert by the evaluation of its leaves and a call of the
harness's hooks (``_MARK`` of :mod:`~stillroom.verify.code_harness`) and records a :class:`Site`,
whose residual never leaves the verifier. A leaf stands in a residual as the name ``_LEAF`` +
its index, which :mod:`~stillroom.verify.code_residual` replaces by the reported value.
``if c: raise AssertionError(msg)`` is read as an assert (:class:`_RaisedAsserts`). The generic
helpers here (:func:`_bound`, :func:`_target_names`, :func:`_uses`) also serve
:mod:`~stillroom.verify.code_unroll`.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from typing import Any

from stillroom.verify.code_builtins import (
    _CONSUMERS,
    _FUNCTIONS,
    _MATH,
    _MATH_MODULE,
    _STR_METHODS,
    _g_isinstance,
    _g_type,
)
from stillroom.verify.code_harness import _MARK, GENERATOR, ITERABLE
from stillroom.verify.code_values import _clip

_AST_OPS: dict[type, str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}


def _names(tests: ast.AST) -> dict[str, Any]:
    """The names a residual may use, and what they mean outside: the functions of
    :mod:`~stillroom.verify.code_builtins` and ``math`` (and names imported from it), less
    every name the tests bind in another way (those are the tests' own, so they are leaves).
    What the answer binds does not count: in the tests, ``abs`` is the built-in (see
    :func:`~stillroom.verify.code_plan._shadowed`)."""
    names: dict[str, Any] = {**_FUNCTIONS, "math": _MATH_MODULE}
    taken: set[str] = set()
    for node in ast.walk(tests):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if alias.name == "math":
                    names[bound] = _MATH_MODULE
                else:
                    taken.add(bound)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or alias.name
                if node.module == "math" and node.level == 0 and alias.name in _MATH:
                    names[bound] = _MATH[alias.name]
                else:
                    taken.add(bound)
        else:
            taken.update(_bound(node))
    for name in taken:
        names.pop(name, None)
    return names


def _bound(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names)
    if isinstance(node, ast.ExceptHandler) and node.name:
        return [node.name]
    if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
        return [node.name]
    if isinstance(node, ast.MatchMapping) and node.rest:
        return [node.rest]
    return []


_LEAF = "\0"  # a leaf in a residual: the Name "\0<index>"


def _is_leaf(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id.startswith(_LEAF)


def _leaf_index(node: ast.AST) -> int:
    assert isinstance(node, ast.Name)
    return int(node.id[1:])


class _Splitter:
    """Splits one assert's test into leaves (evaluated in the sandbox, in the assert's own
    frame) and a residual (evaluated here). A leaf is a largest part that cannot be evaluated
    from the tests' text alone: a name the tests or the answer bind, or a call, attribute or
    subscript of one, or anything the residual's interpreter does not take."""

    def __init__(self, names: dict[str, Any]):
        self.names = names
        self.leaves: list[ast.expr] = []
        self.conditional: list[bool] = []
        self.flags: list[int] = []
        self.pairs: list[tuple[int, str, int]] = []

    # -- what the verifier can evaluate by itself

    def outside(self, node: ast.AST | None, local: frozenset[str] = frozenset()) -> bool:
        if node is None:
            return True
        kind = type(node)
        if kind is ast.Constant:
            return True
        if kind is ast.Name:
            assert isinstance(node, ast.Name)
            return node.id in local or node.id in self.names
        if kind is ast.Attribute:
            assert isinstance(node, ast.Attribute)
            return self._attribute(node, local)
        if kind in (ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Tuple):
            return all(self.outside(child, local) for child in ast.iter_child_nodes(node)
                       if isinstance(child, ast.expr))
        if kind in (ast.List, ast.Set, ast.Starred, ast.Slice, ast.JoinedStr):
            return all(self.outside(child, local) for child in ast.iter_child_nodes(node)
                       if isinstance(child, ast.expr))
        if kind is ast.FormattedValue:
            assert isinstance(node, ast.FormattedValue)
            return self.outside(node.value, local) and self.outside(node.format_spec, local)
        if kind is ast.Dict:
            assert isinstance(node, ast.Dict)
            return None not in node.keys and all(
                self.outside(child, local) for child in (*node.keys, *node.values)
            )
        if kind is ast.Subscript:
            assert isinstance(node, ast.Subscript)
            return self.outside(node.value, local) and self.outside(node.slice, local)
        if kind is ast.Call:
            assert isinstance(node, ast.Call)
            return self._callee(node, local) and all(
                self.outside(a, local) for a in node.args
            ) and all(self.outside(k.value, local) for k in node.keywords)
        if kind in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
            return self._comprehension(node, local, split=False) is not None
        if kind is ast.Lambda:
            assert isinstance(node, ast.Lambda)
            params = _simple_params(node.args)
            return params is not None and self.outside(node.body, local | params)
        return False

    def _attribute(self, node: ast.Attribute, local: frozenset[str]) -> bool:
        value = node.value
        if isinstance(value, ast.Name) and value.id not in local:
            return self.names.get(value.id) is _MATH_MODULE and node.attr in _MATH
        return (
            isinstance(value, ast.Constant)
            and type(value.value) is str
            and node.attr in _STR_METHODS
        )

    def _callee(self, node: ast.Call, local: frozenset[str]) -> bool:
        """Whether the verifier may make this call itself (a function of ``_FUNCTIONS``)."""
        func = node.func
        if any(k.arg is None for k in node.keywords):
            return False
        if isinstance(func, ast.Attribute):
            return self._attribute(func, local)
        if not isinstance(func, ast.Name) or func.id in local or func.id not in self.names:
            return False
        target = self.names[func.id]
        if target is _g_isinstance:  # the class must be the tests' own text (a built-in type)
            return len(node.args) == 2 and not node.keywords and self.outside(node.args[1], local)
        if target is _g_type:
            return len(node.args) == 1 and not node.keywords
        if target is _MATH_MODULE:
            return False
        for keyword in node.keywords:  # key=lambda ...: evaluated outside, or not at all
            if isinstance(keyword.value, ast.Lambda) and not self.outside(keyword.value, local):
                return False
        return True

    def _comprehension(
        self, node: ast.AST, local: frozenset[str], split: bool, cond: bool = False
    ) -> ast.expr | None:
        """The comprehension as a residual (its iterables split when ``split``), or None when
        its element or conditions need the sandbox."""
        assert isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp))
        inner = local
        generators = []
        for k, generator in enumerate(node.generators):
            targets = _target_names(generator.target)
            if targets is None or generator.is_async:
                return None
            iterable = generator.iter
            if not self.outside(iterable, inner):
                if not split or _uses(iterable, inner - local):
                    return None
                iterable = self.split(iterable, cond or k > 0, ITERABLE)
            inner = inner | targets
            if not all(self.outside(test, inner) for test in generator.ifs):
                return None
            generators.append(ast.comprehension(generator.target, iterable, generator.ifs, 0))
        if isinstance(node, ast.DictComp):
            if not (self.outside(node.key, inner) and self.outside(node.value, inner)):
                return None
            return ast.DictComp(node.key, node.value, generators)
        if not self.outside(node.elt, inner):
            return None
        return type(node)(node.elt, generators)

    # -- the split

    def split(self, node: ast.expr, cond: bool = False, flags: int = 0) -> ast.expr:
        """The residual of ``node``; its leaves are added to ``self.leaves``. ``cond``: the
        node is evaluated only in some cases (after ``and``/``or``, in a branch of ``x if c
        else y``, or later in a chain of comparisons)."""
        if self.outside(node):
            return node
        if isinstance(node, ast.BoolOp):
            values = [self.split(v, cond or k > 0) for k, v in enumerate(node.values)]
            return ast.BoolOp(node.op, values)
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(node.op, self.split(node.operand, cond))
        if isinstance(node, ast.BinOp):
            return ast.BinOp(self.split(node.left, cond), node.op, self.split(node.right, cond))
        if isinstance(node, ast.IfExp):
            test = self.split(node.test, cond)
            return ast.IfExp(test, self.split(node.body, True), self.split(node.orelse, True))
        if isinstance(node, ast.Compare):
            operands = [self.split(node.left, cond)]
            for k, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
                contains = isinstance(op, (ast.In, ast.NotIn))
                operands.append(self.split(right, cond or k > 0, ITERABLE if contains else 0))
            for k, op in enumerate(node.ops):
                left, right = operands[k], operands[k + 1]
                if _is_leaf(left) and _is_leaf(right):
                    pair = (_leaf_index(left), _AST_OPS[type(op)], _leaf_index(right))
                    self.pairs.append(pair)
            return ast.Compare(operands[0], node.ops, operands[1:])
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elts = [self._element(e, cond) for e in node.elts]
            if isinstance(node, ast.Set):
                return ast.Set(elts)
            return ast.Tuple(elts, ast.Load()) if isinstance(node, ast.Tuple) else ast.List(
                elts, ast.Load()
            )
        if isinstance(node, ast.Dict) and None not in node.keys:
            keys: list[ast.expr | None] = [self.split(k, cond) for k in node.keys if k is not None]
            return ast.Dict(keys, [self.split(v, cond) for v in node.values])
        if isinstance(node, ast.Call) and self._callee(node, frozenset()):
            consumer = isinstance(node.func, ast.Name) and node.func.id in _CONSUMERS
            args = [
                self._element(a, cond)
                if isinstance(a, ast.Starred)
                else self.split(a, cond, ITERABLE if consumer else 0)
                for a in node.args
            ]
            keywords = [ast.keyword(k.arg, self.split(k.value, cond)) for k in node.keywords]
            return ast.Call(node.func, args, keywords)
        if isinstance(node, ast.Subscript):
            if self.outside(node.value):
                return ast.Subscript(node.value, self.split(node.slice, cond), ast.Load())
            mark = self._mark()
            value = self.split(node.value, cond)
            if not _is_leaf(value):  # e.g. sorted(candidate(x))[0]: the subscript is done here
                return ast.Subscript(value, self.split(node.slice, cond), ast.Load())
            self._undo(mark)  # x[0], candidate(x)[0]: one leaf
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            mark = self._mark()
            residual = self._comprehension(node, frozenset(), split=True, cond=cond)
            if residual is not None:
                return residual
            self._undo(mark)
        if isinstance(node, ast.JoinedStr) and all(
            not isinstance(v, ast.FormattedValue) or self.outside(v.format_spec)
            for v in node.values
        ):
            parts: list[ast.expr] = [
                ast.FormattedValue(self.split(v.value, cond), v.conversion, v.format_spec)
                if isinstance(v, ast.FormattedValue)
                else v
                for v in node.values
            ]
            return ast.JoinedStr(parts)
        return self._leaf(node, cond, flags)

    def _element(self, node: ast.expr, cond: bool) -> ast.expr:
        if isinstance(node, ast.Starred):
            return ast.Starred(self.split(node.value, cond, ITERABLE), ast.Load())
        return self.split(node, cond)

    def _leaf(self, node: ast.expr, cond: bool, flags: int) -> ast.Name:
        self.leaves.append(node)
        self.conditional.append(cond)
        self.flags.append(flags | (GENERATOR if isinstance(node, ast.GeneratorExp) else 0))
        return ast.Name(f"{_LEAF}{len(self.leaves) - 1}", ast.Load())

    def _mark(self) -> tuple[int, int]:
        return len(self.leaves), len(self.pairs)

    def _undo(self, mark: tuple[int, int]) -> None:
        leaves, pairs = mark
        del self.leaves[leaves:], self.conditional[leaves:], self.flags[leaves:]
        del self.pairs[pairs:]


def _simple_params(args: ast.arguments) -> frozenset[str] | None:
    if args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg or args.defaults:
        return None
    return frozenset(a.arg for a in args.args)


def _target_names(target: ast.expr) -> frozenset[str] | None:
    if isinstance(target, ast.Name):
        return frozenset([target.id])
    if isinstance(target, (ast.Tuple, ast.List)):
        names: frozenset[str] = frozenset()
        for element in target.elts:
            inner = _target_names(element)
            if inner is None:
                return None
            names |= inner
        return names
    return None


def _uses(node: ast.AST, names: frozenset[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _judges(node: ast.AST) -> bool:
    """Whether a leaf decides something itself (a comparison or a boolean operator in it, as
    in ``all(f(x) == y for x, y in cases)``): then the truth is computed inside the sandbox."""
    return any(
        isinstance(n, (ast.Compare, ast.BoolOp))
        or (isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not))
        for n in ast.walk(node)
    )


class _PlainCompares(ast.NodeTransformer):
    """Inside a leaf that judges, ``a == b`` → the harness's comparison on plain copies (an
    object that is always equal does not equal a plain value)."""

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if len(node.ops) != 1:
            return node
        op = ast.Constant(_AST_OPS[type(node.ops[0])])
        call = ast.Call(ast.Constant(_MARK["cmp"]), [node.left, op, node.comparators[0]], [])
        return ast.copy_location(call, node)


class _RaisedAsserts(ast.NodeTransformer):
    """``if <cond>: raise AssertionError(msg)`` is ``assert not <cond>, msg``: read as one."""

    def visit_If(self, node: ast.If) -> ast.stmt:
        self.generic_visit(node)
        if node.orelse or len(node.body) != 1 or not isinstance(node.body[0], ast.Raise):
            return node
        raised = node.body[0]
        exc, message = raised.exc, None
        if isinstance(exc, ast.Call) and not exc.keywords and len(exc.args) <= 1:
            message = exc.args[0] if exc.args else None
            exc = exc.func
        if raised.cause is not None or not (
            isinstance(exc, ast.Name) and exc.id == "AssertionError"
        ):
            return node
        test = ast.UnaryOp(ast.Not(), node.test)
        return ast.copy_location(ast.Assert(ast.copy_location(test, node.test), message), node)


@dataclass(frozen=True)
class Site:
    """One assert statement of the tests. ``residual`` never leaves the verifier."""

    line: int  # in the tests
    source: str
    residual: ast.expr
    leaves: tuple[str, ...] = ()  # the source of each leaf, for reasons
    conditional: tuple[bool, ...] = ()
    pairs: tuple[tuple[int, str, int], ...] = ()
    inside: str = ""  # why its truth is computed inside the sandbox, if it is
    message: str | None = None  # the assert's message, when the tests give it as a string


class _Rewriter(ast.NodeTransformer):
    """Each ``assert`` → the evaluation of its leaves in place and a report of their values."""

    def __init__(self, source: str, sites: list[Site], names: dict[str, Any]):
        self.source, self.sites, self.names = source, sites, names

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
        text = ast.get_source_segment(self.source, node) or ast.unparse(node)
        index = len(self.sites)
        splitter = _Splitter(self.names)
        residual = splitter.split(node.test)
        judging = [leaf for leaf in splitter.leaves if _judges(leaf)]
        inside = ""
        if judging:
            inside = f"`{_clip(ast.unparse(judging[0]), 60)}` decides it inside"
        message = node.msg.value if isinstance(node.msg, ast.Constant) else None
        self.sites.append(
            Site(
                node.lineno,
                text,
                residual,
                tuple(_clip(ast.unparse(leaf), 80) for leaf in splitter.leaves),
                tuple(splitter.conditional),
                tuple(splitter.pairs),
                inside,
                message if isinstance(message, str) else None,
            )
        )
        statements: list[ast.stmt] = []
        names = []
        for k, leaf in enumerate(splitter.leaves):
            name = f"_stillroom_{k}"
            names.append(ast.Name(name, ast.Load()))
            expression = copy.deepcopy(leaf)
            if isinstance(expression, ast.GeneratorExp):  # listed inside, iterated outside
                expression = ast.ListComp(expression.elt, expression.generators)
            if _judges(expression):
                expression = _PlainCompares().visit(expression)
            assign = ast.Assign([ast.Name(name, ast.Store())], expression)
            base = ast.Constant(_MARK["base"])  # BaseException itself, whatever the name means
            if splitter.conditional[k]:
                # Evaluated only in some cases: its error is a value, and counts only if the
                # residual needs it.
                error = ast.Call(
                    ast.Constant(_MARK["error"]), [ast.Name("_stillroom_e", ast.Load())], []
                )
                handler_body: list[ast.stmt] = [ast.Assign([ast.Name(name, ast.Store())], error)]
                handler = ast.ExceptHandler(base, "_stillroom_e", handler_body)
            else:
                # Always evaluated: its exception leaves the assert, as it would have.
                raised = ast.Call(ast.Constant(_MARK["raised"]), [ast.Constant(index)], [])
                handler = ast.ExceptHandler(base, None, [ast.Expr(raised), ast.Raise()])
            statements.append(ast.Try([assign], [handler], [], []))
        report = ast.Call(
            ast.Constant(_MARK["site"]),
            [
                ast.Constant(index),
                ast.Tuple(list(names), ast.Load()),
                ast.Constant(tuple(splitter.pairs)),  # type: ignore[arg-type]
                ast.Constant(tuple(splitter.flags)),  # type: ignore[arg-type]
            ],
            [],
        )
        statements.append(ast.Expr(report))
        if names:
            statements.append(ast.Delete([ast.Name(n.id, ast.Del()) for n in names]))
        for statement in statements:
            ast.copy_location(statement, node)
        return statements
