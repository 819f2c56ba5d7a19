"""Which code of an answer is verified: :func:`extract_code`.

An answer is Markdown; the code verified is the last Python (or untagged) fenced block as a
CommonMark renderer shows it, so that what a reader takes for the answer is what is checked
(``docs/sandbox.md``, "Which block of an answer is verified"). Standard library only; used by
:class:`~stillroom.verify.code.CodeVerifier` for both kinds of tests.
"""

from __future__ import annotations

import re

_FENCE_OPEN = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_FENCE_CLOSE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*$")
_PYTHON_TAGS = ("python", "py", "python3")


def extract_code(text: str) -> str:
    """The code of an answer: the LAST fenced block tagged ``python``, ``py`` or ``python3`` or
    not tagged at all, read the way a Markdown renderer (CommonMark) shows it; the whole text
    when there is no such block.

    What the reader sees is what is verified: HTML comments (``<!-- ... -->``, outside code
    blocks) hide what is in them, fences in other languages (````text``, ````markdown``) are
    skipped with everything in them, a block closes only at a bare fence of its own kind at
    least as long as the one that opened it (so ``````python`` with a ```````` line inside a
    string is one block), CRLF line endings are read as LF, and a block left open runs to the
    end of the text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text's final newline ends its last line; it is not a line of its own
    blocks: list[str] = []
    in_comment = False
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if in_comment:
            end = line.find("-->")
            if end < 0:
                continue
            in_comment = _opens_comment(line[end + 3 :])
            continue
        opened = _FENCE_OPEN.match(line)
        if opened and not (opened.group(2)[0] == "`" and "`" in opened.group(3)):
            indent, fence, info = opened.groups()
            body: list[str] = []
            while i < len(lines):
                closed = _FENCE_CLOSE.match(lines[i])
                i += 1
                if closed and closed.group(1)[0] == fence[0] and len(closed.group(1)) >= len(fence):
                    break
                body.append(_dedent(lines[i - 1], len(indent)))
            tag = info.strip().split()[0].lower() if info.strip() else ""
            if tag in ("", *_PYTHON_TAGS):
                blocks.append("".join(b + "\n" for b in body))
            continue
        in_comment = _opens_comment(line)
    return blocks[-1] if blocks else text


def _opens_comment(text: str) -> bool:
    """Whether ``text`` (outside a code block) leaves an HTML comment open."""
    while True:
        start = text.find("<!--")
        if start < 0:
            return False
        end = text.find("-->", start + 4)
        if end < 0:
            return True
        text = text[end + 3 :]


def _dedent(line: str, width: int) -> str:
    """``line`` without up to ``width`` leading spaces (the indentation of its fence)."""
    strip = 0
    while strip < width and strip < len(line) and line[strip] in " \t":
        strip += 1
    return line[strip:]
