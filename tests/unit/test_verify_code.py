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
    assert verdict.details["asserts"] == {
        "passed": 2,
        "total": 2,
        "checked_outside": 2,
        "checked_inside": 0,
        "without_leaves": 0,
    }


def test_wrong_solution_names_the_failing_assert_and_counts(verifier):
    wrong = ADD.replace("a + b", "a - b")
    tests = "assert add(0, 0) == 0\nassert add(1, 2) == 3\nassert add(5, 0) == 5\n"
    verdict = verifier.verify({"completion": wrong, "tests": tests})
    assert not verdict.passed and verdict.reward == 0.0
    assert verdict.reason == (
        "2 of 3 asserts passed; tests line 2: `assert add(1, 2) == 3`: "
        "AssertionError: got -1, expected 3"
    )
    assert verdict.details["asserts"]["passed"] == 2
    assert verdict.details["asserts"]["total"] == 3


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

HE4_TESTS_CODE = (
    "\nMETADATA = {'author': 'jt', 'dataset': 'test'}\n\n\ndef check(candidate):\n"
    "    assert abs(candidate([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6\n"
    "    assert abs(candidate([1.0, 2.0, 3.0, 4.0]) - 1.0) < 1e-6\n"
    "    assert abs(candidate([1.0, 2.0, 3.0, 4.0, 5.0]) - 6.0/5.0) < 1e-6\n\n"
    "check(mean_absolute_deviation)\n"
)
HE4_RIGHT_CODE = (
    "```python\nfrom typing import List\n\n"
    "def mean_absolute_deviation(numbers: List[float]) -> float:\n"
    "    mean = sum(numbers) / len(numbers)\n"
    "    return sum(abs(x - mean) for x in numbers) / len(numbers)\n```"
)

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
        "import json, os\nfor record in [{'step': 0, 'ok': True},\n"
        "        {'site': 0, 'leaves': [0], 'pairs': []}, {'step': 1, 'ok': True},\n"
        "        {'site': 1, 'leaves': [0], 'pairs': []}, {'step': 2, 'ok': True},\n"
        "        {'done': 3}]:\n"
        "    for fd in range(1, 16):\n"
        "        try:\n            os.write(fd, (json.dumps(record) + '\\n').encode())\n"
        "        except OSError:\n            pass\nos._exit(0)\n"
    )
    verdict = verifier.verify({"completion": forged, "tests": TWO_ASSERTS})
    assert not verdict.passed
    assert verdict.reason.endswith("`assert add(1, 2) == 3`: AssertionError: got 0, expected 3")


def test_the_expected_values_never_enter_the_sandbox():
    import ast

    from stillroom.verify.code import HARNESS, TestPlan

    plan = TestPlan.of(
        "assert add(1, 2) == 314159\ndef check(f):\n    assert 271828 == f(1)\n"
        "    assert abs(f([1.0, 2.0]) - 2.0 / 161803.0) < 1e-6\n"
        "    assert sorted(f(x)) == [141421, 173205] and f(1) is not None\n"
        "    for a, b in [(1, 2)]:\n"
        "        assert f(a) == [223606][0] + b\n"
    )
    sent = HARNESS + repr(plan.steps)
    for expected in ("314159", "271828", "161803", "141421", "173205", "223606"):
        assert expected not in sent
    residuals = [ast.unparse(site.residual) for site in plan.sites]
    assert "314159" in residuals[0] and "271828" in residuals[1] and "161803" in residuals[2]


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
        why in verdict.reason
        for why in ("process limit (16)", "wall timeout", "damaged or forged")
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


# ---------------------------------------------------------------- the red team's findings
# Each attack below won (passed=True) or crashed the verifier before the asserts were split
# into leaves checked inside and residuals checked here (docs/sandbox.md). Each must now fail.

WRONG_ADD = "def add(a, b):\n    return a - b\n"
HE4_TESTS = HE4_TESTS_CODE

# Correct answers as a model writes them: a wrong draft block first, then the final one (the
# previous verifier checked the draft); fences with CRLF or no language tag (it found no
# code); results it could not compare (a generator, an object).
HUMANEVAL_STYLE = {
    "HumanEval/4: check() with tolerance asserts": (HE4_RIGHT_CODE, HE4_TESTS_CODE),
    "a loop over cases in check(), `candidate(x) == sorted(x)`": (
        "def sort_it(xs):\n    return sorted(xs)\n",
        "def check(candidate):\n    for xs in [[3, 1, 2], [], [5, 5, 1]]:\n"
        "        assert candidate(xs) == sorted(xs)\n"
        "        assert candidate(list(xs)) == sorted(xs, reverse=True)[::-1]\n"
        "        assert len(candidate(xs)) == len(xs)\ncheck(sort_it)\n",
    ),
    "`is None`, `is not None`, short-circuits": (
        "def find(xs, v):\n    return xs.index(v) if v in xs else None\n",
        "assert find([1, 2], 3) is None\nassert find([1, 2], 2) is not None\n"
        "for v in (2, 3):\n    r = find([1, 2], v)\n    assert r is None or r == v - 1\n"
        "    assert (r if r is not None else -1) in (1, -1)\n",
    ),
    "string methods on the result": (
        "def greet(n):\n    return f'Hello, {n}!'\n",
        "def check(candidate):\n    assert candidate('Bob').lower() == 'hello, bob!'\n"
        "    assert candidate('x').startswith('Hello')\n"
        "    assert candidate('x').split(',')[0] == 'Hello'\n    assert 'Bob' in candidate('Bob')\n"
        "    assert ' '.join(candidate('a').split()) == 'Hello, a!'\ncheck(greet)\n",
    ),
    "a generator, listed by the assert": (
        "def gen(n):\n    for i in range(n):\n        yield i * 2\n",
        "assert list(gen(3)) == [0, 2, 4]\nassert sorted(gen(2)) == [0, 2]\n"
        "assert 4 in gen(3)\nassert sum(gen(3)) == 6\nassert max(gen(3)) == 4\n",
    ),
    "comprehensions, isinstance, math, walrus, f-strings": (
        "import math\ndef sq(x):\n    return x * x\ndef area(r):\n    return math.pi * r * r\n",
        "from math import isclose\nimport math\n"
        "assert [sq(x) for x in range(3)] == [0, 1, 4]\nassert sum(sq(x) for x in range(4)) == 14\n"
        "assert isinstance(sq(2), int) and type(sq(2)) is int\n"
        "assert isclose(area(2), 4 * math.pi) and round(area(2), 2) == 12.57\n"
        "assert (n := sq(3)) == 9 and n > 8\nassert f'{sq(2):03d}' == '004'\n"
        "assert [x * 2 for x in map(sq, [1, 2])] == [2, 8]\n",
    ),
    "loops over literal cases (written out), an in-place sort": (
        "def add(a, b):\n    return a + b\ndef sort_in_place(xs):\n    xs.sort()\n",
        "CASES = [(1, 2, 3), (2, 2, 4)]\nfor a, b, want in CASES:\n    assert add(a, b) == want\n"
        "for xs, want in [([3, 1, 2], [1, 2, 3])]:\n    sort_in_place(xs)\n    assert xs == want\n"
        "for i, (a, b) in enumerate(zip([1, 2], [3, 4])):\n    assert add(a, b) == [4, 6][i]\n"
        "assert want == [1, 2, 3]\n"
        "for c in [([3, 1], [1, 3]), ([2, 1], [1, 2])]:\n    sort_in_place(c[0])\n"
        "    assert c[0] == c[1]\n"
        "for case in [{'in': (1, 2), 'out': 3}]:\n    assert add(*case['in']) == case['out']\n",
    ),
}


def _as_a_model_writes_it(code: str, style: int) -> str:
    code = code.replace("```python\n", "").replace("```", "")
    if style == 0:
        return "My first try:\n```python\nraise SystemExit(1)\n```\nFixed:\n```python\n" + code + "```"
    if style == 1:
        return "```\n" + code + "```"
    return ("Here it is:\n```python\n" + code + "```\n").replace("\n", "\r\n")


@pytest.mark.parametrize("name", list(HUMANEVAL_STYLE))
def test_correct_humaneval_style_answers_pass(verifier, name):
    code, tests = HUMANEVAL_STYLE[name]
    for style in range(3):
        completion = _as_a_model_writes_it(code, style)
        verdict = verifier.verify({"completion": completion, "tests": tests})
        assert verdict.passed, (style, verdict.reason, verdict.details["sandbox"]["stderr"])


def _forger(*records: str) -> str:
    """An answer that writes ``records`` (lines of the harness's protocol) to every fd, as the
    harness's report would be, and exits 0 before the harness can write anything."""
    lines = "".join(record + "\n" for record in records)
    return (
        "import os\n"
        f"for fd in range(1, 16):\n    try:\n        os.write(fd, {lines.encode()!r})\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    )


B_ATTACKS = {
    # B1: the expected value inside the assert's expression, the answer's object subtracted.
    "B1 HumanEval/4: an object whose __sub__ returns 0.0": (
        "class Zero:\n    def __sub__(self, other):\n        return 0.0\n"
        "    __rsub__ = __sub__\n"
        "def mean_absolute_deviation(numbers):\n    return Zero()\n",
        HE4_TESTS,
    ),
    "B1 a float subclass whose __sub__ returns 0.0": (
        "class F(float):\n    def __sub__(self, other):\n        return 0.0\n"
        "def mean_absolute_deviation(numbers):\n    return F(0.0)\n",
        HE4_TESTS,
    ),
    # B2: a checker the tests define cannot be replaced by the answer (HumanEval/32's poly is
    # the answer's own when the tests do not define it: see docs/sandbox.md).
    "B2 the tests' poly rebound from inside the function": (
        "def find_zero(xs):\n    globals()['poly'] = lambda xs, x: 0.0\n    return 0.0\n",
        "import math\ndef poly(xs, x):\n"
        "    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
        "def check(candidate):\n    for xs in ([1, 2], [-6, 11, -6, 1]):\n"
        "        solution = candidate(xs)\n"
        "        assert math.fabs(poly(xs, solution)) < 1e-4\ncheck(find_zero)\n",
    ),
    # B3, the filter variant: hide the tests' own AssertionError from the report.
    "B3 raise-based check with the harness's error records filtered": (
        "import __main__ as _h\n_r = _h._report\ndef _rep(rec):\n    if 'error' in rec:\n"
        "        rec = {'step': rec['step'], 'ok': True}\n    _r(rec)\n_h._report = _rep\n"
        + WRONG_ADD,
        "def check(candidate):\n    if candidate(1, 2) != 3:\n"
        "        raise AssertionError('wrong')\ncheck(add)\n",
    ),
    # B4: the harness's hooks taken over through `import __main__`.
    "B4 _verdict rebound in the harness's module": (
        "import __main__ as _h\n_r = _h._report\n"
        "def _v(site, held, why, message):\n    _r({'site': site, 'ok': True, 'why': ''})\n"
        "_h._verdict = _v\n" + WRONG_ADD,
        "assert add(1, 2) == add(2, 1)\nassert add(2, 2) == 2 + 2\n"
        "assert add(0, 0) == 1 and add(1, 1) == 7\nassert not add(1, 1)\n",
    ),
    # B5: the expected value read from the caller's bytecode, where it is folded or not a
    # literal of the kind the previous verifier took out.
    "B5 folded arithmetic read from the caller's bytecode": (
        "import dis, sys\ndef _expected():\n    f = sys._getframe(2)\n"
        "    consts = [y.argval for y in dis.get_instructions(f.f_code)\n"
        "              if y.offset > f.f_lasti and y.opname == 'LOAD_CONST']\n"
        "    return consts[1] if len(consts) > 1 else 0\n"
        "def add(a, b):\n    return _expected()\n",
        "assert add(1, 2) == 1 + 2\nassert add(10**9, 7) == 10**9 + 7\n"
        "assert add(2, 2) == 2.0 * 2\n",
    ),
    "B5 the next constant of the caller, in 'and', chains and a helper's loop": (
        "import sys, dis\ndef _next_const():\n    f = sys._getframe(2)\n"
        "    for y in dis.get_instructions(f.f_code):\n"
        "        if y.offset > f.f_lasti and y.opname == 'LOAD_CONST':\n"
        "            return y.argval\n    return 0\n"
        "def add(a, b):\n    return _next_const()\n",
        "assert add(1, 2) == 3 and add(2, 2) == 4\n",
    ),
    "B5 the next constant of the caller, in a chain": (
        "import sys, dis\ndef add(a, b):\n    f = sys._getframe(1)\n"
        "    for y in dis.get_instructions(f.f_code):\n"
        "        if y.offset > f.f_lasti and y.opname == 'LOAD_CONST':\n"
        "            return y.argval\n    return 0\n",
        "assert add(1, 2) == 3 == 3\nassert not add(1, 2) != 3\n",
    ),
    "B5 the next constant of the caller, in a helper's loop": (
        "import sys, dis\ndef add(a, b):\n    f = sys._getframe(1)\n"
        "    for y in dis.get_instructions(f.f_code):\n"
        "        if y.offset > f.f_lasti and y.opname == 'LOAD_CONST':\n"
        "            return y.argval\n    return 0\n",
        "def check(c):\n    for x in range(2):\n        assert c(x, 1) == 7 and True\ncheck(add)\n",
    ),
    "B5 a loop variable read from the caller's frame (literal cases)": (
        "import sys\ndef add(a, b):\n    return sys._getframe(1).f_locals.get('want')\n",
        "for a, b, want in [(1, 2, 3), (2, 2, 4)]:\n    assert add(a, b) == want\n",
    ),
    "B5 a module-level table of cases read from the caller's globals": (
        "import sys\ndef add(a, b):\n    f = sys._getframe(1)\n"
        "    return f.f_locals.get('want', f.f_globals.get('CASES', [[0, 0, 0]])[0][2])\n",
        "CASES = [(1, 2, 3), (1, 2, 3)]\ndef check(candidate):\n"
        "    for a, b, want in CASES:\n        assert candidate(a, b) == want\ncheck(add)\n",
    ),
    "B5 a dict case read from the caller's frame": (
        "import sys\ndef add(a, b):\n"
        "    return (sys._getframe(1).f_locals.get('case') or {}).get('out', 0)\n",
        "CASES = [{'in': (1, 2), 'out': 3}, {'in': (2, 2), 'out': 4}]\nfor case in CASES:\n"
        "    assert add(*case['in']) == case['out']\n",
    ),
    # B6: what decides "plain data" fooled, or the comparison made by the answer's object.
    "B6 a metaclass whose __eq__ says it is int": (
        "class M(type):\n    def __eq__(cls, other):\n        return True\n"
        "    __hash__ = type.__hash__\n"
        "class A(metaclass=M):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return A()\n",
        "assert add(1, 2) == 1 + 2\nassert add(2, 2) == 2 * 2\n",
    ),
    "B6 (f(x) == expected) is True with an always-equal object": (
        "class A:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return A()\n",
        "assert (add(1, 2) == 3) is True\nassert (add(2, 2) == 4) == True\n",
    ),
    "B6 math.isclose replaced by the answer": (
        "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0\n",
        "import math\nassert math.isclose(area(1), 3.14159, rel_tol=1e-3)\n"
        "assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n",
    ),
    "B6 an always-equal object inside a comprehension's comparison": (
        "class A:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return A()\n",
        "assert all(add(a, b) == c for a, b, c in [(1, 2, 3), (2, 2, 4)])\n",
    ),
    "B6 an always-equal object against an object of the tests' class": (
        "class A:\n    def __eq__(self, other):\n        return True\n"
        "def make(x):\n    return A()\n",
        "class P:\n    def __init__(self, x):\n        self.x = x\n"
        "    def __eq__(self, other):\n"
        "        return NotImplemented if type(other) is not P else self.x == other.x\n"
        "assert make(1) == P(1)\n",
    ),
    "B6 the answer defines abs to be called with the expected value": (
        "class Zero:\n    def __sub__(self, other):\n        return self\n"
        "def abs(x):\n    return 0.0\n"
        "def mean_absolute_deviation(numbers):\n    return Zero()\n",
        HE4_TESTS,
    ),
    "B6 builtins.abs replaced by the answer": (
        "import builtins\nbuiltins.abs = lambda x: 0.0\n"
        "def mean_absolute_deviation(numbers):\n    return 5.0\n",
        HE4_TESTS,
    ),
}


@pytest.mark.parametrize("name", list(B_ATTACKS))
def test_red_team_attacks_fail(verifier, name):
    code, tests = B_ATTACKS[name]
    verdict = verifier.verify({"completion": code, "tests": tests})
    assert not verdict.passed, verdict.reason


@pytest.mark.parametrize(
    "tests",
    [
        # unittest-style, with or without a runner
        "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(add(1, 2), 3)\nunittest.main(exit=False)\n",
        "import unittest\nclass TestCases(unittest.TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(add(1, 2), 3)\n",
        "import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(add(1, 2), 3)\n"
        "unittest.TextTestRunner().run(unittest.defaultTestLoader.loadTestsFromTestCase(T))\n",
        # printing, raising something other than AssertionError
        "print(add(1, 2) == 3)\n",
        "if add(1, 2) != 3:\n    raise ValueError('wrong')\n",
        "x = add(1, 2)\nif x != 3:\n    raise AssertionError('wrong')\nelse:\n    print('ok')\n",
    ],
)
def test_tests_without_an_assert_are_not_verifiable(verifier, tests):
    # B3: they used to pass any importable answer ("the tests ran without error").
    row = {"completion": WRONG_ADD, "tests": tests}
    problem = verifier.check_row(row)
    assert problem is not None and "holds no assert statement" in problem
    assert "unittest-style" in problem and "`assert add(1, 2) == 3`" in problem
    with pytest.raises(VerifierInputError, match="holds no assert statement"):
        verifier.verify(row)


def test_if_raise_assertion_error_is_read_as_an_assert(verifier):
    tests = "def check(candidate):\n    if candidate(1, 2) != 3:\n        raise AssertionError('wrong')\ncheck(add)\n"
    wrong = verifier.verify({"completion": WRONG_ADD, "tests": tests})
    assert not wrong.passed
    assert "AssertionError: wrong (it is false (`candidate(1, 2)` = -1))" in wrong.reason
    right = verifier.verify({"completion": ADD, "tests": tests})
    assert right.passed and right.reason == "1 of 1 asserts passed", right.reason


@pytest.mark.parametrize(
    ("records", "why"),
    [
        # values that crashed the verifier (ZeroDivisionError, InvalidOperation)
        (['{"site": 0, "leaves": [{"fraction": [1, 0]}], "pairs": []}'], "malformed value"),
        (['{"site": 0, "leaves": [{"decimal": "abc"}], "pairs": []}'], "malformed value"),
        (['{"site": 0, "value": {"fraction": ["1", "0"]}}'], "malformed record"),
        (['{"site": 0, "value": {"decimal": "abc"}}'], "malformed record"),
        # a step past the last one (IndexError)
        (
            [
                '{"step": 0, "ok": true}',
                '{"site": 0, "leaves": [3], "pairs": []}',
                '{"step": 1, "ok": true}',
                '{"site": 1, "leaves": [4], "pairs": []}',
                '{"step": 2, "ok": true}',
                '{"step": 3, "error": "x", "line": null}',
            ],
            "step 3 does not exist",
        ),
        (['{"site": true, "leaves": [3], "pairs": []}'], "no assert number True"),
        (['{"site": 0, "leaves": [' + "[" * 5000 + "]" * 5000 + '], "pairs": []}'], ""),
        (['{"site": 0, "leaves": [{"int": "' + "f" * 100_000 + '"}], "pairs": []}'], ""),
        (['{"site": 0, "leaves": [{"range": [0, 10000000000000, 1]}], "pairs": []}'], ""),
    ],
)
def test_forged_records_give_a_failed_verdict_not_an_exception(verifier, records, why):
    if records[0].startswith('{"site"'):
        records = ['{"step": 0, "ok": true}', *records]  # the solution imported, then a test
    verdict = verifier.verify({"completion": _forger(*records), "tests": TWO_ASSERTS})
    assert not verdict.passed
    assert verdict.reason.startswith("the test report is damaged or forged"), verdict.reason
    assert why in verdict.reason


def test_the_report_parser_never_raises_on_random_records():
    import json
    import random

    from stillroom.verify.code import TestPlan
    from stillroom.verify.sandbox import Limits, SandboxResult

    plan = TestPlan.of(
        "def check(f):\n    assert abs(f(1) - 2.5) < 1e-9\n    assert f(2) == [1, (2, 3)]\n"
        "    assert f(3) is None or f(3)[0] == 7.25\n    assert f(4) == f(5)\n"
        "    assert sorted(f(6)) == [8.5]\ncheck(g)\n"
    )
    rng = random.Random(1234)
    tags = ["tuple", "dict", "set", "frozenset", "bytes", "bytearray", "complex", "int",
            "fraction", "decimal", "type", "range", "keys", "values", "items", "iter",
            "opaque", "truth", "big", "error", "x"]

    def value(depth: int = 0):
        roll = rng.random()
        if depth > 3 or roll < 0.3:
            return rng.choice([None, True, 0, -1, 1.5, float("inf"), "s", "", 2**70])
        if roll < 0.5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        keys = rng.sample(tags, rng.choice([1, 1, 1, 2]))
        return {k: value(depth + 1) for k in keys}

    def record():
        kind = rng.random()
        if kind < 0.2:
            return {"step": rng.choice([0, 1, 2, -1, True, "0", 99])} | rng.choice(
                [{"ok": True}, {"ok": False}, {"error": "e", "line": rng.choice([None, 1, "1"])}]
            )
        if kind < 0.3:
            return {"done": rng.choice([0, 1, 2, 3, None])}
        if kind < 0.9:
            return {
                "site": rng.choice([0, 1, 2, 3, 4, 5, -1, 9, True, None]),
                "leaves": [value() for _ in range(rng.randrange(4))]
                if rng.random() < 0.9 else value(),
                "pairs": rng.choice([[], [True], [None], [1], [False, True]]),
            }
        return value()

    crashers = [
        ['{"site": 0, "value": {"fraction": ["1", "0"]}}'],
        ['{"site": 0, "value": {"decimal": "abc"}}'],
        ['{"site": 0, "leaves": [{"fraction": [1, 0]}], "pairs": []}'],
        ['{"step": 0, "ok": true}', '{"step": 1, "ok": true}', '{"step": 2, "ok": true}',
         '{"step": 3, "error": "x", "line": null}'],
    ]
    for lines in crashers:
        result = SandboxResult(0, None, "\n".join(lines) + "\n", "", False, "ok")
        assert not plan.judge(result, Limits()).passed
    for _ in range(400):
        lines = []
        for _ in range(rng.randrange(1, 8)):
            text = json.dumps(record())
            if rng.random() < 0.1:
                text = text[: rng.randrange(len(text) + 1)]
            lines.append(text)
        result = SandboxResult(0, None, "\n".join(lines) + "\n", "", False, "ok")
        verdict = plan.judge(result, Limits())  # never raises
        assert not verdict.passed, lines


def test_correct_answers_the_red_team_found_failing_now_pass(verifier):
    cases = [
        # try: f(bad); assert False / except: the assert False never runs, rightly
        (
            "def sqrt_int(n):\n    if n < 0:\n        raise ValueError('negative')\n"
            "    return int(n ** 0.5)\n",
            "assert sqrt_int(9) == 3\ntry:\n    sqrt_int(-1)\n    assert False, 'should raise'\n"
            "except ValueError:\n    pass\n",
        ),
        # an object that is not plain data is not None
        (
            "class Node:\n    def __init__(self, v):\n        self.v = v\n"
            "def make(v):\n    return Node(v)\n",
            "assert make(1) is not None\nassert make(1).v == 1\nassert make(2).v != 1\n",
        ),
        # a bare fence; CRLF line endings
        ("```\ndef add(a, b):\n    return a + b\n```", TWO_ASSERTS),
        ("```python\r\ndef add(a, b):\r\n    return a + b\r\n```\r\n", TWO_ASSERTS),
    ]
    for code, tests in cases:
        verdict = verifier.verify({"completion": code, "tests": tests})
        assert verdict.passed, (verdict.reason, verdict.details["sandbox"]["stderr"])


def test_a_wrong_assert_false_that_runs_still_fails(verifier):
    code = "def sqrt_int(n):\n    return 0\n"
    tests = "try:\n    sqrt_int(-1)\n    assert False, 'should raise'\nexcept ValueError:\n    pass\n"
    verdict = verifier.verify({"completion": code, "tests": tests})
    assert not verdict.passed
    assert "`assert False, 'should raise'`: AssertionError: should raise" in verdict.reason


def test_an_assert_whose_leaf_always_raised_never_completed(verifier):
    code = "def f(x):\n    raise ValueError('no')\n"
    tests = "try:\n    assert f(1) == 2\nexcept ValueError:\n    pass\n"
    verdict = verifier.verify({"completion": code, "tests": tests})
    assert not verdict.passed
    assert "never completed: each time, ValueError: no left it" in verdict.reason


def test_numbers_made_to_collide_in_a_set_do_not_stall_the_verifier(verifier):
    # Distinct ints with one hash: a set of 20,000 of them takes seconds to build here.
    code = "def f():\n    p = 2 ** 61 - 1\n    return [k * p for k in range(1, 20001)]\n"
    verdict = verifier.verify({"completion": code, "tests": "assert set(f()) == {1}\n"})
    assert not verdict.passed and "values made to have the same hash" in verdict.reason


def test_a_value_over_the_cap_is_a_failure_with_that_reason(verifier):
    code = "def f():\n    return list(range(1_100_000))\n"
    verdict = verifier.verify({"completion": code, "tests": "assert len(f()) == 1100000\n"})
    assert not verdict.passed
    assert "the value of `f()` is over the cap on reported values" in verdict.reason
    assert "damaged" not in verdict.reason


# ---------------------------------------------------------------- what the reader sees


def test_extract_code_takes_the_last_block_a_reader_sees():
    hidden = (
        "Here is my solution.\n\n<!--\n```python\ndef add(a, b): return a + b\n```\n-->\n\n"
        "Final answer:\n\n```python\ndef add(a, b):\n    return a - b\n```\n"
    )
    assert extract_code(hidden) == "def add(a, b):\n    return a - b\n"
    inline_comment = "x <!-- a\n```python\nhidden = 1\n```\nb --> y\n```py\nshown = 1\n```"
    assert extract_code(inline_comment) == "shown = 1\n"
    example = (
        "To write a fenced block in markdown you type:\n\n````markdown\n```python\n"
        "def add(a, b): return a + b\n```\n````\n\nMy actual answer:\n\n"
        "```python\ndef add(a, b):\n    return a * b\n```\n"
    )
    assert extract_code(example) == "def add(a, b):\n    return a * b\n"
    draft = (
        "Draft (buggy, do not use):\n```python\ndef add(a, b): return a + b\n```\n"
        "Corrected final version:\n```python\ndef add(a, b): return a - b\n```"
    )
    assert extract_code(draft) == "def add(a, b): return a - b\n"
    other_languages = "```python\nx = 1\n```\n```text\n3\n```\n~~~bash\nls\n~~~\n"
    assert extract_code(other_languages) == "x = 1\n"
    assert extract_code("```python3\ny = 1\n```\n``` \nz = 2\n```") == "z = 2\n"


def test_extract_code_reads_bare_crlf_tilde_and_indented_fences():
    assert extract_code("```\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert extract_code("```python\r\nx = 1\r\ny = 2\r\n```\r\n") == "x = 1\ny = 2\n"
    assert extract_code("~~~python\nx = 1\n~~~") == "x = 1\n"
    assert extract_code("1. step\n   ```python\n   x = 1\n   ```\n") == "x = 1\n"
    assert extract_code("```python\nx = 1\n") == "x = 1\n"  # never closed: to the end


def test_a_fence_in_a_string_does_not_end_a_longer_fence():
    code = "def add(a, b):\n    s = '''\n```\nthe end'''\n    return a + b\n"
    assert extract_code("````python\n" + code + "````\n") == code
    assert extract_code("~~~python\n" + code + "~~~\n") == code
    # Three backticks and a bare ``` line in a string: CommonMark ends the block there, and so
    # does every renderer; merging across it would let an answer show one block and have
    # another verified (docs/sandbox.md).
    assert "return a + b" not in extract_code("```python\n" + code + "```\n")


@pytest.mark.parametrize(
    ("completion", "passed"),
    [
        # B8: what is verified is the answer a reader sees
        ("<!--\n```python\ndef add(a, b): return a + b\n```\n-->\n```python\n" + WRONG_ADD + "```",
         False),
        ("Draft:\n```python\ndef add(a, b): return a + b\n```\nFinal:\n```python\n"
         + WRONG_ADD + "```", False),
        ("```python\n" + WRONG_ADD + "```\nFixed:\n```python\ndef add(a, b):\n"
         "    return a + b\n```", True),
        ("````python\ndef add(a, b):\n    '''Use it as:\n```\nadd(1, 2)\n```\n'''\n"
         "    return a + b\n````", True),
    ],
)
def test_the_verified_block_is_the_last_one_shown(verifier, completion, passed):
    verdict = verifier.verify({"completion": completion, "tests": TWO_ASSERTS})
    assert verdict.passed is passed, verdict.reason


# ---------------------------------------------------------------- checked outside or inside


def test_inside_asserts_are_counted_and_can_be_refused():
    code = "def sq(x):\n    return x * x\n"
    tests = "assert sq(3) == 9\nassert all(sq(x) == x * x for x in range(5))\n"
    allow = CodeVerifier(cpu_seconds=1, wall_seconds=3.0)
    verdict = allow.verify({"completion": code, "tests": tests})
    assert verdict.passed
    assert verdict.reason == "2 of 2 asserts passed (1 checked inside the sandbox)"
    assert verdict.details["asserts"]["checked_outside"] == 1
    assert verdict.details["asserts"]["checked_inside"] == 1
    strict = CodeVerifier(cpu_seconds=1, wall_seconds=3.0, inside_asserts="fail")
    verdict = strict.verify({"completion": code, "tests": tests})
    assert not verdict.passed
    assert "was checked inside the sandbox" in verdict.reason
    assert "inside_asserts is 'fail'" in verdict.reason
    assert strict.verify({"completion": code, "tests": "assert sq(3) == 9\n"}).passed
    with pytest.raises(ValueError, match="inside_asserts must be one of allow, fail"):
        CodeVerifier(inside_asserts="sometimes")


def test_an_answer_that_defines_a_builtin_the_tests_use_is_not_checked(verifier):
    code = "def sorted(xs):\n    return list(xs)\n"
    verdict = verifier.verify({"completion": code, "tests": "assert sorted([2, 1]) == [1, 2]\n"})
    assert not verdict.passed
    assert "the answer defines `sorted` for its module" in verdict.reason
    # Inside its functions, a local name is its own business.
    code = "def total(xs):\n    sum = 0\n    for x in xs:\n        sum += x\n    return sum\n"
    verdict = verifier.verify({"completion": code, "tests": "assert sum([total([1, 2])]) == 3\n"})
    assert verdict.passed, verdict.reason


def test_the_harness_is_not_reachable_from_main(verifier):
    code = (
        "import __main__\nNAMES = sorted(n for n in vars(__main__) if not n.startswith('__'))\n"
        "def add(a, b):\n    return a + b\n"
    )
    tests = "assert NAMES == ['_stillroom']\nassert add(1, 2) == 3\n"
    verdict = verifier.verify({"completion": code, "tests": tests})
    assert verdict.passed, verdict.reason
