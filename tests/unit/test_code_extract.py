"""Which block of an answer the code verifier checks: the last Python or untagged fenced block,
as a CommonMark renderer shows it (docs/sandbox.md). Each case of the issue (untagged fence,
``py``/``python3`` tags, another language after the Python block, an unclosed final fence,
indented fences, ``~~~``) and the places where the previous line-by-line reader disagreed with
CommonMark; and where we agree and differ with open-r1's ``extract_code``."""

from __future__ import annotations

import pytest

from stillroom.verify.code import CodeVerifier
from stillroom.verify.code_extract import code_blocks, extract_code

DRAFT = "def add(a, b):\n    return a - b\n"
FIX = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        # untagged fences count, and the last block wins (draft, then fix)
        ("```\n" + FIX + "```", FIX),
        ("Draft:\n```\n" + DRAFT + "```\nFixed:\n```\n" + FIX + "```\n", FIX),
        ("Draft:\n```python\n" + DRAFT + "```\nFixed:\n```\n" + FIX + "```\n", FIX),
        # python tags, any case, with or without a space or trailing words
        ("```py\n" + FIX + "```", FIX),
        ("```python3\n" + FIX + "```", FIX),
        ("```Python\n" + FIX + "```", FIX),
        ("``` python title=add.py\n" + FIX + "```", FIX),
        # another language after the Python block is not code to verify
        ("```python\n" + FIX + "```\nOutput:\n```text\n3\n```\n", FIX),
        ("```python\n" + FIX + "```\nRun it:\n```bash\npython add.py\n```\n", FIX),
        ("```python\n" + FIX + "```\n~~~console\n$ python add.py\n~~~\n", FIX),
        # an unclosed final fence runs to the end of the answer (as a renderer shows it)
        ("```python\n" + DRAFT + "```\nFixed:\n```python\n" + FIX, FIX),
        ("```python\n" + FIX + "```\n```bash\npython add.py\n", FIX),  # unclosed, not Python
        # ~~~ fences
        ("~~~python\n" + FIX + "~~~\n", FIX),
        ("~~~\n" + FIX + "~~~\n", FIX),
        # indented fences: up to three spaces, or inside a list item or a block quote
        ("   ```python\n   def add(a, b):\n       return a + b\n   ```\n", FIX),
        ("1. Write it:\n\n   ```python\n   def add(a, b):\n       return a + b\n   ```\n", FIX),
        ("- Write it:\n\n    ```python\n    def add(a, b):\n        return a + b\n    ```\n", FIX),
        ("> ```python\n> def add(a, b):\n>     return a + b\n> ```\n", FIX),
        # CRLF line endings
        ("```python\r\ndef add(a, b):\r\n    return a + b\r\n```\r\n", FIX),
        # no block: the whole answer
        ("def add(a, b): return a + b", "def add(a, b): return a + b"),
    ],
)
def test_the_last_python_or_untagged_block_is_the_code(answer: str, code: str) -> None:
    assert extract_code(answer) == code


def test_fence_rules_a_line_by_line_reader_got_wrong() -> None:
    # A closing fence indented four spaces or more is code (CommonMark 4.5): a docstring that
    # shows a fenced example stays in the block. Before: the block closed there, and the final
    # ``` opened an empty one, so "" was verified.
    docstring = (
        "```python\ndef add(a, b):\n    '''Use it as:\n    ```\n    add(1, 2)\n    ```\n"
        "    '''\n    return a + b\n```\n"
    )
    assert extract_code(docstring) == docstring.split("\n", 1)[1].rsplit("```", 1)[0]
    # Four spaces (or a tab) at the top level make an indented code block that shows the
    # ```python line as text: no fence there. Before: taken for a fence (and the last block).
    shown_as_text = "```python\n" + FIX + "```\n\n    ```python\n    x = 0\n    ```\n"
    assert extract_code(shown_as_text) == FIX
    assert extract_code("\t```python\n\tx = 0\n\t```\n") == "\t```python\n\tx = 0\n\t```\n"
    # A fence in a block quote is a code block. Before: not seen, so the earlier draft was used.
    quoted = (
        "```python\n"
        + DRAFT
        + "```\n> Fixed:\n>\n> ```python\n> "
        + FIX.replace("\n    ", "\n>     ")
    )
    assert extract_code(quoted + "> ```\n") == FIX


def test_what_a_reader_cannot_see_is_not_verified() -> None:
    hidden = "<!--\n```python\n" + FIX + "```\n-->\n\n```python\n" + DRAFT + "```\n"
    assert extract_code(hidden) == DRAFT
    nested = "To show a block you type:\n\n````markdown\n```python\n" + FIX + "```\n````\n"
    assert extract_code(nested) == nested  # the only Python is an example inside markdown
    longer = "````python\ndef add(a, b):\n    s = '''\n```\n'''\n    return a + b\n````\n"
    assert extract_code(longer) == longer.split("\n", 1)[1].rsplit("````", 1)[0]


def test_code_blocks_lists_every_block_with_its_tag() -> None:
    answer = "```Python3 x\na\n```\n~~~\nb\n~~~\n```text\nc\n```\n"
    assert code_blocks(answer) == [("python3", "a\n"), ("", "b\n"), ("text", "c\n")]


# open-r1's extract_code (src/open_r1/rewards.py) on the same answers, run on commit 0056faa:
# the last ```python block. Where a block is tagged exactly "python", closed, at the top level
# and not hidden, it and we take the same code.
OPEN_R1_AGREES = [
    ("Draft:\n```python\n" + DRAFT + "```\nFixed:\n```python\n" + FIX + "```\n", FIX),
    ("```python\n" + FIX + "```\nOutput:\n```text\n3\n```\n", FIX),
    ("```python\n" + FIX + "```\n```bash\npython add.py\n```\n", FIX),
]
# ... and where it differs, with what it returns: untagged and ``py`` fences give "", a ```
# inside a longer fence ends its block, a hidden block or one nested in another fence counts.
OPEN_R1_DIFFERS = [
    ("```\n" + FIX + "```", "", FIX),
    ("```py\n" + FIX + "```", "", FIX),
    ("~~~python\n" + FIX + "~~~\n", "", FIX),
    (
        "````python\ndef add(a, b):\n    s = '''\n```\n'''\n    return a + b\n````\n",
        "def add(a, b):\n    s = '''\n",
        "def add(a, b):\n    s = '''\n```\n'''\n    return a + b\n",
    ),
    ("```python\n" + FIX + "```\n<!--\n```python\n" + DRAFT + "```\n-->\n", DRAFT, FIX),
]


@pytest.mark.parametrize(("answer", "code"), OPEN_R1_AGREES)
def test_where_open_r1_agrees(answer: str, code: str) -> None:
    assert extract_code(answer) == code


@pytest.mark.parametrize(("answer", "open_r1", "ours"), OPEN_R1_DIFFERS)
def test_where_open_r1_differs(answer: str, open_r1: str, ours: str) -> None:
    assert extract_code(answer) == ours != open_r1


def test_the_verifier_runs_a_block_whose_docstring_shows_a_fence() -> None:
    docstring = (
        "```python\ndef add(a, b):\n    '''Use it as:\n    ```\n    add(1, 2)\n    ```\n"
        "    '''\n    return a + b\n```\n"
    )
    verifier = CodeVerifier(cpu_seconds=1, wall_seconds=3.0, memory_mb=256)
    verdict = verifier.verify(
        {"completion": docstring, "tests": "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"}
    )
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize("info", ["python:main.py", "{.python}", "{python}", "python {.class}",
                                  "{.python .numberLines}", "Python title=fix.py"])
def test_attribute_syntaxes_of_the_python_tag_are_python(info: str) -> None:
    # Before, only the first word was compared with the tags, so these final blocks were
    # skipped and the draft before them was verified.
    answer = f"```python\nprint('draft')\n```\nFixed:\n```{info}\nprint('fix')\n```\n"
    assert extract_code(answer) == "print('fix')\n"


def test_a_nul_byte_is_not_turned_into_code_python_would_run() -> None:
    # CommonMark replaces NUL with U+FFFD; Python refuses source with NUL: the text is kept whole.
    answer = "```python\ns = 'a\x00b'\nprint(len(s))\n```\n"
    assert "\x00" in extract_code(answer)
    assert "\ufffd" not in extract_code(answer)


def test_hostile_inline_markup_is_not_parsed() -> None:
    import time

    text = "![" * 500_000 + "\n```python\nprint(1)\n```\n"
    plain = "ab" * 500_000 + "\n```python\nprint(1)\n```\n"
    extract_code(plain)  # the parser built
    started = time.perf_counter()
    assert extract_code(plain) == "print(1)\n"
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    assert extract_code(text) == "print(1)\n"
    # Against plain text of the same size measured here: inline parsing made it ~1000x slower.
    assert time.perf_counter() - started < 20 * baseline + 0.05
