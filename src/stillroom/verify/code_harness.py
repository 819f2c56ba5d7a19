"""The sandbox's side of an asserts test: :data:`HARNESS`, and the hooks the rewritten tests
call it by.

``HARNESS`` is self-contained Python text, not code of this package: the sandbox runs it as
``main.py`` under ``python -I -S`` (no site-packages: it cannot import ``stillroom``, only the
standard library), beside ``solution.py`` (the answer's code) and ``steps.json`` (the tests'
steps as :class:`~stillroom.verify.code_plan.TestPlan` rewrote them), which
:class:`~stillroom.verify.code.CodeVerifier` hands to ``run_python``. It imports the answer as
module ``solution``, runs the steps, and reports each assert's leaf values as plain data on a
private copy of stdout. The caps on one value are written into its text from
:mod:`~stillroom.verify.code_values`, so both sides use the same numbers.

The rewritten asserts (:mod:`~stillroom.verify.code_asserts`) call the harness through string
constants, ``_MARK``, which the harness replaces in their compiled code by its own functions
(no name to rebind), and tell it how the residual uses each leaf (``ITERABLE``, ``GENERATOR``).
"""

from __future__ import annotations

from stillroom.verify.code_values import _NESTING, INT_BITS, VALUE_BYTES, VALUE_ITEMS

_HOOKS = ("site", "raised", "error", "cmp", "base")
_MARK = {hook: f"\0stillroom.{hook}" for hook in _HOOKS}  # constants the harness replaces
ITERABLE, GENERATOR = 1, 2  # leaf flags for the harness

HARNESS = r'''
# stillroom's test harness (see stillroom/verify/code_harness.py). Everything it uses is
# captured in this function's frame before the answer is imported, and nothing of it is a
# global: `import __main__` finds only this function. It reports on a private copy of stdout;
# the verifier trusts nothing it does not check, and never sends it an expected value.


def _stillroom():
    import builtins, json, os, sys, types, warnings, _json
    from decimal import Decimal
    from fractions import Fraction

    type_, len_, iter_, next_, bool_, range_, slice_ = type, len, iter, next, bool, range, slice
    tuple_, list_, set_, frozenset_, complex_, compile_, exec_ = (
        tuple, list, set, frozenset, complex, compile, exec)
    str_, BaseException_, StopIteration_ = str, BaseException, StopIteration
    NotImplemented_, exc_info = NotImplemented, sys.exc_info
    write, exit_ = os.write, os._exit
    flushes = []
    for stream in (sys.stdout, sys.stderr):
        try:
            flushes.append(stream.flush)
        except BaseException:
            pass
    esc = _json.encode_basestring_ascii
    mro_of = type.__dict__["__mro__"].__get__
    qualname_of = type.__dict__["__qualname__"].__get__
    int_copy, float_copy, str_copy = int.__int__, float.__float__, str.__str__
    bytes_slice, bytearray_slice = bytes.__getitem__, bytearray.__getitem__
    list_iter, tuple_iter = list.__iter__, tuple.__iter__
    set_iter, frozenset_iter, dict_items = set.__iter__, frozenset.__iter__, dict.items
    int_repr, float_repr, int_format, bit_length = (
        int.__repr__, float.__repr__, int.__format__, int.bit_length)
    str_join = str.join
    real_of = complex.__dict__["real"].__get__
    imag_of = complex.__dict__["imag"].__get__
    range_start = range.__dict__["start"].__get__
    range_stop = range.__dict__["stop"].__get__
    range_step = range.__dict__["step"].__get__
    numerator_of = Fraction.__dict__["_numerator"].__get__
    denominator_of = Fraction.__dict__["_denominator"].__get__
    decimal_str = Decimal.__str__
    keys_type, values_type, items_type = type({}.keys()), type({}.values()), type({}.items())
    none_type = type(None)
    TYPES = ((bool, "bool"), (int, "int"), (float, "float"), (complex, "complex"),
             (str, "str"), (bytes, "bytes"), (bytearray, "bytearray"), (list, "list"),
             (tuple, "tuple"), (dict, "dict"), (set, "set"), (frozenset, "frozenset"),
             (range, "range"), (none_type, "NoneType"))
    BASES = (int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)
    VALUE_BYTES, VALUE_ITEMS, NESTING, INT_BITS = (
        __VALUE_BYTES__, __VALUE_ITEMS__, __NESTING__, __INT_BITS__)

    report = os.dup(1)
    os.dup2(2, 1)  # the solution's prints go to stderr: stdout carries the report only

    def emit(text):
        data = text.encode()
        while data:
            data = data[write(report, data):]

    class Opq:  # a value that is not plain data, inside a copy
        __slots__ = ("kind",)

        def __init__(self, kind):
            self.kind = kind

    class Tag:  # plain data that JSON has no kind for: range, dict views, Fraction ...
        __slots__ = ("tag", "body")

        def __init__(self, tag, body):
            self.tag, self.body = tag, body

    class Big(Exception):
        pass

    class Err:  # the exception of a leaf that may not be needed
        __slots__ = ("text",)

        def __init__(self, text):
            self.text = text

    def name_of(kind):
        try:
            return str_copy(qualname_of(kind))[:100]
        except BaseException_:
            return "?"

    def describe(exc):
        try:
            text = name_of(type_(exc)) + ": " + str_copy(str_(exc))
        except BaseException_:
            text = name_of(type_(exc))
        return text[:300]

    def plain(value, state, depth):
        """A copy made of exact built-in types only, by type identity (a metaclass cannot
        answer for it); subclasses of the built-in kinds become the base kind without calling
        any method they define; anything else is Opq. state: [items left, saw an Opq, made a
        Tag]."""
        state[0] -= 1
        if state[0] < 0:
            raise Big("more than %d items" % VALUE_ITEMS)
        kind = type_(value)
        if kind is int:
            if bit_length(value) > INT_BITS:
                raise Big("an int of more than %d bits" % INT_BITS)
            return value
        if value is None or kind is bool or kind is float:
            return value
        if kind is str or kind is bytes or kind is bytearray:
            state[0] -= len_(value) >> 4
            return value if kind is not bytearray else bytearray_slice(value, slice_(None))
        if depth > NESTING:
            state[1] = True
            return Opq("a value nested too deeply")
        down = depth + 1
        if kind is list:
            return [plain(x, state, down) for x in list_iter(value)]
        if kind is tuple:
            return tuple_(plain(x, state, down) for x in tuple_iter(value))
        if kind is dict:
            return {plain(k, state, down): plain(v, state, down) for k, v in dict_items(value)}
        if kind is set:
            return set_(plain(x, state, down) for x in set_iter(value))
        if kind is frozenset:
            return frozenset_(plain(x, state, down) for x in frozenset_iter(value))
        if kind is complex:
            return complex_(real_of(value), imag_of(value))
        if kind is Fraction:
            n, d = numerator_of(value), denominator_of(value)
            if type_(n) is int and type_(d) is int and d > 0:
                state[2] = True
                return Tag("fraction", (plain(n, state, down), plain(d, state, down)))
        elif kind is Decimal:
            text = decimal_str(value)
            if type_(text) is str:
                state[2] = True
                return Tag("decimal", text)
        elif kind is range:
            state[2] = True
            return Tag("range", (range_start(value), range_stop(value), range_step(value)))
        elif kind is keys_type or kind is values_type:
            state[2] = True
            return Tag("keys" if kind is keys_type else "values",
                       [plain(x, state, down) for x in value])
        elif kind is items_type:
            state[2] = True
            return Tag("items", [(plain(k, state, down), plain(v, state, down))
                                 for k, v in value])
        elif kind is type:
            for known, name in TYPES:
                if value is known:
                    state[2] = True
                    return Tag("type", name)
        else:
            for base in mro_of(kind):
                for known in BASES:
                    if base is known:
                        return plain(convert(value, known), state, depth)
        state[1] = True
        return Opq(name_of(kind))

    def convert(value, base):
        """A subclass's value as its exact base kind, read by the base kind's own code."""
        if base is int:
            return int_copy(value)
        if base is float:
            return float_copy(value)
        if base is complex:
            return complex_(real_of(value), imag_of(value))
        if base is str:
            return str_copy(value)
        if base is bytes:
            return bytes_slice(value, slice_(None))
        if base is bytearray:
            return bytearray_slice(value, slice_(None))
        if base is list:
            return [x for x in list_iter(value)]
        if base is tuple:
            return tuple_(x for x in tuple_iter(value))
        if base is dict:
            return {k: v for k, v in dict_items(value)}
        if base is set:
            return set_(x for x in set_iter(value))
        return frozenset_(x for x in frozenset_iter(value))

    def encode(value, out, size):
        kind = type_(value)
        if value is None:
            piece = "null"
        elif kind is bool:
            piece = "true" if value else "false"
        elif kind is int:
            piece = (int_repr(value) if bit_length(value) < 3000
                     else '{"int":"' + int_format(value, "x") + '"}')
        elif kind is float:
            piece = float_repr(value)
            piece = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(piece, piece)
        elif kind is str:
            piece = esc(value)
        elif kind is bytes or kind is bytearray:
            piece = '{"%s":"%s"}' % ("bytes" if kind is bytes else "bytearray", value.hex())
        elif kind is complex:
            out.append('{"complex":[')
            encode(value.real, out, size)
            out.append(",")
            encode(value.imag, out, size)
            piece = "]}"
        elif kind is list:
            sequence(None, value, out, size)
            return
        elif kind is tuple or kind is set or kind is frozenset:
            sequence("tuple" if kind is tuple else "set" if kind is set else "frozenset",
                     value, out, size)
            return
        elif kind is dict:
            sequence("dict", [(k, v) for k, v in value.items()], out, size, pairs=True)
            return
        elif kind is Opq:
            piece = '{"opaque":' + esc(value.kind) + "}"
        elif kind is Tag:
            tag, body = value.tag, value.body
            if tag in ("decimal", "type"):
                piece = '{"%s":%s}' % (tag, esc(body))
            else:
                sequence(tag, body, out, size, pairs=tag == "items")
                return
        else:
            raise Big("an unexpected value")
        out.append(piece)
        size[0] += len_(piece)
        if size[0] > VALUE_BYTES:
            raise Big("more than %d bytes" % VALUE_BYTES)

    def sequence(tag, items, out, size, pairs=False):
        out.append("[" if tag is None else '{"' + tag + '":[')
        first = True
        for item in items:
            if not first:
                out.append(",")
            first = False
            if pairs:
                out.append("[")
                encode(item[0], out, size)
                out.append(",")
                encode(item[1], out, size)
                out.append("]")
            else:
                encode(item, out, size)
        out.append("]" if tag is None else "]}")
        size[0] += 2

    def leaf(value, flags):
        """(the value's report, whether it holds something that is not plain data)."""
        if type_(value) is Err:
            return '{"error":' + esc(value.text) + "}", False
        try:
            state = [VALUE_ITEMS, False, False]
            copied = plain(value, state, 0)
            if type_(copied) is Opq and flags & 1:
                # Iterated by the residual (list(gen), sorted(it), x in it): listed here.
                state = [VALUE_ITEMS, False, False]
                items = []
                iterator = iter_(value)
                while True:
                    try:
                        item = next_(iterator)
                    except StopIteration_:
                        break
                    items.append(plain(item, state, 1))
                copied = Tag("iter", items)
            elif flags & 2 and type_(copied) is list:
                copied = Tag("iter", copied)
            out = []
            encode(copied, out, [0])
        except Big as exc:
            return '{"big":' + esc(str_copy(exc.args[0]) if exc.args else '""') + "}", False
        except BaseException_ as exc:
            return '{"error":' + esc(describe(exc)) + "}", False
        text = str_join("", out)
        if type_(copied) is Opq:
            try:
                truth = "true" if bool_(value) else "false"
            except BaseException_:
                truth = "null"
            text = text[:-1] + ',"truth":' + truth + "}"
        return text, state[1]

    def equal(a, b):
        """Both objects must agree, each by its own type's __eq__ (an object that says it
        equals anything does not decide for the other)."""
        for x, y in ((a, b), (b, a)):
            answer = type_(x).__eq__(x, y)
            if answer is NotImplemented_ or not bool_(answer):
                return False
        return True

    def raw(a, op, b):
        if op == "==":
            return equal(a, b)
        if op == "!=":
            return not equal(a, b)
        if op == "<":
            return bool_(a < b)
        if op == "<=":
            return bool_(a <= b)
        if op == ">":
            return bool_(a > b)
        if op == ">=":
            return bool_(a >= b)
        if op == "in":
            return bool_(a in b)
        if op == "not in":
            return bool_(a not in b)
        if op == "is":
            return a is b
        return a is not b

    def site(index, values, pairs, flags):
        texts, opaque = [], []
        for k in range_(len_(values)):
            text, has = leaf(values[k], flags[k])
            texts.append(text)
            opaque.append(has)
        facts = []
        for i, op, j in pairs:
            a, b = values[i], values[j]
            if type_(a) is Err or type_(b) is Err:
                facts.append("null")
            elif op == "is" or op == "is not" or (opaque[i] and opaque[j]):
                try:
                    facts.append("true" if raw(a, op, b) else "false")
                except BaseException_:
                    facts.append("null")
            else:
                facts.append("null")
        emit('{"site":%d,"leaves":[%s],"pairs":[%s]}\n'
             % (index, str_join(",", texts), str_join(",", facts)))

    def raised(index):
        exc = exc_info()[1]
        emit('{"site":%d,"raised":%s}\n' % (index, esc(describe(exc))))

    def error(exc):
        return Err(describe(exc))

    def cmp(a, op, b):
        """A comparison inside a leaf that judges: on plain copies where both sides are plain
        data; a plain value never equals an object that is not."""
        if op == "is" or op == "is not":
            return raw(a, op, b)
        copies, plains = [], []
        for side in (a, b):
            try:
                state = [VALUE_ITEMS, False, False]
                copies.append(plain(side, state, 0))
                plains.append(not (state[1] or state[2]))
            except BaseException_:
                copies.append(None)
                plains.append(False)
        if plains[0] and plains[1]:
            return raw(copies[0], op, copies[1])
        if (op == "==" or op == "!=") and plains[0] != plains[1]:
            return op == "!="
        return raw(a, op, b)

    hooks = {"\0stillroom.site": site, "\0stillroom.raised": raised,
             "\0stillroom.error": error, "\0stillroom.cmp": cmp,
             "\0stillroom.base": BaseException_}

    def bind(code):
        consts = []
        for c in code.co_consts:
            if type_(c) is str and c in hooks:
                c = hooks[c]
            elif type_(c) is types.CodeType:
                c = bind(c)
            consts.append(c)
        return code.replace(co_consts=tuple_(consts))

    def where(exc):
        line = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "solution.py":
                line = tb.tb_lineno
            tb = tb.tb_next
        return line

    def finish():
        for flush in flushes:
            try:
                flush()
            except BaseException_:
                pass
        exit_(0)  # no atexit handler or finalizer of the solution runs after the report

    def step(index, exc):
        if exc is None:
            emit('{"step":%d,"ok":true}\n' % index)
        else:
            line = where(exc)
            emit('{"step":%d,"error":%s,"line":%s}\n'
                 % (index, esc(describe(exc)), "null" if line is None else int_repr(line)))

    with open("steps.json", encoding="utf-8") as f:
        sources = json.load(f)["steps"]
    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # calling a constant: the hooks, put in its place
        for source in sources:
            steps.append(bind(compile_(source, "tests", "exec", dont_inherit=True)))

    module = types.ModuleType("solution")
    module.__file__ = "solution.py"
    sys.modules["solution"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    try:
        with open("solution.py", encoding="utf-8") as f:
            exec_(compile_(f.read(), "solution.py", "exec", dont_inherit=True), namespace)
    except BaseException_ as exc:
        step(0, exc)
        emit('{"done":1}\n')
        finish()
    step(0, None)
    # The tests' own namespace: the solution's names, copied; what the answer rebinds in its
    # module later is not what the tests call.
    tests = {}
    for name in list_(namespace):
        if type_(name) is str and not (name[:2] == "__" and name[-2:] == "__"):
            tests[name] = namespace[name]
    tests["__name__"] = "__main__"
    tests["__builtins__"] = builtins
    for index in range_(len_(steps)):
        try:
            exec_(steps[index], tests)
        except BaseException_ as exc:
            step(index + 1, exc)
        else:
            step(index + 1, None)
    emit('{"done":%d}\n' % (len_(steps) + 1))
    finish()


_stillroom()
'''
# The caps, written into its text: the harness cannot import them.
for _name, _value in (
    ("__VALUE_BYTES__", VALUE_BYTES),
    ("__VALUE_ITEMS__", VALUE_ITEMS),
    ("__NESTING__", _NESTING),
    ("__INT_BITS__", INT_BITS),
):
    HARNESS = HARNESS.replace(_name, str(_value))
