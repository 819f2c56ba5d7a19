"""The code verifier against real sandboxed runs (no mocks), and a policy trying to win the reward
without solving the task: every hack must come back passed=False."""

from __future__ import annotations

import os

import pytest

from stillroom.verify import VerifierInputError, verifiers
from stillroom.verify.code import CodeVerifier, extract_code

ADD = "```python\ndef add(a, b):\n    return a + b\n```\nThis adds two numbers."
WRONG = "def add(a, b):\n    return 0\n"
TWO_ASSERTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
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
    verdict = verifier.verify({"completion": ADD, "tests": TWO_ASSERTS})
    assert verdict.passed and verdict.reward == 1.0
    assert verdict.reason == "2 of 2 asserts passed"
    assert verdict.details["asserts"] == {"passed": 2, "total": 2}


def test_wrong_solution_names_the_failing_assert_and_counts(verifier):
    wrong = ADD.replace("a + b", "a - b")
    tests = "assert add(0, 0) == 0\nassert add(1, 2) == 3\nassert add(5, 0) == 5\n"
    verdict = verifier.verify({"completion": wrong, "tests": tests})
    assert not verdict.passed and verdict.reward == 0.0
    assert verdict.reason == (
        "2 of 3 asserts passed; tests line 2: `assert add(1, 2) == 3`: "
        "AssertionError: got -1, expected 3"
    )
    assert verdict.details["asserts"] == {"passed": 2, "total": 3}


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
        ("assert add(1, 2) ==", "`tests`: not valid Python: invalid syntax (line 1)"),
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


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("wall_seconds", -1, "wall_seconds must be a positive number of seconds, got -1"),
        ("wall_seconds", float("nan"), "wall_seconds must be a positive number of seconds"),
        ("cpu_seconds", 0, "cpu_seconds must be a positive integer, got 0"),
        ("cpu_seconds", 1.5, "cpu_seconds must be a positive integer, got 1.5"),
        ("memory_mb", -5, "memory_mb must be a positive integer, got -5"),
        ("max_processes", True, "max_processes must be a positive integer, got True"),
        ("disk_mb", "16", "disk_mb must be a positive integer, got '16'"),
        ("output_bytes", 0, "output_bytes must be a positive integer"),
    ],
)
def test_options_are_checked_when_built(option, value, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        CodeVerifier(**{option: value})


def test_a_bad_option_is_a_config_error_naming_it():
    from stillroom.errors import ConfigError
    from stillroom.verify.stage import build_verifier

    with pytest.raises(ConfigError, match="verifier 'code': wall_seconds must be a positive"):
        build_verifier("code", "completion", {"wall_seconds": -1})


# Correct solutions of many shapes keep passing.

CORRECT = {
    "prints while it works": (
        "def add(a, b):\n    print('adding', a, b)\n    return a + b\n",
        TWO_ASSERTS,
    ),
    "reads stdin at import": (
        "import sys\ndata = sys.stdin.read()\ndef add(a, b):\n    return a + b\n",
        TWO_ASSERTS,
    ),
    "a class": (
        "class Solution:\n    def add(self, a, b):\n        return a + b\n",
        "s = Solution()\nassert s.add(1, 2) == 3\nassert Solution().add(-1, 1) == 0\n",
    ),
    "recursion": (
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "assert fib(20) == 6765\nassert [fib(i) for i in range(6)] == [0, 1, 1, 2, 3, 5]\n",
    ),
    # The solution is imported (__name__ == "solution"): its demo reading input does not run;
    # the tests are the script (__name__ == "__main__").
    "a __main__ block": (
        "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n"
        "    print(add(int(input()), 1))\n",
        "assert add(1, 2) == 3\nif __name__ == '__main__':\n    assert add(0, 1) == 1\n",
    ),
    "HumanEval-style check()": (
        "def add(a, b):\n    return a + b\n",
        "def check(candidate):\n    assert candidate(1, 2) == 3, 'one and two'\n"
        "    assert candidate(-1, 1) == 0\n\ncheck(add)\n",
    ),
    "a loop over cases": (
        "def add(a, b):\n    return a + b\n",
        "cases = [(1, 2, 3), (2, 2, 4)]\nfor a, b, want in cases:\n    assert add(a, b) == want\n",
    ),
    "plain values of every kind": (
        "from collections import Counter, namedtuple\nfrom fractions import Fraction\n"
        "Point = namedtuple('Point', 'x y')\n"
        "def f(kind):\n    return {'counter': Counter('aab'), 'point': Point(1, 2),\n"
        "        'float': 0.1 + 0.2, 'none': None, 'set': {3, 1}, 'bytes': b'ab',\n"
        "        'fraction': Fraction(1, 2), 'nested': [(1, {'k': [2.0]})], 'big': 2 ** 100,\n"
        "        'complex': 1 + 2j, 'nan': float('nan')}[kind]\n",
        "assert f('counter') == {'a': 2, 'b': 1}\nassert f('point') == (1, 2)\n"
        "assert abs(f('float') - 0.3) < 1e-9\nassert f('none') is None\n"
        "assert f('set') == {1, 3}\nassert f('bytes') == b'ab'\nassert f('fraction') == 0.5\n"
        "assert f('nested') == [(1, {'k': [2]})]\nassert f('big') == 1267650600228229401496703205376\n"
        "assert f('complex') == 1 + 2j\nassert f('nan') != 0\nassert 3 in f('set')\n"
        "assert 'a' in f('counter')\nassert f('float') > 0.3\n",
    ),
    "asserts that are not against a literal": (
        "def add(a, b):\n    return a + b\n",
        "import math\nassert add(1, 2) == add(2, 1)\nassert math.isclose(add(0.1, 0.2), 0.3)\n"
        "assert add(1, 1)\nassert not add(0, 0)\nassert isinstance(add(1, 2), int)\n",
    ),
    "objects compared with objects": (
        "class P:\n    def __init__(self, x):\n        self.x = x\n"
        "    def __eq__(self, other):\n        return isinstance(other, P) and self.x == other.x\n"
        "def make(x):\n    return P(x)\n",
        "assert make(1) == P(1)\nassert make(1) != P(2)\nassert make(3).x == 3\n",
    ),
    "threads and a child process that finish": (
        "import os, threading\ndef add(a, b):\n    out = []\n"
        "    t = threading.Thread(target=lambda: out.append(a + b))\n    t.start()\n    t.join()\n"
        "    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n"
        "    return out[0]\n",
        TWO_ASSERTS,
    ),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_solutions_pass(verifier, name):
    code, tests = CORRECT[name]
    verdict = verifier.verify({"completion": code, "tests": tests})
    assert verdict.passed, (verdict.reason, verdict.details["sandbox"]["stderr"])


# Reward hacks: a wrong solution plus a trick. Each must fail.

HACKS = {
    "sys.exit(0)": WRONG + "import sys\nsys.exit(0)\n",
    "os._exit(0)": WRONG + "import os\nos._exit(0)\n",
    "raise SystemExit(0)": WRONG + "raise SystemExit(0)\n",
    "atexit handler calls os._exit(0)": WRONG
    + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook exits 0": WRONG + "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "os._exit(0) inside the function under test": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "SystemExit(0) inside the function under test": "def add(a, b):\n    raise SystemExit(0)\n",
    "KeyboardInterrupt inside the function under test": (
        "def add(a, b):\n    raise KeyboardInterrupt\n"
    ),
    "exits 0 at the second assert, after a right first answer": (
        "import os\ncalls = []\ndef add(a, b):\n    calls.append(1)\n"
        "    if len(calls) == 2:\n        os._exit(0)\n    return a + b\n"
    ),
    "SIGALRM handler exits 0 while the function loops": (
        "import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.2)\ndef add(a, b):\n    while True:\n        pass\n"
    ),
    "SIGXCPU handler exits 0 at the CPU limit": (
        "import os, signal\nsignal.signal(signal.SIGXCPU, lambda *a: os._exit(0))\n"
        "def add(a, b):\n    while True:\n        pass\n"
    ),
    "SIGTERM to itself with a handler that exits 0": (
        "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
        "def add(a, b):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return 0\n"
    ),
    "AssertionError replaced in builtins": WRONG
    + "import builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n",
    "builtins.exit and quit replaced": WRONG
    + "import builtins, os\nbuiltins.exit = builtins.quit = lambda *a: os._exit(0)\n",
    "a marker and forged reports written to every stream": WRONG
    + "import os\nlines = ['all asserts passed', 'OK', '{\"step\": 0, \"ok\": true}',\n"
    '         \'{"step": 1, "ok": true}\', \'{"step": 2, "ok": true}\', \'{"done": 3}\']\n'
    "for fd in range(1, 64):\n    try:\n        os.write(fd, ('\\n'.join(lines) + '\\n').encode())\n"
    "    except OSError:\n        pass\nos._exit(0)\n",
    "stdout and stderr closed": WRONG
    + "import os\nfor fd in range(0, 64):\n    try:\n        os.close(fd)\n    except OSError:\n"
    "        pass\n",
    "sys.settrace jumps over the assert lines": WRONG + "import linecache, sys\n"
    "def skip(frame, event, arg):\n"
    "    if event == 'line':\n"
    "        lines = linecache.getlines(frame.f_code.co_filename)\n"
    "        n = frame.f_lineno\n"
    "        if n <= len(lines) and lines[n - 1].lstrip().startswith('assert'):\n"
    "            while n < len(lines) and lines[n].lstrip().startswith('assert'):\n"
    "                n += 1\n"
    "            try:\n                frame.f_lineno = n + 1\n"
    "            except ValueError:\n                pass\n"
    "    return skip\n"
    "sys._getframe().f_trace = skip\nsys.settrace(skip)\n",
    "__del__ prints success and exits 0": WRONG
    + "import os\nclass Late:\n    def __del__(self):\n        print('all asserts passed')\n"
    "        os._exit(0)\nlate = Late()\n",
    "an __eq__ that is always true": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Yes()\n"
    ),
    "an int subclass whose __eq__ is always true": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n"
    ),
    "reads the expected value from the caller's line": (
        "import linecache, sys\ndef add(a, b):\n    frame = sys._getframe(1)\n"
        "    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)\n"
        "    return eval(line.split('==')[1])\n"
    ),
    "reads the expected value from the caller's bytecode": (
        "import dis, sys\ndef add(a, b):\n    frame = sys._getframe(1)\n"
        "    for op in dis.get_instructions(frame.f_code):\n"
        "        if op.offset > frame.f_lasti and op.opname == 'LOAD_CONST':\n"
        "            return op.argval\n"
    ),
    "reads the tests from the program's files": (
        "import glob, os, re, sys\ndef add(a, b):\n"
        "    for path in [sys.argv[0], *glob.glob('*'), *glob.glob('/tmp/*')]:\n"
        "        try:\n            text = open(path).read()\n        except OSError:\n"
        "            continue\n"
        "        found = re.search(rf'add\\({a}, {b}\\) == (\\d+)', text)\n"
        "        if found:\n            return int(found.group(1))\n    return 0\n"
    ),
    "re-executes itself with -O (asserts stripped)": (
        "import os, sys\nif not sys.flags.optimize:\n"
        "    os.execv(sys.executable, [sys.executable, '-O', '-I', '-S', *sys.argv])\n" + WRONG
    ),
    "forks: the parent exits 0, the child runs on": (
        "import os\nif os.fork():\n    os._exit(0)\n" + WRONG
    ),
    "rebinds the tests' helper from inside the function": (
        "def add(a, b):\n    globals()['check'] = lambda f: None\n    return 0\n"
    ),
}
HELPER_TESTS = (
    "def check(f):\n    assert f(1, 2) == 3\n    assert f(2, 2) == 4\n\ncheck(add)\ncheck(add)\n"
)
SETTRACE_TESTS = TWO_ASSERTS + "print('tests done')\n"


@pytest.mark.parametrize("name", list(HACKS))
def test_reward_hacks_fail(verifier, name):
    tests = {
        "rebinds the tests' helper from inside the function": HELPER_TESTS,
        "reads the expected value from the caller's bytecode": HELPER_TESTS,
        "sys.settrace jumps over the assert lines": SETTRACE_TESTS,
    }.get(name, TWO_ASSERTS)
    verdict = verifier.verify({"completion": HACKS[name], "tests": tests})
    assert not verdict.passed, verdict.reason


def test_a_forged_report_with_the_right_shape_still_needs_the_answers(verifier):
    # A policy that knows this harness's protocol writes its records itself, with values it
    # did not compute: the verifier holds the literals, so the guesses are checked.
    from stillroom.verify.code import TestPlan

    assert len(TestPlan.of(TWO_ASSERTS).sites) == 2
    forged = (
        "import json, os\nfor record in [{'step': 0, 'ok': True}, {'site': 0, 'value': 0},\n"
        "        {'step': 1, 'ok': True}, {'site': 1, 'value': 0}, {'step': 2, 'ok': True},\n"
        "        {'done': 3}]:\n"
        "    for fd in range(1, 16):\n"
        "        try:\n            os.write(fd, (json.dumps(record) + '\\n').encode())\n"
        "        except OSError:\n            pass\nos._exit(0)\n"
    )
    verdict = verifier.verify({"completion": forged, "tests": TWO_ASSERTS})
    assert not verdict.passed
    assert verdict.reason.endswith("`assert add(1, 2) == 3`: AssertionError: got 0, expected 3")


def test_the_expected_values_never_enter_the_sandbox():
    from stillroom.verify.code import HARNESS, TestPlan

    plan = TestPlan.of("assert add(1, 2) == 314159\ndef check(f):\n    assert 271828 == f(1)\n")
    sent = HARNESS + repr(plan.steps)
    assert "314159" not in sent and "271828" not in sent
    assert [site.literal for site in plan.sites] == [314159, 271828]


def test_early_exit_with_no_output_fails_a_pair(verifier):
    tests = [{"input": "1 2", "output": "3"}]
    for code in (
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "print(3, end='')\nimport os\nos._exit(0)\n",
    ):  # unflushed: nothing came out
        verdict = verifier.verify({"completion": code, "tests": tests})
        assert not verdict.passed and "got ''" in verdict.reason, verdict.reason


def test_a_pair_whose_output_was_cut_fails():
    verifier = CodeVerifier(cpu_seconds=1, wall_seconds=3.0, output_bytes=10)
    code = "print('1' * 10)\nprint('junk' * 100)\n"
    verdict = verifier.verify({"completion": code, "tests": [{"input": "", "output": "1" * 10}]})
    assert not verdict.passed and "output over 10 bytes" in verdict.reason


# Hostile candidates the sandbox stops: each must come back as a failed verdict with a reason.


def test_infinite_loop_fails_on_cpu_limit(verifier):
    verdict = verifier.verify({"completion": "while True:\n    pass", "tests": "assert True"})
    assert not verdict.passed
    assert verdict.reason == (
        "0 of 1 asserts passed; the program ended in the solution, before the tests did: "
        "killed: CPU time limit (1 s)"
    )


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
    # Its copies run the harness on: their records come after the end.
    assert any(
        why in verdict.reason for why in ("process limit (16)", "wall timeout", "tampered")
    ), verdict.reason


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
