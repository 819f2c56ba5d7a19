"""What the names of a residual mean outside the sandbox: the real built-ins, ``math``, the
operators and a few methods of a literal string, each with a size guard where a value from the
sandbox (which the answer chooses) could make one step too costly for the verifier: a huge
product, power, shift, range, repeated sequence or format width, a division of huge ints.

Both sides of a residual read these tables: :mod:`~stillroom.verify.code_asserts` keeps a call
in the residual only if it is one of them (``_FUNCTIONS``, ``_MATH``, ``_STR_METHODS``,
``_CONSUMERS``), and :mod:`~stillroom.verify.code_residual` calls them (and :func:`_binop`).
Whatever the answer does to its own ``builtins`` or ``math`` never reaches these.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

from stillroom.verify.code_values import _MAX_ITEMS, _TYPES, _no_opaque

_MAX_BITS = 1_000_000  # an int computed outside (by *, ** or <<) stays under this size
_DIVISION_BITS = 200_000  # division of two ints both larger than this is not done outside


def _guard_division(left: Any, right: Any) -> None:
    if (
        type(left) is int
        and type(right) is int
        and min(left.bit_length(), right.bit_length()) > _DIVISION_BITS
    ):
        raise OverflowError("a division of ints too large to compute outside the sandbox")


def _g_divmod(left: Any, right: Any) -> Any:
    _guard_division(left, right)
    return divmod(left, right)


def _g_range(*args: Any) -> range:
    made = range(*args)
    if len(made) > _MAX_ITEMS:
        raise OverflowError(f"a range of {len(made)} numbers is too long to compute outside")
    return made


def _g_pow(base: Any, exponent: Any, modulo: Any = None) -> Any:
    if modulo is None:
        _guard_power(base, exponent)
        return pow(base, exponent)
    for number in (base, exponent, modulo):
        if type(number) is int and number.bit_length() > _DIVISION_BITS:
            raise OverflowError("a modular power too large to compute outside the sandbox")
    return pow(base, exponent, modulo)


def _guard_power(base: Any, exponent: Any) -> None:
    if type(exponent) in (int, bool) and exponent > 1:
        parts = (
            (base.numerator, base.denominator)
            if type(base) is Fraction
            else (base,)
            if type(base) in (int, bool)
            else ()
        )
        for part in parts:
            if abs(part) > 1 and part.bit_length() * exponent > _MAX_BITS:
                raise OverflowError("a power too large to compute outside the sandbox")


def _g_sum(items: Iterable[Any], start: Any = 0) -> Any:
    items = list(items)
    if type(start) in (list, tuple) and all(type(x) is type(start) for x in items):
        return type(start)(itertools.chain(start, *items))  # sum(xs, []) without n**2
    if all(type(x) in (int, bool) for x in items) and type(start) in (int, bool):
        return sum(items, start)
    return sum(items, start)


def _g_str(*args: Any, **kwargs: Any) -> str:
    for arg in args:
        _no_opaque(arg)
    return str(*args, **kwargs)


def _g_repr(value: Any) -> str:
    _no_opaque(value)
    return repr(value)


def _g_round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(number)
    if type(ndigits) in (int, bool) and abs(ndigits) > 10_000:
        raise OverflowError("round() to that many digits is not computed outside")
    return round(number, ndigits)


def _type_arg(kinds: Any) -> Any:
    if type(kinds) is tuple:
        for kind in kinds:
            _type_arg(kind)
    elif not any(kinds is t for t in (*_TYPES.values(), Fraction, Decimal)):
        raise TypeError("isinstance() outside the sandbox takes built-in types only")
    return kinds


def _g_isinstance(value: Any, kinds: Any) -> bool:
    return isinstance(value, _type_arg(kinds))


def _g_type(value: Any) -> type:
    return type(value)


def _math_guarded() -> dict[str, Any]:
    names: dict[str, Any] = {
        name: getattr(math, name) for name in dir(math) if not name.startswith("_")
    }

    def factorial(n: Any) -> int:
        if type(n) is int and n > 20_000:
            raise OverflowError("factorial too large to compute outside the sandbox")
        return math.factorial(n)

    def combinatorial(function: Callable[..., int]) -> Callable[..., int]:
        def guarded(n: Any, *rest: Any) -> int:
            if type(n) is int and n > 100_000:
                raise OverflowError(f"{function.__name__}() too large to compute outside")
            return function(n, *rest)

        return guarded

    def product(function: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            items = list(args[0]) if function is math.prod else list(args)
            bits = sum(x.bit_length() for x in items if type(x) is int)
            if bits > _MAX_BITS or (function is not math.prod and bits > _DIVISION_BITS):
                raise OverflowError(f"{function.__name__}() too large to compute outside")
            return function(items, **kwargs) if function is math.prod else function(*items)

        return guarded

    names.update(
        factorial=factorial,
        comb=combinatorial(math.comb),
        perm=combinatorial(math.perm),
        prod=product(math.prod),
        lcm=product(math.lcm),
        gcd=product(math.gcd),
    )
    return names


_MATH = _math_guarded()


class _MathModule:
    """``math`` as the residual sees it: the real functions (some with a size guard)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _MATH[name]
        except KeyError:
            raise AttributeError(f"module 'math' has no attribute {name!r}") from None


_MATH_MODULE = _MathModule()

# The functions a residual may call, as the verifier runs them (the real builtins; a guard where
# a value the answer controls could make one too costly). The name ``abs`` in the tests means
# this ``abs`` whatever the answer binds, unless the tests or the answer bind the name themselves.
_FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "all": all,
    "any": any,
    "bin": bin,
    "bool": bool,
    "chr": chr,
    "complex": complex,
    "dict": dict,
    "divmod": _g_divmod,
    "enumerate": enumerate,
    "float": float,
    "frozenset": frozenset,
    "hex": hex,
    "int": int,
    "isinstance": _g_isinstance,
    "len": len,
    "list": list,
    "max": max,
    "min": min,
    "oct": oct,
    "ord": ord,
    "pow": _g_pow,
    "range": _g_range,
    "repr": _g_repr,
    "reversed": reversed,
    "round": _g_round,
    "set": set,
    "sorted": sorted,
    "str": _g_str,
    "sum": _g_sum,
    "tuple": tuple,
    "type": _g_type,
    "zip": zip,
}
# Calls that iterate their arguments: a generator (or another iterable that is not plain data)
# passed to one is listed inside the sandbox and comes out as an iterator over plain values.
_CONSUMERS = frozenset(
    {"all", "any", "dict", "enumerate", "frozenset", "list", "max", "min", "set", "sorted"}
    | {"sum", "tuple", "zip"}
)
_STR_METHODS = frozenset(
    {"join", "split", "rsplit", "strip", "lstrip", "rstrip", "lower", "upper", "startswith"}
    | {"endswith", "count", "find", "rfind", "index", "replace", "splitlines", "title"}
    | {"capitalize", "casefold", "swapcase", "isdigit", "isalpha", "isalnum", "isspace"}
    | {"islower", "isupper"}
)

# The operators, as _binop applies them after its guards.
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
    ast.MatMult: operator.matmul,
}
_SEQUENCES = (str, bytes, bytearray, list, tuple)


def _binop(op: ast.operator, left: Any, right: Any) -> Any:
    kind = type(op)
    if kind is ast.Mult:
        for sequence, times in ((left, right), (right, left)):
            if (
                type(sequence) in _SEQUENCES
                and type(times) in (int, bool)
                and len(sequence) * max(times, 0) > _MAX_ITEMS
            ):
                raise OverflowError("a sequence too long to repeat outside the sandbox")
        if (
            type(left) is int
            and type(right) is int
            and left.bit_length() + right.bit_length() > _MAX_BITS
        ):
            raise OverflowError("a product too large to compute outside the sandbox")
    elif kind is ast.Pow:
        _guard_power(left, right)
    elif kind is ast.LShift:
        if type(right) is int and right > _MAX_BITS:
            raise OverflowError("a shift too large to compute outside the sandbox")
    elif kind in (ast.Div, ast.FloorDiv, ast.Mod) and type(left) is int and type(right) is int:
        _guard_division(left, right)
    if kind is ast.Mod and type(left) in (str, bytes):
        numbers = right if type(right) is tuple else (right,)
        _no_opaque(right)
        if any(type(n) is int and abs(n) > _MAX_ITEMS for n in numbers):
            raise OverflowError("a format too wide to compute outside the sandbox")
    return _BINOPS[kind](left, right)


def _guard_str_method(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            _no_opaque(arg)
        if name == "replace" and len(args) > 1 and type(args[1]) is str:
            owner = method.__self__  # type: ignore[attr-defined]
            if (len(owner) + 1) * (len(args[1]) + 1) > _MAX_ITEMS:
                raise OverflowError("a replacement too large to compute outside the sandbox")
        return method(*args, **kwargs)

    return guarded
