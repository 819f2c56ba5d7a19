"""The OpenAI function tools of a Python file, read from its source without running it.

Why ``ast`` and not importing the file: the file is user code that stillroom otherwise only runs
in the sandbox, and the sandbox runs the standard library only (no pydantic there to make a
schema). So the file is parsed; each tool function's annotations are turned into real types from
an allow-list (builtins, ``typing``'s ``Optional``/``Union``/``Literal``/``List``/..., ``X | None``,
and the file's own ``Enum`` classes and type aliases); pydantic makes the JSON schema of each;
defaults are read with ``ast.literal_eval``. Anything else is a ConfigError naming the file, line
and argument, before any request. Because nothing is imported, a type the allow-list does not
know cannot be guessed: the message says which types work.

A tool's description is its docstring's first paragraph; an argument's, its entry in the
docstring's ``Args:`` section (Google style, read by ``docstring_parser``).
"""

from __future__ import annotations

import ast
import difflib
import enum
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docstring_parser
from pydantic import TypeAdapter

from stillroom.errors import ConfigError

# Annotation names read as these types, imported or not (the file itself fails at import when
# it uses one it did not import, which the call reports).
_NAMES: dict[str, Any] = {
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
    "tuple": tuple, "set": set, "frozenset": frozenset, "None": None, "NoneType": type(None),
    "bytes": None,  # listed so the message can say why: JSON has no bytes
    "Any": typing.Any, "List": typing.List, "Dict": typing.Dict,  # noqa: UP006
    "Tuple": typing.Tuple, "Set": typing.Set, "FrozenSet": typing.FrozenSet,  # noqa: UP006
    "Sequence": typing.Sequence, "Mapping": typing.Mapping, "Optional": typing.Optional,
    "Union": typing.Union, "Literal": typing.Literal, "Annotated": typing.Annotated,
}
_ENUM_BASES = ("Enum", "StrEnum", "IntEnum")
SUPPORTED = ("int, float, str, bool, None, list[...], dict[str, ...], tuple[...], set[...], "
             "Optional/Union/X | None, Literal[...], Any, and Enum classes or type aliases "
             "defined in the file")


@dataclass
class ToolFunction:
    name: str
    line: int
    tool: dict[str, Any]  # the OpenAI function tool
    enum_arguments: dict[str, str] = field(default_factory=dict)  # argument -> Enum class name
    # argument -> "tuple"/"set"/"frozenset": JSON brings a list, the function expects this
    collection_arguments: dict[str, str] = field(default_factory=dict)
    is_async: bool = False


class _Unsupported(Exception):
    def __init__(self, message: str, node: ast.AST | None = None):
        super().__init__(message)
        self.node = node


def read_tools(path: Path, *, functions: list[str] | None, key: str) -> list[ToolFunction]:
    """The tools of the Python file ``path``: its public top-level functions, or those named in
    ``functions``. ConfigError naming ``key`` (and the file:line) for what cannot be a tool."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the tools file {path}: {error.strerror or error}",
                          key=key) from None
    try:
        module = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise ConfigError(f"syntax error: {error.msg}", path=str(path), line=error.lineno,
                          key=key) from None
    _check_imports(module, path, key)
    scope = _Scope(module)
    defined: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name in defined:
                raise ConfigError(f"function {node.name!r} is defined twice (line "
                                  f"{defined[node.name].lineno} and {node.lineno})",
                                  path=str(path), line=node.lineno, key=key)
            defined[node.name] = node
    if functions is None:
        chosen = [node for name, node in defined.items() if not name.startswith("_")]
        if not chosen:
            raise ConfigError(f"{path} defines no public top-level function to offer as a tool",
                              key=key)
    else:
        chosen = []
        for index, name in enumerate(functions):
            if name not in defined:
                close = difflib.get_close_matches(name, list(defined), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{path} has no top-level function {name!r}{hint}",
                                  key=f"{key.rsplit('.', 1)[0]}.functions[{index}]")
            chosen.append(defined[name])
    return [_tool(node, scope, path, key) for node in chosen]


def _check_imports(module: ast.Module, path: Path, key: str) -> None:
    """The sandbox has the standard library only: say so now rather than at every call. An
    import inside ``try: ... except ImportError`` (or ModuleNotFoundError) is the file's own
    fallback for a missing module, and allowed."""
    guarded = _guarded_imports(module)
    for node in ast.walk(module):
        if id(node) in guarded:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise ConfigError("a relative import: a tools file must stand alone (it runs "
                                  "in the sandbox by itself)", path=str(path), line=node.lineno,
                                  key=key)
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != "__future__":
                raise ConfigError(
                    f"imports {name!r}, which the sandbox does not have: tools run there with "
                    "the Python standard library only (serve other code as an MCP server, "
                    "`tools.mcp`)", path=str(path), line=getattr(node, "lineno", None), key=key)


_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError")


def _guarded_imports(module: ast.Module) -> set[int]:
    """The ids of the import nodes in the body of a ``try`` one of whose handlers catches
    ImportError (or ModuleNotFoundError, or everything)."""
    guarded: set[int] = set()
    for node in ast.walk(module):
        if not isinstance(node, ast.Try | ast.TryStar):
            continue
        if not any(_catches_import_error(handler.type) for handler in node.handlers):
            continue
        for statement in node.body:
            guarded.update(id(inner) for inner in ast.walk(statement)
                           if isinstance(inner, ast.Import | ast.ImportFrom))
    return guarded


def _catches_import_error(caught: ast.expr | None) -> bool:
    if caught is None:  # a bare `except:`
        return True
    if isinstance(caught, ast.Tuple):
        return any(_catches_import_error(item) for item in caught.elts)
    name = caught.id if isinstance(caught, ast.Name) else (
        caught.attr if isinstance(caught, ast.Attribute) else None)
    return name in (*_IMPORT_ERRORS, "Exception", "BaseException")


def _tool(node: ast.FunctionDef | ast.AsyncFunctionDef, scope: _Scope, path: Path,
          key: str) -> ToolFunction:
    def fail(message: str, at: object = None) -> ConfigError:
        line = getattr(at, "lineno", None) or node.lineno
        return ConfigError(f"tool {node.name!r}: {message}", path=str(path), line=line, key=key)

    arguments = node.args
    if arguments.vararg or arguments.kwarg:
        raise fail("*args/**kwargs cannot be described to a model: name each argument")
    if arguments.posonlyargs:
        raise fail("positional-only arguments (before `/`): tools are called by keyword")
    docstring = docstring_parser.parse(ast.get_docstring(node) or "")
    described = {param.arg_name: " ".join((param.description or "").split())
                 for param in docstring.params}
    properties: dict[str, Any] = {}
    required: list[str] = []
    enum_arguments: dict[str, str] = {}
    collection_arguments: dict[str, str] = {}
    positional = arguments.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += list(arguments.defaults)
    pairs = list(zip(positional, defaults, strict=True))
    pairs += list(zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True))
    for argument, default in pairs:
        if argument.annotation is None:
            raise fail(f"argument {argument.arg!r} has no type hint: a tool's arguments need "
                       f"them (they become its JSON schema); supported: {SUPPORTED}", argument)
        try:
            annotation = scope.type_of(argument.annotation)
        except _Unsupported as error:
            raise fail(f"argument {argument.arg!r}: {error}; supported: {SUPPORTED}",
                       error.node or argument) from None
        enum_class = _enum_of(annotation)
        if enum_class is not None:
            enum_arguments[argument.arg] = enum_class.__name__
        collection = _collection_of(annotation)
        if collection is not None:
            collection_arguments[argument.arg] = collection
        schema = _schema(annotation)
        if described.get(argument.arg):
            schema["description"] = described[argument.arg]
        if default is None:
            required.append(argument.arg)
        else:
            try:
                value = ast.literal_eval(default)
            except ValueError:
                value = _enum_default(default, scope)
            if value is not _NO_VALUE:
                schema["default"] = value
        properties[argument.arg] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    # A Python function rejects an argument it does not have: say so in the schema.
    parameters["additionalProperties"] = False
    description = _first_paragraph(docstring)
    tool = {"type": "function", "function": {
        "name": node.name, "description": description, "parameters": parameters}}
    return ToolFunction(node.name, node.lineno, tool, enum_arguments, collection_arguments,
                        isinstance(node, ast.AsyncFunctionDef))


_NO_VALUE = object()


def _enum_default(node: ast.expr, scope: _Scope) -> Any:
    """``Unit.CELSIUS`` as a default: its value. Any other expression has no default we can
    show without running the file (the argument stays optional, its default unnamed)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        enum_class = scope.enums.get(node.value.id)
        if enum_class is not None and node.attr in enum_class.__members__:
            return enum_class[node.attr].value
    return _NO_VALUE


def _first_paragraph(docstring: docstring_parser.Docstring) -> str:
    text = docstring.short_description or ""
    if docstring.long_description and not docstring.blank_after_short_description:
        text = f"{text} {docstring.long_description.split(chr(10) * 2)[0]}"
    return " ".join(text.split())


def _enum_of(annotation: Any) -> type[enum.Enum] | None:
    """The Enum class of ``E`` or ``E | None``: the runner turns the value back into a member."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return arg
    return None


def _collection_of(annotation: Any) -> str | None:
    """``tuple``/``set``/``frozenset`` when ``annotation`` is one (or one or None)."""
    candidates = [annotation, *typing.get_args(annotation)] if typing.get_origin(
        annotation) is typing.Union else [annotation]
    for candidate in candidates:
        origin = typing.get_origin(candidate) or candidate
        if origin in (tuple, set, frozenset):
            return str(origin.__name__)
    return None


def _schema(annotation: Any) -> dict[str, Any]:
    schema = TypeAdapter(annotation).json_schema()
    defs = schema.pop("$defs", {})
    return _clean(_inline(schema, defs))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Enum classes come back as ``$ref``s to ``$defs``: inline them, since some tool APIs and
    most small models do not follow references (the file's types are never recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _clean(schema: Any) -> Any:
    """Without pydantic's ``title``s (the argument's name again, noise in a model's prompt)."""
    if isinstance(schema, list):
        return [_clean(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
        else:
            out[key] = _clean(value)
    return out


class _Scope:
    """The file's top-level names that annotations may use: Enum classes and type aliases."""

    def __init__(self, module: ast.Module):
        self.aliases: dict[str, ast.expr] = {}
        self.enums: dict[str, type[enum.Enum]] = {}
        self._classes: dict[str, ast.ClassDef] = {}
        self._resolving: set[str] = set()
        for node in module.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name):
                self.aliases[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and (
                    node.value is not None and _name_of(node.annotation) == "TypeAlias"):
                self.aliases[node.target.id] = node.value
            elif isinstance(node, ast.ClassDef):
                self._classes[node.name] = node

    def type_of(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is None:
                return None
            if isinstance(node.value, str):  # a quoted annotation
                try:
                    inner = ast.parse(node.value, mode="eval").body
                except SyntaxError:
                    raise _Unsupported(f"cannot read the quoted type {node.value!r}",
                                       node) from None
                return self.type_of(inner)
            raise _Unsupported(f"{node.value!r} is not a type", node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return typing.Union[self.type_of(node.left), self.type_of(node.right)]  # noqa: UP007
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        name = _name_of(node)
        if name is None:
            raise _Unsupported(f"cannot read the type `{ast.unparse(node)}`", node)
        if isinstance(node, ast.Name) and name in self._classes:
            return self._enum(self._classes[name])
        if isinstance(node, ast.Name) and name in self.aliases:
            if name in self._resolving:
                raise _Unsupported(f"the type alias {name!r} refers to itself", node)
            self._resolving.add(name)
            try:
                return self.type_of(self.aliases[name])
            finally:
                self._resolving.discard(name)
        if name in _NAMES:
            if name == "bytes":
                raise _Unsupported("bytes cannot come from JSON (take a str)", node)
            return _NAMES[name]
        raise _Unsupported(f"unknown type `{ast.unparse(node)}`", node)

    def _subscript(self, node: ast.Subscript) -> Any:
        base_name = _name_of(node.value)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base_name == "Literal":
            values = []
            for item in items:
                try:
                    values.append(ast.literal_eval(item))
                except ValueError:
                    raise _Unsupported(f"Literal values must be constants, got "
                                       f"`{ast.unparse(item)}`", item) from None
            return typing.Literal[tuple(values)]
        if base_name == "Annotated":
            return self.type_of(items[0])  # its metadata means nothing without running it
        base = self.type_of(node.value)
        if base is None or base in (typing.Any,):
            raise _Unsupported(f"`{ast.unparse(node.value)}` takes no parameters", node)
        arguments = []
        for item in items:
            if isinstance(item, ast.Constant) and item.value is Ellipsis:
                arguments.append(...)
            else:
                arguments.append(self.type_of(item))
        try:
            return base[tuple(arguments)] if len(arguments) > 1 else base[arguments[0]]
        except TypeError as error:
            raise _Unsupported(f"`{ast.unparse(node)}`: {error}", node) from None

    def _enum(self, node: ast.ClassDef) -> type[enum.Enum]:
        if node.name in self.enums:
            return self.enums[node.name]
        if not any(_name_of(base) in _ENUM_BASES for base in node.bases):
            raise _Unsupported(f"the class {node.name!r} is not an Enum (a tool's arguments "
                               "are JSON values)", node)
        members: dict[str, Any] = {}
        for item in node.body:
            if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(
                    item.targets[0], ast.Name) and not item.targets[0].id.startswith("_"):
                try:
                    members[item.targets[0].id] = ast.literal_eval(item.value)
                except ValueError:
                    raise _Unsupported(f"{node.name}.{item.targets[0].id}: Enum values must be "
                                       "constants", item) from None
        if not members:
            raise _Unsupported(f"the Enum {node.name!r} has no constant members", node)
        made = enum.Enum(node.name, members)  # type: ignore[misc]
        self.enums[node.name] = made
        return made


def _name_of(node: ast.expr) -> str | None:
    """``X`` or the last part of ``typing.X`` / ``t.X`` / ``enum.Enum``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


__all__ = ["SUPPORTED", "ToolFunction", "read_tools"]
