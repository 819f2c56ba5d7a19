"""Which code of an answer is verified: :func:`extract_code`.

An answer is Markdown; the code verified is the last Python (or untagged) fenced block as a
CommonMark renderer shows it, so that what a reader takes for the answer is what is checked
(``docs/sandbox.md``, "Which block of an answer is verified"). The Markdown is read by
markdown-it-py (a CommonMark-conformant parser, already installed with ``rich``) rather than by
hand: where a fence opens and closes depends on rules a line-by-line reader gets wrong (a
closing fence indented four spaces or more is code, not a fence; a tab counts as four columns;
fences sit inside list items and block quotes; an HTML comment block hides what is in it). Used
by :class:`~stillroom.verify.code.CodeVerifier` for both kinds of tests.

Compared with open-r1's reward code (``src/open_r1/rewards.py``, ``extract_code``), which takes
the last match of the regular expression ```` ```python\\n(.*?)``` ````: it also judges the last
block (a draft-then-fix answer on its fix), but it accepts only the exact tag ``python`` (not an
untagged fence, ``py``, ``python3``, ``Python`` or ``~~~``), closes a block at the first ``` even
inside a string or a longer fence, sees blocks hidden in HTML comments or nested in other
fences, and gives "" when there is no block; we give the whole text, so that an answer that is
bare code is still run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

# Info-string tags (any case) whose block is Python; "" is an untagged fence.
PYTHON_TAGS = ("", "python", "py", "python3")
# The language of an info string, as renderers and their attribute syntaxes write it: "python",
# "python title=x", "python:main.py", "{.python}", "{python}", "{.python .numberLines}".
_LANGUAGE = re.compile(r"\s*\{?\s*\.?([A-Za-z0-9_+#-]*)")


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # Imported on first use: only a code verifier needs it, and building it takes ~0.2 s.
    from markdown_it import MarkdownIt

    # The "commonmark" preset: the spec's rules only, raw HTML recognized (so that comments
    # hide what is in them, as a renderer does). No extensions that could change block structure.
    parser = MarkdownIt("commonmark")
    # Only block structure decides where a fence is; inline parsing (links, emphasis) is not
    # needed, and on hostile text ("![" a million times) it took seconds per answer.
    parser.disable(["inline", "text_join"])
    parser.parse("")  # builds its rule caches now, not in two verifier threads at once
    return parser


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced code block of ``text`` as a CommonMark renderer shows it, in order, as (tag,
    code): the tag is the info string's language, lower-cased ("" when untagged; ``python`` for
    ``python:main.py``, ``{.python}`` or ``python title=x``); the code
    is the block's text with its fence's indentation removed. Blocks in list items and block
    quotes count; a block left open runs to the end of its container."""
    blocks = []
    # The token stream is flat: blocks nested in lists and quotes appear in document order.
    for token in _parser().parse(text):
        if token.type == "fence":
            match = _LANGUAGE.match(token.info)
            blocks.append((match.group(1).lower() if match else "", token.content))
    return blocks


def extract_code(text: str) -> str:
    """The code of an answer: the LAST fenced block tagged ``python``, ``py`` or ``python3`` (any
    case) or not tagged at all, read the way a Markdown renderer (CommonMark) shows it; the whole
    text when there is no such block.

    What the reader sees is what is verified: HTML comment blocks (``<!-- ... -->``) hide what is
    in them, fences in other languages (````text``, ````bash``, ````markdown`` with a Python
    example inside) are skipped with everything in them, a block closes only at a bare fence of
    its own kind at least as long as the one that opened it and indented less than four spaces
    (so ``````python`` with a ```````` line inside a string is one block, and so is a block
    whose docstring holds an indented ```` ``` ```` line), ``~~~`` fences count, CRLF line endings
    are read as LF, and a block left open runs to the end of the text."""
    if "\x00" in text:
        # Python refuses source holding a NUL byte, but the Markdown parser turns NUL into
        # U+FFFD (as CommonMark says), which would let such code run: the whole text, NUL kept,
        # is what is checked, and fails as Python fails it.
        return text
    blocks = [code for tag, code in code_blocks(text) if tag in PYTHON_TAGS]
    return blocks[-1] if blocks else text
