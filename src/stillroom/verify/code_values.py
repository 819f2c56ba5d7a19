"""Plain values: the leaf values the sandbox reports, decoded, and the caps on them.

The harness (:mod:`stillroom.verify.code_harness`) copies each leaf's value by exact built-in
type and reports it as JSON; :func:`from_plain` turns one back into a value here, building
nothing but plain data and raising on anything malformed (a report may be forged).
:func:`_leaf_value` adds a leaf's error or "over the cap" (:class:`_Problem`) and refuses
numbers made to share a hash (:func:`_no_collisions`). What is not plain data arrives as
:class:`Opaque`: only its type's name and, when reported, its truth.

The caps on one value (``VALUE_BYTES``, ``VALUE_ITEMS``, ``INT_BITS``, ``_NESTING``) are also
written into the harness's text, so both sides use the same numbers; ``REPORT_BYTES`` caps the
whole report. Also how a value or a piece of the tests is quoted in a reason (:func:`_shown_value`,
:func:`_clip`). This is the bottom of the code verifier's modules: it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

_SHOWN = 200  # characters of expected/got quoted in a reason
REPORT_BYTES = 16_000_000  # the harness's whole report (the leaf values of every assert)
VALUE_BYTES = 4_000_000  # one reported value, encoded; over it the assert fails ("too large")
VALUE_ITEMS = 1_000_000  # items in one reported value (elements of every container, together)
_NESTING = 100  # containers deeper than this are not plain data
INT_BITS = 100_000  # a reported int (bits); a larger one is over the cap on reported values
_MAX_ITEMS = 10_000_000  # a range, repeated sequence or formatted width computed outside

_PLAIN_KINDS = (
    "None, bool, int, float, complex, str, bytes, list, tuple, dict, set, Fraction, Decimal"
)
# The built-in types by name: a reported type (``{"type": "int"}``), and the classes
# ``isinstance`` takes outside.
_TYPES = {
    t.__name__: t
    for t in (
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        list,
        tuple,
        dict,
        set,
        frozenset,
        range,
        type(None),
        object,
    )
}


@dataclass(frozen=True)
class _Problem:
    """A leaf with no value to use: it raised (only when the residual did not need it to run),
    or its value was over the cap. ``why`` names the leaf as ``{leaf}``."""

    why: str


class _Use:
    """Whether an evaluation used something decided inside the sandbox, and what."""

    def __init__(self) -> None:
        self.inside = ""


class Opaque:
    """A reported value that is not plain data: only its type's name travels. It equals no
    other value (``is None`` is False), cannot be ordered, iterated or measured, and its truth
    is the one the sandbox reported (computed there, so it counts as checked inside)."""

    __slots__ = ("kind", "truth", "use")

    def __init__(self, kind: str, truth: bool | None = None, use: _Use | None = None):
        self.kind, self.truth, self.use = kind, truth, use

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        if self.truth is None:
            raise TypeError(f"the truth of an object of type {self.kind} was not reported")
        if self.use is not None:
            self.use.inside = self.use.inside or f"the truth of an object of type {self.kind}"
        return self.truth

    def __repr__(self) -> str:
        return f"an object of type {self.kind}"

    def __str__(self) -> str:
        raise TypeError(f"an object of type {self.kind} is not plain data")

    def __format__(self, spec: str) -> str:
        raise TypeError(f"an object of type {self.kind} is not plain data")


def _has_opaque(value: Any, depth: int = 0) -> bool:
    if type(value) is Opaque:
        return True
    if depth > _NESTING:
        return False
    if type(value) in (list, tuple, set, frozenset):
        return any(_has_opaque(item, depth + 1) for item in value)
    if type(value) is dict:
        return any(
            _has_opaque(k, depth + 1) or _has_opaque(v, depth + 1) for k, v in value.items()
        )
    return False


def _no_opaque(value: Any, depth: int = 0) -> None:
    """TypeError when ``value`` holds an object that is not plain data (str(), repr() and
    format() of one would describe our marker, not the answer's object)."""
    if depth > _NESTING:
        return
    if type(value) is Opaque:
        raise TypeError(f"an object of type {value.kind} is not plain data")
    if type(value) in (list, tuple, set, frozenset):
        for item in value:
            _no_opaque(item, depth + 1)
    elif type(value) is dict:
        for key, item in value.items():
            _no_opaque(key, depth + 1)
            _no_opaque(item, depth + 1)


def from_plain(encoded: Any, use: _Use | None = None, depth: int = 0) -> Any:
    """A value as the harness encoded it (JSON): scalars and lists as themselves, other kinds
    as ``{"tuple": [...]}``, ``{"dict": [[k, v], ...]}`` and so on. Builds only plain values;
    anything malformed raises (ValueError, TypeError, ArithmeticError ...)."""
    if depth > _NESTING + 2:
        raise ValueError("nested too deeply")
    kind = type(encoded)
    if encoded is None or kind in (bool, int, float, str):
        return encoded
    if kind is list:
        return [from_plain(item, use, depth + 1) for item in encoded]
    if kind is not dict:
        raise ValueError(f"unexpected {kind.__name__}")
    if set(encoded) in ({"opaque"}, {"opaque", "truth"}):
        name, truth = encoded["opaque"], encoded.get("truth")
        if type(name) is not str or not (truth is None or type(truth) is bool):
            raise ValueError("malformed opaque value")
        return Opaque(name[:100], truth, use)
    if len(encoded) != 1:
        raise ValueError("a value with several kinds")
    [(tag, body)] = encoded.items()
    items = _items(body) if tag not in ("bytes", "bytearray", "int", "decimal", "type") else []

    def decode(item: Any) -> Any:
        return from_plain(item, use, depth + 1)

    if tag == "tuple":
        return tuple(decode(item) for item in items)
    if tag in ("dict", "items"):
        pairs = [(decode(k), decode(v)) for k, v in map(_pair, items)]
        _no_collisions([k for k, _ in pairs])  # before they are hashed into a dict
        made = dict(pairs)
        return made if tag == "dict" else made.items()
    if tag in ("set", "frozenset", "keys"):
        elements = [decode(item) for item in items]
        _no_collisions(elements)
        if tag == "keys":
            return dict.fromkeys(elements).keys()
        return set(elements) if tag == "set" else frozenset(elements)
    if tag == "values":
        return {i: decode(item) for i, item in enumerate(items)}.values()
    if tag == "iter":
        return iter([decode(item) for item in items])
    if tag in ("bytes", "bytearray"):
        if type(body) is not str:
            raise ValueError("bytes as hex")
        return (bytes if tag == "bytes" else bytearray).fromhex(body)
    if tag == "int":
        if type(body) is not str or len(body) > INT_BITS // 4 + 2:
            raise ValueError("an int as hex")
        return int(body, 16)
    if tag == "complex":
        real, imaginary = _numbers(items, 2, (int, float))
        return complex(real, imaginary)
    if tag == "fraction":
        numerator, denominator = _numbers(items, 2, (int,))
        return Fraction(numerator, denominator)
    if tag == "range":
        start, stop, step = _numbers(items, 3, (int,))
        made_range = range(start, stop, step)
        if len(made_range) > _MAX_ITEMS:
            raise ValueError("a range too long")
        return made_range
    if tag == "decimal":
        if type(body) is not str or len(body) > 10_000:
            raise ValueError("a decimal as text")
        return Decimal(body)
    if tag == "type":
        if type(body) is not str or body not in _TYPES or body == "object":
            raise ValueError("an unknown type")
        return _TYPES[body]
    raise ValueError(f"unknown kind {tag!r}")


def _items(body: Any) -> list[Any]:
    if type(body) is not list:
        raise ValueError("a list was expected")
    return body


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("a [key, value] pair was expected")
    return item[0], item[1]


def _numbers(items: list[Any], count: int, kinds: tuple[type, ...]) -> list[Any]:
    if len(items) != count or not all(type(x) in kinds for x in items):
        raise ValueError("malformed numbers")
    return items


def _leaf_value(encoded: Any, use: _Use) -> Any:
    """A leaf's value, or a _Problem; raises on anything malformed."""
    if type(encoded) is dict and set(encoded) == {"error"} and type(encoded["error"]) is str:
        return _Problem("`{leaf}` raised " + encoded["error"][:300])
    if type(encoded) is dict and set(encoded) == {"big"} and type(encoded["big"]) is str:
        caps = f"{VALUE_BYTES} bytes, {VALUE_ITEMS} items, ints of {INT_BITS} bits"
        return _Problem(
            "the value of `{leaf}` is over the cap on reported values ("
            + caps
            + "): "
            + encoded["big"][:100]
        )
    value = from_plain(encoded, use)
    _no_collisions(value)
    return value


_HASHED = (int, float, complex, Fraction, Decimal, tuple, frozenset)
_COLLISIONS = 32  # distinct reported values with one hash; more were made to collide


def _no_collisions(value: Any) -> None:
    """ValueError when a reported value holds many distinct numbers (or tuples of them) with
    the same hash: made so that a set or dict of them, here, takes quadratic time. (The hashes
    of str and bytes are salted per process; those of numbers are not.)"""
    first: dict[int, Any] = {}
    collisions: dict[int, int] = {}
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind in (list, tuple, set, frozenset):
            pending.extend(item)
        elif kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        if kind in _HASHED and kind is not bool:
            try:
                key = hash(item)
            except TypeError:  # a tuple holding a list: not hashable, not in a set either
                continue
            seen = first.setdefault(key, item)
            if seen is not item and seen != item:
                collisions[key] = collisions.get(key, 0) + 1
                if collisions[key] > _COLLISIONS:
                    raise ValueError("values made to have the same hash")


def _shown_value(value: Any, width: int = _SHOWN) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001  (a huge int: more digits than str() allows)
        text = f"<{type(value).__name__}>"
    return _clip(text, width)


def _clip(text: str, width: int = _SHOWN) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
