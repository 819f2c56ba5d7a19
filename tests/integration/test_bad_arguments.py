"""Every verb, fed bad arguments: exit 2, one short line, no traceback, no request sent.

A real echo server (``stillroom.testing.echo_server --log``) stands where a backend would be; the
request log must not grow during any case. The verbs run in this process through Typer's
``CliRunner`` (an exception that escaped a verb is caught there as ``result.exception``, where a
user would see a traceback), and a few also through the installed ``stillroom`` script, the way
a user runs them.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stillroom.cli.main import app
from tests.servers import echo_command, free_port, running

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
SECRET = "sekrit-pass-0123456789"


class Env:
    """The files of the cases (absolute paths) and the echo server's URL and request log."""

    def __init__(self, root: Path, url: str, log: Path):
        self.root, self.url, self.log = root, url, log
        self.port = url.split(":")[2].split("/")[0]

    def requests(self) -> int:
        return self.log.read_text().count("\n") if self.log.exists() else 0

    def fill(self, text: str, case: str) -> str:
        return text.format(d=self.root, url=self.url, port=self.port, out=self.root / f"out-{case}")


def _write_files(root: Path, url: str) -> None:
    row = {"id": "1", "prompt": "What is 2+2?", "completion": "4", "answer": "4"}
    (root / "good.jsonl").write_text(json.dumps(row) + "\n")
    (root / "code.jsonl").write_text(json.dumps(
        {"id": "1", "completion": "def f():\n    return 1\n", "tests": "assert f() == 1"}) + "\n")
    (root / "empty.jsonl").write_text("")
    (root / "header-only.csv").write_text("prompt\n")
    (root / "latin1.csv").write_bytes(b"prompt\nhello\ncaf\xe9\n")
    lines = b"".join(json.dumps({"id": str(i), "prompt": f"prompt {i} " * 8}).encode() + b"\n"
                     for i in range(300))
    packed = gzip.compress(lines)
    (root / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (root / "folder").mkdir()
    (root / "a-file").write_text("not a folder\n")
    backend = f"backends:\n  default: {{kind: openai, model: m, base_url: '{url}'}}\n"
    pipelines = {
        "unknown-stage.yaml": f"input: good.jsonl\n{backend}stages:\n  - type: compleet\n",
        "no-input.yaml": f"{backend}stages:\n  - type: complete\n",
        "bad-key.yaml": f"input: good.jsonl\n{backend}stages:\n  - type: complete\n    temprature: 1\n",
        "bad-value.yaml": f"input: good.jsonl\n{backend}stages:\n  - type: complete\n    n: -1\n",
        "empty-input.yaml": f"input: empty.jsonl\n{backend}stages:\n  - type: complete\n",
        "gz-input.yaml": f"input: truncated.jsonl.gz\n{backend}stages:\n  - type: complete\n",
        "no-scheme.yaml": "input: good.jsonl\nbackends:\n  default: {kind: openai, model: m, "
                          f"base_url: '{url.removeprefix('http://')}'}}\nstages:\n  - type: complete\n",
        "bad-verifier.yaml": "input: code.jsonl\nstages:\n  - type: verify\n    kind: code\n"
                             "    options: {wall_seconds: -1}\n",
        "workflow-no-input.yaml": "steps:\n  - name: gen\n    pipeline:\n      backends:\n"
                                  f"        default: {{kind: openai, model: m, base_url: '{url}'}}\n"
                                  "      stages: [{type: complete}]\n",
        "eval-bad-key.yaml": "data: good.jsonl\nmodels: {teacher: {column: completion}}\nverifer: exact\n",
        "sft-bad-key.yaml": "data: good.jsonl\nlearning_rat: 0.1\n",
        "kd-bad-value.yaml": "data: good.jsonl\nmode: sideways\n",
        "dpo-bad-key.yaml": "data: good.jsonl\nbetta: 0.1\n",
    }
    for name, text in pipelines.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes(b"# caf\xe9\ninput: good.jsonl\nstages:\n  - type: complete\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("bad-arguments")
    port = free_port()
    log = root / "requests.jsonl"
    url = f"http://127.0.0.1:{port}/v1"
    _write_files(root, url)
    with running(echo_command(port, 0.0, log), port, root / "echo.log"):
        yield Env(root, url, log)


# The model options of `complete` pointed at the echo server.
ECHO = "--base-url {url} --model m --no-progress --no-embeddings"

# (case, arguments; "usage": Typer's own usage error (a short box) rather than our one line)
CASES: list[tuple[str, str, bool]] = [
    # complete: the input
    ("complete-missing-file", "complete {d}/missing.jsonl -o {out} " + ECHO, False),
    ("complete-empty-file", "complete {d}/empty.jsonl -o {out} " + ECHO, False),
    ("complete-header-only-csv", "complete {d}/header-only.csv -o {out} " + ECHO, False),
    ("complete-non-utf8-csv", "complete {d}/latin1.csv -o {out} " + ECHO, False),
    ("complete-truncated-gz", "complete {d}/truncated.jsonl.gz -o {out} " + ECHO, False),
    ("complete-folder", "complete {d}/folder -o {out} " + ECHO, False),
    # complete: options
    ("complete-temperature-50", "complete {d}/good.jsonl -o {out} -t 50 " + ECHO, False),
    ("complete-n-0", "complete {d}/good.jsonl -o {out} --n 0 " + ECHO, True),
    ("complete-unknown-backend", "complete {d}/good.jsonl -o {out} --backend nope " + ECHO, False),
    ("complete-prompt-template", "complete {d}/good.jsonl -o {out} --prompt-template {{prompt "
     + ECHO, False),
    ("complete-cache-dir-is-a-file", "complete {d}/good.jsonl -o {out} --cache-dir {d}/a-file "
     + ECHO, False),
    ("complete-out-unwritable", "complete {d}/good.jsonl -o {d}/a-file/out " + ECHO, False),
    ("complete-base-url-no-scheme", "complete {d}/good.jsonl -o {out} --base-url 127.0.0.1:{port}/v1"
     " --model m --no-progress", False),
    ("complete-base-url-credentials", "complete {d}/good.jsonl -o {out} --base-url "
     "http://user:" + SECRET + "@127.0.0.1:{port}/v1 --model m --no-progress", False),
    ("complete-base-url-no-model", "complete {d}/good.jsonl -o {out} --base-url {url} --no-progress",
     False),
    # run: pipeline and workflow files
    ("run-missing-file", "run {d}/missing.yaml -o {out}", False),
    ("run-folder", "run {d}/folder -o {out}", False),
    ("run-non-utf8-yaml", "run {d}/latin1.yaml -o {out}", False),
    ("run-unknown-stage", "run {d}/unknown-stage.yaml -o {out}", False),
    ("run-no-input", "run {d}/no-input.yaml -o {out}", False),
    ("run-bad-key", "run {d}/bad-key.yaml -o {out}", False),
    ("run-bad-value", "run {d}/bad-value.yaml -o {out}", False),
    ("run-empty-input", "run {d}/empty-input.yaml -o {out} --no-progress --no-embeddings", False),
    ("run-truncated-gz-input", "run {d}/gz-input.yaml -o {out} --no-progress --no-embeddings",
     False),
    ("run-base-url-no-scheme", "run {d}/no-scheme.yaml -o {out} --no-progress", False),
    ("run-verifier-wall-seconds", "run {d}/bad-verifier.yaml -o {out} --no-progress", False),
    ("run-workflow-no-input", "run {d}/workflow-no-input.yaml -o {out}", False),
    ("run-flush-rows-0", "run {d}/bad-key.yaml -o {out} --flush-rows 0", True),
    # verify
    ("verify-missing-file", "verify {d}/missing.jsonl -o {out} --kind math", False),
    ("verify-empty-file", "verify {d}/empty.jsonl -o {out} --kind math --no-progress", False),
    ("verify-unknown-kind", "verify {d}/good.jsonl -o {out} --kind nope", False),
    ("verify-options-not-json", "verify {d}/good.jsonl -o {out} --kind regex --options {{x", False),
    ("verify-wall-seconds", "verify {d}/code.jsonl -o {out} --kind code --no-progress "
     "--options {{\"wall_seconds\":-1}}", False),
    # filter
    ("filter-empty-file", "filter {d}/empty.jsonl -o {out} --heuristics --no-progress", False),
    ("filter-non-utf8-csv", "filter {d}/latin1.csv -o {out} --heuristics --no-progress", False),
    ("filter-no-filter", "filter {d}/good.jsonl -o {out}", False),
    # dedup
    ("dedup-truncated-gz", "dedup {d}/truncated.jsonl.gz -o {out} --no-progress", False),
    ("dedup-empty-file", "dedup {d}/empty.jsonl -o {out} --no-progress", False),
    ("dedup-bad-method", "dedup {d}/good.jsonl -o {out} --method fuzzy", True),
    # decontaminate
    ("decontaminate-folder", "decontaminate {d}/folder -o {out} --against {d}/good.jsonl", False),
    ("decontaminate-missing-benchmark", "decontaminate {d}/good.jsonl -o {out} --against "
     "{d}/missing.jsonl", False),
    ("decontaminate-empty-benchmark", "decontaminate {d}/good.jsonl -o {out} --against "
     "{d}/empty.jsonl --no-progress", False),
    # select
    ("select-non-utf8-csv", "select {d}/latin1.csv -o {out} --size 1 --no-progress", False),
    ("select-empty-file", "select {d}/empty.jsonl -o {out} --size 1 --no-progress", False),
    ("select-flag-without-step", "select {d}/good.jsonl -o {out} --size 1 --min-quality 3", False),
    # mix
    ("mix-bad-source", "mix -o {out} --source bogus", False),
    ("mix-empty-source", "mix -o {out} --source real:{d}/empty.jsonl --no-progress", False),
    ("mix-truncated-gz-source", "mix -o {out} --source real:{d}/truncated.jsonl.gz --no-progress",
     False),
    # inspect
    ("inspect-missing-folder", "inspect {d}/missing", False),
    ("inspect-a-file", "inspect {d}/good.jsonl", False),
    # eval
    ("eval-missing-file", "eval {d}/missing.yaml", False),
    ("eval-folder", "eval {d}/folder", False),
    ("eval-bad-key", "eval {d}/eval-bad-key.yaml -o {out}.json", False),
    # train
    ("train-sft-folder", "train sft {d}/folder", False),
    ("train-sft-bad-key", "train sft {d}/sft-bad-key.yaml", False),
    ("train-kd-missing-file", "train kd {d}/missing.yaml", False),
    ("train-kd-bad-value", "train kd {d}/kd-bad-value.yaml", False),
    ("train-dpo-non-utf8", "train dpo {d}/latin1.yaml", False),
    ("train-dpo-bad-key", "train dpo {d}/dpo-bad-key.yaml", False),
    # quickstart
    ("quickstart-bad-epochs", "quickstart -o {out} --epochs 0", True),
    ("quickstart-out-unwritable", "quickstart -o {d}/a-file/q --no-progress --train-prompts 2 "
     "--heldout 1", False),
]


def _split(text: str) -> list[str]:
    """Split on spaces; a JSON argument holds none."""
    return text.split()


def _check(case: str, code: int, stdout: str, stderr: str, usage: bool) -> None:
    shown = f"{case}: exit {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    assert "Traceback" not in stdout + stderr, shown
    assert code == 2, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    if usage:  # Typer's usage error: a short box naming the option
        assert 0 < len(lines) <= 8 and ("Invalid value" in stderr or "Usage" in stderr), shown
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
        assert "internal error" not in stderr, shown
    assert SECRET not in stdout + stderr, shown


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key is set, as for a remote server: a base URL without http:// must be refused for what
    # it is, not for a missing key.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "k" * 24)


@pytest.mark.parametrize(("case", "args", "usage"), CASES, ids=[case for case, _, _ in CASES])
def test_bad_arguments_exit_2_with_one_line_and_no_request(
    env: Env, case: str, args: str, usage: bool
) -> None:
    before = env.requests()
    result = CliRunner().invoke(app, _split(env.fill(args, case)), catch_exceptions=True)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{case}: {type(escaped).__name__} reached the user: {escaped}"
    _check(case, result.exit_code, result.stdout, result.stderr, usage)
    assert env.requests() == before, f"{case}: the server received a request"


@pytest.mark.parametrize(
    "case",
    ["complete-truncated-gz", "complete-temperature-50", "run-no-input", "train-sft-folder"],
)
def test_the_installed_script_too(env: Env, case: str) -> None:
    """The console script as a user runs it: no rich or Python traceback from Typer either."""
    args = next(args for name, args, _ in CASES if name == case)
    before = env.requests()
    result = subprocess.run([STILLROOM, *_split(env.fill(args, case))], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    _check(case, result.returncode, result.stdout, result.stderr, False)
    assert env.requests() == before


def test_an_unexpected_exception_is_one_line_and_a_redacted_traceback_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import stillroom.api

    key = "sk-live-" + "x" * 30

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"boom\nwith Authorization: Bearer {key}")

    monkeypatch.setattr(stillroom.api, "run_stage", broken)
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    result = CliRunner().invoke(app, ["complete", str(tmp_path / "p.jsonl"), "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: internal error (RuntimeError): boom with Authorization")
    assert key not in result.stderr
    trace = Path(lines[0].rsplit("traceback in ", 1)[1].rstrip(")"))
    text = trace.read_text()
    trace.unlink()
    assert "Traceback" in text and "RuntimeError" in text and "broken" in text
    assert key not in text


def test_a_stillroom_error_message_is_redacted(tmp_path: Path) -> None:
    # A file name holding a key-shaped text is printed with the key masked.
    name = "sk-" + "a" * 30 + ".jsonl"
    result = CliRunner().invoke(app, ["complete", str(tmp_path / name), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    assert "a" * 30 not in result.stderr
