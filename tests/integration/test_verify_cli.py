"""`stillroom verify` as a user runs it: verdicts on examples/data/math_answers.jsonl, exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.data.output import OutputFolder

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
EXAMPLE = Path(__file__).parents[2] / "examples" / "data" / "math_answers.jsonl"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=300)


def test_math_verdicts_on_the_example_file(tmp_path: Path) -> None:
    result = cli("verify", str(EXAMPLE), "-o", str(tmp_path / "out"), "--kind", "math",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in OutputFolder(tmp_path / "out").read_rows("data")}
    source = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    assert set(rows) == {row["id"] for row in source}  # every row kept, none failed
    for row_id, row in rows.items():
        # The example's ids say what each row is: "...-right" rows are correct answers.
        assert row["passed"] is row_id.endswith("-right"), (row_id, row["reason"])
        assert row["reason"] and row["metadata"]["verify"]["reason"] == row["reason"]
    assert rows["boxed-wrong"]["reason"] == "extracted 31, expected 32"
    assert rows["gsm8k-wrong"]["reason"] == "extracted 12, expected 10"
    assert rows["no-answer"]["reason"] == "no answer found in the completion"
    assert rows["sum-right"]["verify_details"]["extracted"] == "31"
    right = sum(row["id"].endswith("-right") for row in source)
    share = f"{right / len(source):.2%}"
    assert f"math: {right} of {len(source)} rows passed ({share})" in result.stdout


def test_a_row_without_answer_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "answers.jsonl"
    source.write_text(
        '{"completion": "31", "answer": "31"}\n{"completion": "\\\\boxed{2}"}\n'
    )
    result = cli("verify", str(source), "-o", str(tmp_path / "out"), "--kind", "math")
    assert result.returncode == 2
    assert f"{source}:2" in result.stderr and "`answer`" in result.stderr
    assert not (tmp_path / "out" / "data").exists()


def test_unknown_kind_and_bad_options_exit_2(tmp_path: Path) -> None:
    result = cli("verify", str(EXAMPLE), "-o", str(tmp_path / "out"), "--kind", "nope")
    assert result.returncode == 2 and "unknown verifier 'nope'" in result.stderr
    assert "math" in result.stderr
    result = cli("verify", str(EXAMPLE), "-o", str(tmp_path / "out"), "--kind", "regex",
                 "--options", "not json")
    assert result.returncode == 2 and "--options must be a JSON object" in result.stderr


def test_a_format_verifier_with_options(tmp_path: Path) -> None:
    result = cli("verify", str(EXAMPLE), "-o", str(tmp_path / "out"), "--kind", "length",
                 "--options", '{"max": 6}', "--drop-failed", "--no-progress")
    assert result.returncode == 0, result.stderr
    folder = OutputFolder(tmp_path / "out")
    kept = folder.read_rows("data")
    dropped = folder.read_rows("dropped")
    assert kept and dropped and len(kept) + len(dropped) == 8
    assert all(len(row["completion"].split()) <= 6 for row in kept)
    assert all("more than the maximum 6" in row["drop_reason"] for row in dropped)
    assert f"length: {len(kept)} of 8 rows passed" in result.stdout


def test_code_verdicts_from_the_sandbox(tmp_path: Path) -> None:
    rows = [
        {"id": "right", "completion": "```python\ndef add(a, b):\n    return a + b\n```",
         "tests": "assert add(1, 2) == 3"},
        {"id": "wrong", "completion": "def add(a, b):\n    return a - b",
         "tests": "assert add(1, 2) == 3"},
        {"id": "loops", "completion": "while True:\n    pass", "tests": "assert True"},
    ]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = cli("verify", str(data), "-o", str(tmp_path / "out"), "--kind", "code", "--no-progress")
    assert result.returncode == 0, result.stderr
    verdicts = {r["id"]: r for r in OutputFolder(tmp_path / "out").read_rows("data")}
    assert verdicts["right"]["passed"] is True
    assert verdicts["wrong"]["passed"] is False and "AssertionError" in verdicts["wrong"]["reason"]
    loops = verdicts["loops"]
    assert loops["passed"] is False
    assert "CPU time limit" in loops["reason"] or "wall timeout" in loops["reason"], loops["reason"]
