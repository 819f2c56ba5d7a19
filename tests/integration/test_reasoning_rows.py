"""Reasoning traces reach rows, through real runs against stillroom's echo server answering as a
vLLM server with a reasoning parser does (the trace in ``reasoning``/``reasoning_content`` beside
``content``; see stillroom.testing.echo_server) or inline in ``<think>`` tags: the ``reasoning``
column, a run killed and resumed, a rerun served from the request cache, a trace cut at
``max_tokens`` (failed, or flagged), and the math verifier grading the answer after an inline
trace."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from stillroom.data.output import OutputFolder
from stillroom.llm.reasoning import TRUNCATED_REASONING
from tests.servers import echo_command, free_port, running

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


@pytest.fixture
def thinking_echo(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """The echo server in a ``--reasoning`` mode; returns (its /v1 URL, its request log)."""
    with ExitStack() as stack:

        def start(mode: str, latency_ms: float = 0.0) -> tuple[str, Path]:
            port = free_port()
            log = tmp_path / f"echo-{port}.jsonl"
            command = [*echo_command(port, latency_ms, log), "--reasoning", mode]
            stack.enter_context(running(command, port, tmp_path / f"echo-{port}.log"))
            return f"http://127.0.0.1:{port}/v1", log

        yield start


def trace_of(prompt: str) -> str:
    """The echo server's trace for a user message (its documented form)."""
    return f"echo-trace: the user wrote {len(prompt.split())} words: {prompt}"


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stillroom(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def requests_sent(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [json.loads(line)["body"]["messages"][-1]["content"]
            for line in log.read_text().splitlines()]


def check_traces(out: Path, n: int) -> None:
    """Every row once, with its own answer and its own trace."""
    folder = OutputFolder(out)
    rows = folder.read_rows("data")
    assert sorted(row["id"] for row in rows) == list(range(n))
    for row in rows:
        assert row["completion"] == f"echo: {row['prompt']}"
        assert row["reasoning"] == trace_of(row["prompt"])
        assert row["metadata"]["complete"]["reasoning_tokens"] == len(trace_of(row["prompt"]).split())
    assert folder.count("failed") == 0 and folder.is_complete()


N_ROWS = 200


def test_traces_survive_a_kill_and_a_rerun_from_the_cache(
    thinking_echo: Callable[..., tuple[str, Path]], tmp_path: Path, isolated_cache: Path
) -> None:
    base_url, log = thinking_echo("field", latency_ms=60)
    source = write_jsonl(tmp_path / "prompts.jsonl",
                         [{"id": i, "prompt": f"prompt number {i}"} for i in range(N_ROWS)])

    def command(out: str) -> list[str]:
        return [STILLROOM, "complete", str(source), "-o", str(tmp_path / out), "--base-url",
                base_url, "--model", "r1", "--concurrency", "8", "--flush-rows", "10",
                "--no-progress"]

    process = subprocess.Popen(command("out"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    commits = tmp_path / "out" / ".stillroom" / "commits.jsonl"
    deadline = time.monotonic() + 60
    while not commits.exists() or commits.read_text().count("\n") < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = len(OutputFolder(tmp_path / "out").read_rows("data"))
    assert 0 < kept < N_ROWS

    sent_before = len(requests_sent(log))
    resumed = subprocess.run(command("out"), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_traces(tmp_path / "out", N_ROWS)
    # The resumed run asked only for what had not been answered: never more than the rest.
    assert len(requests_sent(log)) - sent_before <= N_ROWS - kept
    card = (tmp_path / "out" / "README.md").read_text()
    assert "of which reasoning" in card

    # A second folder from the same prompts: every answer and trace from the request cache.
    sent = len(requests_sent(log))
    again = subprocess.run(command("again"), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(requests_sent(log)) == sent
    check_traces(tmp_path / "again", N_ROWS)


PIPELINE = """\
input: prompts.jsonl
backends:
  thinker: {{kind: openai, model: r1, base_url: "{base_url}", max_retries: 0{extra}}}
stages:
  - type: complete
    backend: thinker
    max_tokens: 12
{options}"""

SHORT = "what is 3 + 4"  # a trace of 10 words: within max_tokens 12
LONG = " ".join(f"word{i}" for i in range(20))  # a trace of 25 words: cut at 12


# The trace in the server's reasoning fields, or inline and split by the backend (think_tags).
SERVERS = [("field", ""), ("inline", ", think_tags: true")]


@pytest.mark.parametrize(("mode", "extra"), SERVERS, ids=["field", "inline"])
def test_a_trace_cut_at_max_tokens_fails_or_is_flagged(
    thinking_echo: Callable[..., tuple[str, Path]], tmp_path: Path, mode: str, extra: str
) -> None:
    base_url, _ = thinking_echo(mode)
    write_jsonl(tmp_path / "prompts.jsonl",
                [{"id": "short", "prompt": SHORT}, {"id": "long", "prompt": LONG}])
    (tmp_path / "fail.yaml").write_text(PIPELINE.format(base_url=base_url, extra=extra, options=""))
    done = stillroom("run", "fail.yaml", "-o", "fail", "--no-progress",
                     "--max-failure-rate", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = OutputFolder(tmp_path / "fail")
    [row] = folder.read_rows("data")
    assert row["id"] == "short" and row["reasoning"] == trace_of(SHORT)
    [failed] = folder.read_rows("failed")
    assert failed["id"] == "long" and failed["error_type"] == TRUNCATED_REASONING
    assert "finish_reason length" in failed["error"]
    assert TRUNCATED_REASONING in (tmp_path / "fail" / "README.md").read_text()

    (tmp_path / "flag.yaml").write_text(
        PIPELINE.format(base_url=base_url, extra=extra, options="    truncated_reasoning: flag\n"))
    done = stillroom("run", "flag.yaml", "-o", "flag", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["id"]: row for row in OutputFolder(tmp_path / "flag").read_rows("data")}
    assert rows["short"]["reasoning_truncated"] is False
    assert rows["short"]["completion"] == f"echo: {SHORT}"
    cut = rows["long"]
    assert cut["reasoning_truncated"] is True and cut["completion"] == ""
    assert cut["reasoning"] == " ".join(trace_of(LONG).split()[:12])


def test_math_verify_grades_the_answer_after_an_inline_trace(
    thinking_echo: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # The model writes `<think>trace</think>answer` and the backend is not told to split it:
    # the completion holds both, and the verifier must read only the answer. The trace says
    # how many words the prompt has; the answer repeats the prompt.
    base_url, _ = thinking_echo("inline")
    write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "in-trace-only", "prompt": "x y z", "answer": "3"},  # 3 is only in the trace
        {"id": "in-answer", "prompt": "7", "answer": "7"},
        {"id": "cut", "prompt": LONG, "answer": "20"},  # the trace never ends: no answer
    ])
    verify = "  - type: verify\n    kind: math\n"
    (tmp_path / "p.yaml").write_text(PIPELINE.format(base_url=base_url, extra="", options=verify))
    done = stillroom("run", "p.yaml", "-o", "out", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["id"]: row for row in OutputFolder(tmp_path / "out").read_rows("data")}
    assert rows["in-trace-only"]["completion"].startswith("<think>echo-trace")
    assert rows["in-trace-only"]["passed"] is False
    assert rows["in-answer"]["passed"] is True
    assert rows["cut"]["passed"] is False and "never ended" in rows["cut"]["reason"]
