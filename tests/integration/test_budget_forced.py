"""``budget_forced`` through ``stillroom run`` on the embedded model (llama.cpp in process): the
trace and the answer land in their columns with the waits counted, a rerun into a new folder is
served from the request cache round by round, and a backend that cannot continue the
assistant's turn is refused before any request (exit 2). Then the server path: llama-cpp-python's
OpenAI-compatible server given raw prompts (/v1/completions) rendered here from the model's chat
template. (Its text is not compared with the in-process backend's: llama.cpp evaluates the
prompt in other batches there, and greedy decoding of a tiny model drifts apart on such
rounding.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stillroom.data.output import OutputFolder
from stillroom.llm.llamacpp import embedded_model_path
from tests.servers import free_port, running

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
QUESTIONS = ["What is 7 + 5?", "Name a primary colour.", "What is the capital of France?"]

PIPELINE = """\
name: budget forcing test
seed: 3
input: prompts.jsonl
backends:
  teacher: {kind: llamacpp, n_threads: 1}
stages:
  - type: budget_forced
    backend: teacher
    temperature: 0
    max_thinking_tokens: 40
    max_waits: 1
    max_answer_tokens: 48
"""


def stillroom(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], cwd=cwd, capture_output=True, text=True, timeout=400)


def backends_of(folder: Path, cwd: Path) -> dict[str, Any]:
    done = stillroom("inspect", str(folder), "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["backends"]  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
def test_traces_waits_and_a_rerun_from_the_cache(tmp_path: Path) -> None:
    with (tmp_path / "prompts.jsonl").open("w") as out:
        for number, question in enumerate(QUESTIONS):
            out.write(json.dumps({"id": f"q{number}", "prompt": question}) + "\n")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)

    done = stillroom("run", "pipeline.yaml", "-o", "first", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["id"]: row for row in OutputFolder(tmp_path / "first").read_rows("data")}
    assert set(rows) == {"q0", "q1", "q2"}
    requests = thinking = 0
    for row in rows.values():
        figures = row["metadata"]["budget_forced"]
        assert figures["model"] == "SmolLM2-135M-Instruct"
        assert row["completion"].startswith("Final Answer:") and row["completion"] != "Final Answer:"
        assert row["reasoning"].strip() and "</think>" not in row["reasoning"]
        # Every wait is in the trace, and each asked for one more thinking round.
        assert row["reasoning"].count("Wait") >= figures["waits"]
        assert figures["requests"] == figures["waits"] + 2
        assert 0 < figures["thinking_tokens"] <= 40 and figures["answer_tokens"] > 0
        assert figures["waits"] <= 1
        requests += figures["requests"]
        thinking += figures["thinking_tokens"]
    # The first end of thinking was ignored somewhere (the cap did not cut every trace at once).
    assert any(row["metadata"]["budget_forced"]["waits"] == 1 for row in rows.values())
    first = backends_of(tmp_path / "first", tmp_path)["teacher"]
    assert first["requests_sent"] == requests and first["cache_hits"] == 0
    assert first["reasoning_tokens"] == thinking  # the traces counted apart in usage

    done = stillroom("run", "pipeline.yaml", "-o", "second", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    second = backends_of(tmp_path / "second", tmp_path)["teacher"]
    assert second["requests_sent"] == 0 and second["cache_hits"] == requests
    assert second["cached_reasoning_tokens"] == thinking
    again = {row["id"]: row for row in OutputFolder(tmp_path / "second").read_rows("data")}
    for key, row in rows.items():
        assert (again[key]["completion"], again[key]["reasoning"]) == (row["completion"],
                                                                       row["reasoning"])


def test_a_server_that_cannot_continue_the_turn_is_refused_before_any_request(
    tmp_path: Path,
) -> None:
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Hi"}) + "\n")
    # Nothing listens on this port: a request would fail otherwise than with exit 2.
    (tmp_path / "pipeline.yaml").write_text(PIPELINE.replace(
        "{kind: llamacpp, n_threads: 1}",
        '{kind: openai, model: m, base_url: "http://127.0.0.1:9/v1", max_retries: 0}'))
    done = stillroom("run", "pipeline.yaml", "-o", "out", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'teacher'" in done.stderr and "continue_final_message" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "data").exists()


def chat_template_of_the_embedded_model() -> str:
    import llama_cpp

    model = llama_cpp.Llama(str(embedded_model_path()), vocab_only=True, verbose=False)
    return str(model.metadata["tokenizer.chat_template"])


@pytest.mark.timeout(600)
def test_a_server_given_raw_prompts_from_a_named_chat_template(tmp_path: Path) -> None:
    with (tmp_path / "prompts.jsonl").open("w") as out:
        for number, question in enumerate(QUESTIONS[:2]):
            out.write(json.dumps({"id": f"q{number}", "prompt": question}) + "\n")
    (tmp_path / "smollm2.jinja").write_text(chat_template_of_the_embedded_model())
    port = free_port()
    (tmp_path / "server.yaml").write_text(PIPELINE.replace(
        "{kind: llamacpp, n_threads: 1}",
        f'{{kind: openai, model: smollm2, base_url: "http://127.0.0.1:{port}/v1"}}',
    ) + "    chat_template: smollm2.jinja\n")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
    with running(command, port, tmp_path / "server.log", timeout=120):
        done = stillroom("run", "server.yaml", "-o", "server", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = {row["id"]: row for row in OutputFolder(tmp_path / "server").read_rows("data")}
    assert set(served) == {"q0", "q1"}
    assert backends_of(tmp_path / "server", tmp_path)["teacher"]["requests_sent"] == sum(
        row["metadata"]["budget_forced"]["requests"] for row in served.values())

    for row in served.values():
        figures = row["metadata"]["budget_forced"]
        assert row["completion"].startswith("Final Answer:") and row["completion"] != "Final Answer:"
        assert row["reasoning"].strip() and "<|im_start|>" not in row["reasoning"]
        assert figures["requests"] == figures["waits"] + 2 and figures["waits"] <= 1
        assert 0 < figures["thinking_tokens"] <= 40 and figures["answer_tokens"] > 0
