"""The sandbox's side of a Python tool call: :data:`RUNNER`, run as ``main.py`` beside the tools
file (:data:`TOOLS_FILE`).

``RUNNER`` is standard-library Python text (the sandbox runs ``python -I -S``: no site-packages,
no ``stillroom``). It reads the call from stdin (``{"function", "arguments", "enums",
"collections"}``, the last two naming the arguments to turn from JSON values into an Enum's
member, a tuple or a set), then gives the tool an empty stdin and sends what the tool prints to
stderr, so that its report, one JSON line on a private copy of stdout, is all the caller reads:
``{"ok": true, "content": "<text>"}`` or ``{"ok": false, "type": "ValueError", "message": ...}``.
A ``str`` return value is the content as it is; anything else its JSON text (``json.dumps``
refusing it is the tool's error, ``type`` ``NotJSON``).
"""

from __future__ import annotations

TOOLS_FILE = "tools.py"
NOT_JSON = "NotJSON"  # the report's ``type`` for a return value JSON cannot write

RUNNER = r'''
# stillroom's tool runner (see stillroom/tools/python_tool_runner.py).
import asyncio, enum, importlib.util, inspect, io, json, os, sys


def _main():
    call = json.loads(sys.stdin.read())
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the tool's prints go to stderr: stdout carries the report only
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the tool reads an empty stdin, never the call
    sys.stdin = io.StringIO("")

    def send(message):
        report.write(json.dumps(message, ensure_ascii=False) + "\n")
        report.flush()

    def failed(error):
        text = str(error)
        if isinstance(error, SystemExit):
            text = f"the tool called exit({error.code!r})"
        send({"ok": False, "type": type(error).__name__, "message": text[:2000]})

    try:
        spec = importlib.util.spec_from_file_location(
            "tools", os.path.join(os.path.dirname(os.path.abspath(__file__)), "__TOOLS_FILE__"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["tools"] = module
        spec.loader.exec_module(module)
        function = getattr(module, call["function"])
        arguments = dict(call["arguments"])
        for name, class_name in call.get("enums", {}).items():
            enum_class = getattr(module, class_name, None)
            if arguments.get(name) is not None and isinstance(enum_class, type) and issubclass(
                    enum_class, enum.Enum):
                arguments[name] = enum_class(arguments[name])
        kinds = {"tuple": tuple, "set": set, "frozenset": frozenset}
        for name, kind in call.get("collections", {}).items():
            if isinstance(arguments.get(name), list):
                arguments[name] = kinds[kind](arguments[name])
        value = function(**arguments)
        if inspect.isawaitable(value):
            value = asyncio.run(value)
    except BaseException as error:  # the tool's error, whatever it is, is its result
        failed(error)
        return
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        send({"ok": True, "content": value})
        return
    try:
        content = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        send({"ok": False, "type": "__NOT_JSON__",
              "message": f"the return value is not JSON-serializable ({error})"})
        return
    send({"ok": True, "content": content})


_main()
'''.replace("__TOOLS_FILE__", TOOLS_FILE).replace("__NOT_JSON__", NOT_JSON)

__all__ = ["NOT_JSON", "RUNNER", "TOOLS_FILE"]
