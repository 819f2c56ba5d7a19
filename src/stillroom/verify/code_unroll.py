"""Loops over literal cases, written out before the asserts are split (:class:`_Unroller`).

``for x, want in [(1, 2), (3, 4)]: assert f(x) == want`` would make ``want`` a leaf: a value in
the sandbox, which the answer could read from its caller's frame. Unrolled, the body appears once
per case with the case's values written in (``assert f(1) == 2``), so the expected values stay in
the residuals. Only where the unrolled code means the same; the conditions are in
:class:`_Unroller` and ``docs/sandbox.md`` ("Loops over literal cases are written out").
"""

from __future__ import annotations

import ast
import copy
from typing import Any

from stillroom.verify.code_asserts import _bound, _target_names, _uses

_UNROLL_ITEMS = 1000  # cases of one loop, at most
_UNROLL_NODES = 200_000  # nodes the unrolled copies of one loop may add, at most


def _pure(node: ast.AST) -> bool:
    """A literal: what the loop's cases are made of when they can be written into its body."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_pure(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _pure(k) for k in node.keys) and all(
            _pure(v) for v in node.values
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return isinstance(node.left, (ast.Constant, ast.UnaryOp)) and isinstance(
            node.right, ast.Constant
        )  # 1+2j
    return False


def _immutable(node: ast.AST) -> bool:
    return not any(isinstance(n, (ast.List, ast.Set, ast.Dict)) for n in ast.walk(node))


class _Unroller:
    """``for x, want in [(1, 2), (3, 4)]: assert f(x) == want`` → the body once per case, with
    the case's values written in: the expected values then stay in the residuals instead of
    being loop variables the answer could read from its caller's frame. Also for a module-level
    ``CASES = [...]`` used only as such loops' iterable (it is then not sent at all), ``zip``,
    ``enumerate``, ``range`` and ``.items()``. Only where the unrolled code means the same: the
    cases are literals, the body has no ``break``/``continue`` and does not rebind the loop's
    names or capture them in a function; a mutable case value used more than once in the body
    is assigned (it is an input the body may mutate) rather than written in."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.tables = self._tables()
        self.unresolved: set[str] = set()

    def run(self) -> ast.Module:
        body = self._statements(self.tree.body)
        # A table whose every use was unrolled is not needed in the sandbox.
        kept = [
            ast.copy_location(ast.Pass(), statement)
            if isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id in self.tables
            and statement.targets[0].id not in self.unresolved
            else statement
            for statement in body
        ]
        return ast.Module(kept, self.tree.type_ignores)

    def _tables(self) -> dict[str, ast.expr]:
        """Module-level names bound once to a literal list, tuple or dict and read only as a
        loop's cases."""
        tables: dict[str, ast.expr] = {}
        for statement in self.tree.body:
            if (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and isinstance(statement.value, (ast.List, ast.Tuple, ast.Dict))
                and _pure(statement.value)
            ):
                tables[statement.targets[0].id] = statement.value
        bound: dict[str, int] = {}
        for node in ast.walk(self.tree):
            for name in _bound(node):
                bound[name] = bound.get(name, 0) + 1
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    bound[name] = bound.get(name, 0) + 1
        allowed: set[int] = set()  # the Name nodes used as a loop's cases
        for node in ast.walk(self.tree):
            if isinstance(node, ast.For):
                allowed.update(id(n) for n in self._case_names(node.iter))
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Name)
                and node.id in tables
                and (
                    bound.get(node.id) != 1
                    or (isinstance(node.ctx, ast.Load) and id(node) not in allowed)
                )
            ):
                tables.pop(node.id, None)
        return tables

    def _case_names(self, iterable: ast.expr) -> list[ast.Name]:
        if isinstance(iterable, ast.Name):
            return [iterable]
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Name)
            and iterable.func.id in ("zip", "enumerate")
            and not iterable.keywords
        ):
            return [a for a in iterable.args if isinstance(a, ast.Name)]
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Attribute)
            and iterable.func.attr in ("items", "keys", "values")
            and isinstance(iterable.func.value, ast.Name)
            and not iterable.args
        ):
            return [iterable.func.value]
        return []

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in body:
            out.extend(self._statement(statement))
        return out

    def _statement(self, node: ast.stmt) -> list[ast.stmt]:
        if isinstance(node, ast.For):
            unrolled = self._unroll(node)
            if unrolled is not None:
                return self._statements(unrolled)
            for name in self._case_names(node.iter):
                self.unresolved.add(name.id)
        for field_name in ("body", "orelse", "finalbody"):
            inner = getattr(node, field_name, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                setattr(node, field_name, self._statements(inner))
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                handler.body = self._statements(handler.body)
        if isinstance(node, ast.Match):
            for case in node.cases:
                case.body = self._statements(case.body)
        return [node]

    def _cases(self, iterable: ast.expr) -> list[ast.expr] | None:
        if isinstance(iterable, (ast.List, ast.Tuple)):
            return list(iterable.elts) if _pure(iterable) else None
        if isinstance(iterable, ast.Name):
            table = self.tables.get(iterable.id)
            if isinstance(table, (ast.List, ast.Tuple)):
                return list(table.elts)
            return None
        if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
            table = self.tables.get(getattr(iterable.func.value, "id", ""))
            if not isinstance(table, ast.Dict) or iterable.args:
                return None
            keys = [k for k in table.keys if k is not None]
            if iterable.func.attr == "keys":
                return keys
            if iterable.func.attr == "values":
                return list(table.values)
            return [ast.Tuple([k, v], ast.Load()) for k, v in zip(keys, table.values, strict=True)]
        if not (isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name)):
            return None
        if iterable.keywords:
            return None
        function, args = iterable.func.id, iterable.args
        bounds = [a.value for a in args if isinstance(a, ast.Constant) and type(a.value) is int]
        if function == "range" and len(bounds) == len(args) and 1 <= len(args) <= 3:
            if len(bounds) == 3 and bounds[2] == 0:
                return None
            numbers = range(*bounds)
            if len(numbers) > _UNROLL_ITEMS:
                return None
            return [ast.Constant(n) for n in numbers]
        columns = [self._cases(a) for a in args]
        if any(c is None for c in columns) or not columns:
            return None
        if function == "zip":
            rows = zip(*[c for c in columns if c is not None], strict=False)
            return [ast.Tuple(list(row), ast.Load()) for row in rows]
        if function == "enumerate" and len(columns) == 1 and columns[0] is not None:
            return [ast.Tuple([ast.Constant(i), e], ast.Load()) for i, e in enumerate(columns[0])]
        return None

    def _unroll(self, node: ast.For) -> list[ast.stmt] | None:
        if node.orelse or not any(isinstance(n, ast.Assert) for n in ast.walk(node)):
            return None
        names = _target_names(node.target)
        cases = self._cases(node.iter)
        if names is None or cases is None or len(cases) > _UNROLL_ITEMS:
            return None
        size = sum(1 for _ in ast.walk(ast.Module(node.body, [])))
        if size * len(cases) > _UNROLL_NODES or not self._plain_body(node.body, names):
            return None
        bindings = []
        for case in cases:
            bound = _destructure(node.target, case)
            if bound is None:
                return None
            bindings.append(bound)
        whole, keyed = _loads(node.body, names)
        out: list[ast.stmt] = []
        for bound in bindings:
            written: dict[str, ast.expr] = {}
            folded: dict[str, dict[Any, ast.expr]] = {}
            for name in sorted(names):
                value = bound[name]
                keys = {k: n for (owner, k), n in keyed.items() if owner == name}
                folds = _folds(value, keys) if not whole[name] else None
                if folds is not None:  # case["out"], case[1]: the item itself is written in
                    for key, item in list(folds.items()):
                        if keys[key] > 1 and not _immutable(item):
                            # A mutable item read more than once (an input the body may
                            # mutate): bound to a name of its own; the others written in.
                            temp = f"_stillroom_{name}_{len(out)}"
                            assign = ast.Assign([ast.Name(temp, ast.Store())], copy.deepcopy(item))
                            out.append(ast.copy_location(assign, node))
                            folds[key] = ast.Name(temp, ast.Load())
                    folded[name] = folds
                elif whole[name] + sum(keys.values()) > 1 and not _immutable(value):
                    # A mutable input read more than once (the body may mutate it): assigned.
                    assign = ast.Assign([ast.Name(name, ast.Store())], copy.deepcopy(value))
                    out.append(ast.copy_location(assign, node))
                else:
                    written[name] = value
            for statement in node.body:
                out.append(_Substitute(written, folded).visit(copy.deepcopy(statement)))
        outside = sum(
            1
            for n in ast.walk(self.tree)
            if isinstance(n, ast.Name) and n.id in names and isinstance(n.ctx, ast.Load)
        ) - sum(whole.values()) - sum(keyed.values())
        if bindings and outside > 0:  # read after the loop: bound as the loop would leave it
            last = ast.Assign([copy.deepcopy(node.target)], copy.deepcopy(cases[-1]))
            out.append(ast.copy_location(last, node))
        return [ast.fix_missing_locations(s) for s in out] if out else [ast.Pass()]

    @staticmethod
    def _plain_body(body: list[ast.stmt], names: frozenset[str]) -> bool:
        pending: list[ast.AST] = list(body)
        while pending:
            node = pending.pop()
            if isinstance(node, (ast.Break, ast.Continue)):
                return False
            if isinstance(node, (ast.Global, ast.Nonlocal)) and set(node.names) & names:
                return False
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                if _uses(node, names):
                    return False
                continue
            if set(_bound(node)) & names:
                return False
            if isinstance(node, (ast.For, ast.While, ast.AsyncFor)):
                # their break/continue are their own; what else they hold still counts
                pending.extend(
                    n
                    for n in ast.walk(node)
                    if n is not node and not isinstance(n, (ast.Break, ast.Continue))
                )
                continue
            pending.extend(ast.iter_child_nodes(node))
        return True


def _destructure(target: ast.expr, case: ast.expr) -> dict[str, ast.expr] | None:
    if isinstance(target, ast.Name):
        return {target.id: case}
    if not isinstance(target, (ast.Tuple, ast.List)):
        return None
    if not isinstance(case, (ast.Tuple, ast.List)):
        return None
    if len(target.elts) != len(case.elts):
        return None
    bound: dict[str, ast.expr] = {}
    for element, value in zip(target.elts, case.elts, strict=True):
        inner = _destructure(element, value)
        if inner is None:
            return None
        bound.update(inner)
    return bound


def _loads(
    body: list[ast.stmt], names: frozenset[str]
) -> tuple[dict[str, int], dict[tuple[str, Any], int]]:
    """How often each name is read in ``body``, whole and as ``name[<constant>]`` (not counting
    assert messages, which the sandbox never evaluates). A store into ``name[...]`` counts as
    two whole reads: the case is mutated, so it must be assigned if it is mutable."""
    whole = dict.fromkeys(names, 0)
    keyed: dict[tuple[str, Any], int] = {}
    pending: list[ast.AST] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            name = node.value.id
            if name in whole:
                if not isinstance(node.ctx, ast.Load):
                    whole[name] += 2
                elif isinstance(node.slice, ast.Constant) and type(node.slice.value) in (int, str):
                    key = (name, (type(node.slice.value), node.slice.value))
                    keyed[key] = keyed.get(key, 0) + 1
                    continue
        if isinstance(node, ast.Name) and node.id in whole and isinstance(node.ctx, ast.Load):
            whole[node.id] += 1
        if isinstance(node, ast.Assert):
            pending.append(node.test)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return whole, keyed


def _folds(value: ast.expr, keys: dict[Any, int]) -> dict[Any, ast.expr] | None:
    """For a case read only as ``case[k]``: the item of each key, or None when one cannot be
    found in the literal."""
    folds = {}
    for kind, key in keys:
        item: ast.expr | None = None
        if isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values, strict=True):
                if isinstance(k, ast.Constant) and type(k.value) is kind and k.value == key:
                    item = v
        elif (
            isinstance(value, (ast.Tuple, ast.List))
            and kind is int
            and -len(value.elts) <= key < len(value.elts)
        ):
            item = value.elts[key]
        if item is None:
            return None
        folds[(kind, key)] = item
    return folds


class _Substitute(ast.NodeTransformer):
    """The loop's names → the case's values (``written``); ``name[k]`` → the item (``folded``)."""

    def __init__(self, written: dict[str, ast.expr], folded: dict[str, dict[Any, ast.expr]]):
        self.written, self.folded = written, folded

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        if (
            isinstance(node.value, ast.Name)
            and node.value.id in self.folded
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.ctx, ast.Load)
        ):
            key = (type(node.slice.value), node.slice.value)
            return ast.copy_location(copy.deepcopy(self.folded[node.value.id][key]), node)
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.written and isinstance(node.ctx, ast.Load):
            return ast.copy_location(copy.deepcopy(self.written[node.id]), node)
        return node
