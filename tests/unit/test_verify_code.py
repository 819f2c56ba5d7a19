"""The code verifier against real sandboxed runs (no mocks)."""

from __future__ import annotations

import os

import pytest

from stillroom.verify import VerifierInputError, verifiers
from stillroom.verify.code import CodeVerifier, extract_code

ADD = "```python\ndef add(a, b):\n    return a + b\n```\nThis adds two numbers."
ECHO_SUM = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    return CodeVerifier(cpu_seconds=1, wall_seconds=3.0, memory_mb=256)


def test_registered_as_code():
    assert verifiers.get("code") is CodeVerifier


def test_extract_code_takes_the_python_fence_or_the_whole_text():
    assert extract_code(ADD) == "def add(a, b):\n    return a + b\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("text\n```py\ny = 2\n```") == "y = 2\n"


def test_correct_solution_passes_asserts(verifier):
    verdict = verifier.verify({"completion": ADD, "tests": "assert add(1, 2) == 3\n"})
    assert verdict.passed and verdict.reward == 1.0
    assert verdict.reason == "all asserts passed"


def test_wrong_solution_fails_with_the_failing_assert(verifier):
    wrong = ADD.replace("a + b", "a - b")
    tests = "assert add(0, 0) == 0\nassert add(1, 2) == 3\n"
    verdict = verifier.verify({"completion": wrong, "tests": tests})
    assert not verdict.passed and verdict.reward == 0.0
    assert "AssertionError" in verdict.reason
    assert "assert add(1, 2) == 3" in verdict.reason


def test_stdin_stdout_pairs_pass(verifier):
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5 5", "output": "15"}]
    verdict = verifier.verify({"completion": ECHO_SUM, "tests": tests})
    assert verdict.passed
    assert verdict.reason == "all 2 stdin/stdout tests passed"


def test_apps_style_pairs(verifier):
    tests = {"inputs": ["1 2"], "outputs": ["3"]}
    assert verifier.verify({"completion": ECHO_SUM, "tests": tests}).passed


def test_stdin_stdout_pair_fails_with_expected_and_got(verifier):
    tests = [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "5"}]
    verdict = verifier.verify({"completion": ECHO_SUM, "tests": tests})
    assert not verdict.passed
    assert verdict.reason == "test 2/2: wrong output: expected '5', got '4'"
    assert verdict.details["test"] == 1


def test_crash_in_a_pair_reports_the_sandbox_reason(verifier):
    tests = [{"input": "x", "output": "1"}]
    verdict = verifier.verify({"completion": ECHO_SUM, "tests": tests})
    assert not verdict.passed
    assert verdict.reason.startswith("test 1/1: exit 1: ValueError")


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (None, "needs a `tests` column"),
        ("   ", "`tests` column is empty"),
        ([], "`tests` list is empty"),
        (42, "not int"),
        ([{"input": "1"}], "`tests`[0] must be an object with `input` and `output`"),
        ([{"input": 1, "output": "1"}], "must be strings"),
        ({"inputs": ["1"], "outputs": []}, "1 inputs but 0 outputs"),
        ({"cases": []}, "got a dict with keys ['cases']"),
    ],
)
def test_check_row_names_a_malformed_tests_column(verifier, tests, message):
    row = {"completion": "print(1)", "tests": tests}
    problem = verifier.check_row(row)
    assert problem is not None and message in problem
    with pytest.raises(VerifierInputError):
        verifier.verify(row)


def test_check_row_accepts_good_rows(verifier):
    assert verifier.check_row({"completion": "x", "tests": "assert True"}) is None


# Hostile candidates: each must come back as a failed verdict with a reason.


def test_infinite_loop_fails_on_cpu_limit(verifier):
    verdict = verifier.verify({"completion": "while True:\n    pass", "tests": "assert True"})
    assert not verdict.passed
    assert verdict.reason == "tests failed: killed: CPU time limit (1 s)"


def test_memory_bomb_fails_on_memory_limit(verifier):
    row = {"completion": "x = bytearray(10 * 1024 ** 3)", "tests": "assert x"}
    verdict = verifier.verify(row)
    assert not verdict.passed and "memory limit (256 MB)" in verdict.reason


def test_fork_bomb_fails(verifier):
    bomb = (
        "import os, time\n"
        "for _ in range(8):\n"  # bounded: 2**8 processes at most if the limit failed
        "    os.fork()\n"
        "time.sleep(30)\n"
    )
    verdict = verifier.verify({"completion": bomb, "tests": "assert True"})
    assert not verdict.passed
    assert "process limit (16)" in verdict.reason or "wall timeout" in verdict.reason


def test_writing_elsewhere_fails(verifier, tmp_path):
    target = tmp_path / "escaped.txt"
    code = f"open({str(target)!r}, 'w').write('x')"
    verdict = verifier.verify({"completion": code, "tests": "assert True"})
    assert not verdict.passed and "Error" in verdict.reason
    assert not target.exists()


def test_socket_fails(verifier):
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)"
    verdict = verifier.verify({"completion": code, "tests": "assert True"})
    assert not verdict.passed
    assert "unreachable" in verdict.reason or "network access" in verdict.reason


def test_api_key_is_not_visible(verifier, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-secret-789")
    code = "import os\nKEY = os.environ.get('OPENAI_API_KEY')"
    verdict = verifier.verify({"completion": code, "tests": "assert KEY, 'no key'"})
    assert not verdict.passed and "no key" in verdict.reason
    assert os.environ["OPENAI_API_KEY"] == "sk-fake-secret-789"
