"""The CLI as a user runs it: exit codes, error messages naming file and line, the verbs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=timeout)


def test_bad_input_fails_before_any_request_naming_file_and_line(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, requests_log = echo_server()
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": broken}\n')
    result = cli("complete", str(source), "-o", str(tmp_path / "out"), "--base-url", base_url, "--model", "m")
    assert result.returncode == 2
    assert f"{source}:3" in result.stderr and "not valid JSON" in result.stderr
    assert not requests_log.exists() or requests_log.read_text() == ""
    assert not (tmp_path / "out").exists()

    source.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    result = cli("complete", str(source), "-o", str(tmp_path / "out"), "--base-url", base_url, "--model", "m")
    assert result.returncode == 2 and f"{source}:2" in result.stderr and "`prompt` or `messages`" in result.stderr

    result = cli("complete", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_bad_pipeline_file_names_line_and_key(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("input: x.jsonl\nstages:\n  - type: complete\n    n: -1\n")
    result = cli("run", str(pipeline), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{pipeline}:4" in result.stderr and "stages[0].n" in result.stderr


def test_run_a_pipeline_file_then_inspect(echo_server: Callable[..., tuple[str, Path]], tmp_path: Path) -> None:
    base_url, _ = echo_server()
    (tmp_path / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "question": f"q{i}"}) + "\n" for i in range(6)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""\
# stillroom run p.yaml -o out
input: questions.jsonl
backends:
  echo: {{kind: openai, model: m, base_url: "{base_url}"}}
stages:
  - type: complete
    backend: echo
    prompt_template: "Answer: {{question}}"
""")
    out = tmp_path / "out"
    result = cli("run", str(pipeline), "-o", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert sorted(loaded["completion"]) == [f"echo: Answer: q{i}" for i in range(6)]
    inspected = cli("inspect", str(out))
    assert inspected.returncode == 0 and "complete" in inspected.stdout and "echo: Answer" in inspected.stdout


def test_failure_rate_above_the_limit_exits_1(katan: Callable[..., str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "any")
    base_url = katan("--error-rate", "1.0")
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    result = cli("complete", str(source), "-o", str(tmp_path / "out"), "--base-url", base_url, "--model", "m",
                 "--max-retries", "0", "--no-progress")
    assert result.returncode == 1
    assert "2 rows failed" in result.stderr and "failed/" in result.stderr
    inspected = cli("inspect", str(tmp_path / "out"))
    assert "complete: InternalServerError" in inspected.stdout


@pytest.mark.timeout(900)
def test_quickstart_runs_the_whole_loop_on_the_embedded_model(tmp_path: Path) -> None:
    """Seeds -> verified teacher answers -> curation -> a trained student -> eval.json, small."""
    pytest.importorskip("trl")
    out = tmp_path / "qs"
    result = cli("quickstart", "-o", str(out), "--train-prompts", "6", "--heldout", "6",
                 "--epochs", "1", "--no-progress", timeout=900)
    assert result.returncode == 0, result.stderr
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert loaded.num_rows >= 1
    # Every kept answer passed the exact checker, and carries the teacher's token logprobs.
    assert all(row["completion"].strip().rstrip(".") == row["answer"] for row in loaded)
    assert all(row["logprobs"] and row["logprobs"][0]["top_logprobs"] for row in loaded)
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["n"] == 6 and evaluation["metric"] == "accuracy (exact verifier)"
    for role in ("baseline", "student", "teacher"):
        assert 0.0 <= evaluation[role] <= 1.0
    assert 0.0 <= evaluation["paired_test"]["p_value"] <= 1.0
    # Held-out prompts never enter training.
    assert len(evaluation["heldout_prompts"]) == 6
    assert not set(evaluation["heldout_prompts"]) & set(loaded["prompt"])
    record = json.loads((out / "student" / "final" / "stillroom_train.json").read_text())
    assert record["rows"] == loaded.num_rows and record["losses"]
    card = (out / "README.md").read_text()
    assert "## Distillation" in card and "held-out prompts: baseline" in card
    report = (out / "report.html").read_text()
    assert "<h2>Distillation</h2>" in report and "<polyline" in report
    assert "held-out prompts: baseline" in result.stdout
