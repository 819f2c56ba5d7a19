"""`stillroom train kd` with `mode: on_policy`: a tiny student with the SmolLM2 tokenizer samples,
the embedded SmolLM2 scores its tokens (llama.cpp in process, and a served teacher behind a
proxy that fails requests: llama-cpp-python's server), with resume from a checkpoint and two teachers routed by a column."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import StillroomError
from tests.servers import free_port, running
from tests.tiny_models import save_tiny_student

pytestmark = pytest.mark.integration

ROWS = [
    {"id": f"r{i}", "prompt": f"What is {a} + {b}?", "domain": "local" if i % 2 else "served",
     "teacher_messages": [
         {"role": "user", "content": "What is 12 + 30?"},
         {"role": "assistant", "content": "12 + 30 = 42"},
         {"role": "user", "content": f"What is {a} + {b}?"}]}
    for i, (a, b) in enumerate([(11, 22), (35, 41), (50, 17), (23, 68)])
]


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    return save_tiny_student(tmp_path_factory.mktemp("on-policy") / "student", tokenizer)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_config(folder: Path, student: Path, body: str) -> Path:
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    config = folder / "on_policy.yaml"
    config.write_text(
        f"mode: on_policy\nstudent: {student}\ndata: rows.jsonl\noutput_dir: out\n"
        "max_new_tokens: 6\nbatch_size: 2\nsave_steps: 1\ntorch_threads: 1\n"
        "learning_rate: 1.0e-3\n" + body)
    return config


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train(config: Path) -> dict[str, Any]:
    from stillroom.train.kd import load_kd_config, train_kd

    final = train_kd(load_kd_config(config))
    return json.loads((final / "stillroom_train.json").read_text())


@pytest.mark.timeout(600)
def test_embedded_teacher_context_distillation_and_resume(tmp_path: Path, student: Path) -> None:
    config = write_config(tmp_path, student, "max_steps: 2\nteacher_prompt_column: teacher_messages\n"
                          "teacher: {kind: llamacpp, n_threads: 1}\ntop_logprobs: 3\n")
    record = train(config)
    assert record["mode"] == "on_policy" and record["steps"] == 2
    assert len(record["kd_losses"]) == 2
    assert all(value == value and abs(value) < 1e6 for _, value in record["losses"])
    scores = lines(tmp_path / "out" / "teacher_scores.jsonl")
    assert [line["step"] for line in scores] == [1, 1, 2, 2]
    assert all(line["tokens"] == line["sampled_tokens"] > 0 for line in scores)
    assert record["teachers"]["teacher"]["samples"] == 4
    assert record["scored_tokens"] == record["sampled_tokens"] == sum(s["tokens"] for s in scores)
    assert record["teacher_wait_share"] is not None

    # Resume: two more steps from checkpoint-2; lines of step 3 written by a crashed run before
    # are dropped, and the line its kill tore, none lost or duplicated.
    stale = {**scores[0], "step": 3}
    with (tmp_path / "out" / "teacher_scores.jsonl").open("a") as handle:
        handle.write(json.dumps(stale) + "\n" + json.dumps(stale)[:20])
    text = config.read_text().replace("max_steps: 2", "max_steps: 4")
    config.write_text(text)
    resumed = train(config)
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == 4
    again = lines(tmp_path / "out" / "teacher_scores.jsonl")
    assert again[:4] == scores
    assert [line["step"] for line in again] == [1, 1, 2, 2, 3, 3, 4, 4]
    keys = [(line["step"], line["row"]) for line in again]
    assert len(set(keys)) == len(keys)
    assert resumed["teachers"]["teacher"]["samples"] == 8
    # The resumed steps read the rows the schedule gives micro-batches 2 and 3 (none repeated).
    from stillroom.train.on_policy_trainer import schedule

    assert [line["row"] for line in again] == schedule(len(ROWS), 4, 2, 0)
    assert [line["micro_batch"] for line in again] == [0, 0, 1, 1, 2, 2, 3, 3]


# -- a served teacher: llama-cpp-python's server with the embedded GGUF (score_api: text_echo:
# it takes text prompts only), behind the fault proxy; and the project's echo server, whose
# made-up token names the tokenizer probe must refuse.


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.servers import echo_command

    folder = tmp_path_factory.mktemp("echo")
    port = free_port()
    with running(echo_command(port), port, folder / "echo.out"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from stillroom.llm.llamacpp import embedded_model_path

    folder = tmp_path_factory.mktemp("llama-server")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"]
    with running(command, port, folder / "server.log", timeout=120):
        yield f"http://127.0.0.1:{port}"


def proxy(folder: Path, upstream: str, *flags: str) -> Any:
    port = free_port()
    command = [sys.executable, "-m", "stillroom.testing.fault_proxy", "--upstream", upstream,
               "--port", str(port), "--log", str(folder / f"proxy-{port}.jsonl"), *flags]
    return port, running(command, port, folder / f"proxy-{port}.out")


def served(port: int, score_api: str = "text_echo") -> str:
    return (f"{{kind: openai, model: smollm2, base_url: 'http://127.0.0.1:{port}/v1', "
            f"score_api: {score_api}, max_retries: 2, retry_base_delay: 0.0, "
            "retry_max_delay: 0.0}")


@pytest.mark.timeout(300)
def test_the_probe_refuses_a_server_whose_tokens_differ(tmp_path: Path, student: Path,
                                                        echo: str) -> None:
    from stillroom.errors import ConfigError

    port = int(echo.rsplit(":", 1)[1])
    config = write_config(tmp_path, student, f"max_steps: 1\nteacher: {served(port, 'echo')}\n")
    with pytest.raises(ConfigError) as caught:
        train(config)
    # The echo server names every token "<id>": the probe's first compared token differs.
    assert caught.value.key == "teacher"
    # The probe's answer part is compared: its first token, "On", is the first to differ.
    assert ("tokenizer probe: token 33 (id 3280) is '<3280>' for the teacher but 'On' for the "
            "student: the tokenizers differ") in str(caught.value)
    assert not (tmp_path / "out" / "checkpoint-1").exists()


@pytest.mark.timeout(300)
def test_a_served_teacher_behind_faults_is_retried_and_never_missing(
        tmp_path: Path, student: Path, llama_server: str) -> None:
    port, proxied = proxy(tmp_path, llama_server, "--fail-every", "3", "--status", "503")
    config = write_config(tmp_path, student, f"max_steps: 3\nteacher: {served(port)}\n"
                          "teacher_prompt_column: teacher_messages\ntop_logprobs: 3\n")
    with proxied:
        record = train(config)
    assert record["steps"] == 3
    scores = lines(tmp_path / "out" / "teacher_scores.jsonl")
    failures = lines(tmp_path / "out" / "teacher_failures.jsonl")
    # Every sample is scored or recorded as failed, once. The random tiny student writes token
    # sequences the server's tokenizer would split otherwise (a text-only server cannot score
    # those: refused, not retried, recorded); no 503 is left among the failures (retried).
    assert sorted((line["step"], line["row"]) for line in scores + failures) == \
        sorted((step, row) for step in (1, 2, 3) for row in
               {line["row"] for line in scores + failures if line["step"] == step})
    assert len(scores) + len(failures) == 6 and scores
    assert all(line["tokens"] == line["sampled_tokens"] > 0 for line in scores)
    assert all("tokenizes this text differently" in line["reason"] for line in failures)
    totals = record["teachers"]["teacher"]
    assert totals["samples"] == len(scores) and totals["failures"] == len(failures)
    faults = [entry for entry in lines(tmp_path / f"proxy-{port}.jsonl") if entry["fault"]]
    assert faults and all(entry["status"] == 503 for entry in faults)
    assert totals["requests_sent"] > 2 * len(scores)  # tokenize + completions, and the resends


@pytest.mark.timeout(300)
def test_a_teacher_that_goes_down_stops_the_run_clearly(tmp_path: Path, student: Path,
                                                         llama_server: str) -> None:
    from stillroom.train.on_policy_trainer import TeacherFailed

    # The probe's two requests (/extras/tokenize, /completions) pass; then the server is down.
    port, proxied = proxy(tmp_path, llama_server, "--fail-after", "2", "--status", "503")
    config = write_config(tmp_path, student, f"max_steps: 2\nteacher: {served(port)}\n")
    with proxied, pytest.raises(TeacherFailed) as caught:
        train(config)
    message = str(caught.value)
    assert isinstance(caught.value, StillroomError) and caught.value.exit_code == 1
    assert "step 1" in message and "teacher 'teacher'" in message and "503" in message
    failures = lines(tmp_path / "out" / "teacher_failures.jsonl")
    assert [(line["step"], line["teacher"]) for line in failures] == [(1, "teacher")] * 2
    assert {line["id"] for line in failures} <= {row["id"] for row in ROWS}
    assert not (tmp_path / "out" / "teacher_scores.jsonl").exists()
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.timeout(300)
def test_two_teachers_routed_by_a_column(tmp_path: Path, student: Path,
                                         llama_server: str) -> None:
    port = int(llama_server.rsplit(":", 1)[1])
    config = write_config(tmp_path, student, (
        "max_steps: 2\nroute_column: domain\nteachers:\n"
        f"  local: {{kind: llamacpp, n_threads: 1}}\n  served: {served(port)}\n"))
    record = train(config)
    scores = lines(tmp_path / "out" / "teacher_scores.jsonl")
    # The served teacher cannot score a sample its tokenizer would split otherwise (recorded).
    failures = lines(tmp_path / "out" / "teacher_failures.jsonl")
    assert len(scores) + len(failures) == 4
    for line in scores + failures:
        assert line["teacher"] == ROWS[line["row"]]["domain"] and line["id"] == ROWS[line["row"]]["id"]
    assert {line["teacher"] for line in failures} <= {"served"}
    teachers = record["teachers"]
    assert teachers["local"]["kind"] == "llamacpp" and teachers["served"]["kind"] == "openai"
    assert teachers["local"]["samples"] == sum(1 for s in scores if s["teacher"] == "local") == 2
    assert teachers["served"]["samples"] + teachers["served"]["failures"] == 2
    assert teachers["served"]["requests_sent"] >= 2
