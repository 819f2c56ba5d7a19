"""`stillroom decontaminate` as a user runs it: small training and benchmark files, real readers,
the output folder and the card."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import stillroom.cli.decontaminate  # noqa: F401  (registers the verb on `app`)
from stillroom.cli.main import app
from stillroom.data.output import OutputFolder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STILLROOM = str(Path(sys.executable).with_name("stillroom"))

GSM = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. How many eggs does she sell every day?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total "
    "does it take?",
]
MATH = [
    "Convert the point (0,3) in rectangular coordinates to polar coordinates.",
    "How many vertical asymptotes does the graph of y = 2 / (x^2 + x - 6) have?",
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    gsm = tmp_path / "gsm8k_test.csv"
    with open(gsm, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows([{"question": q, "answer": "18"} for q in GSM])
    math = tmp_path / "math500"
    math.mkdir()
    pq.write_table(
        pa.table({"problem": MATH, "solution": ["(3, pi/2)", "2"],
                  "unique_id": ["test/precalc/807.json", "test/algebra/1.json"]}),
        math / "test-00000.parquet",
    )
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "t-eggs", "prompt": GSM[0].upper().replace(". ", ".\n\n"), "completion": "18"},
        {"id": "t-chat", "messages": [
            {"role": "user", "content": "Solve this: " + MATH[1].lower()},
            {"role": "assistant", "content": "There are 2."},
        ]},
        {"id": "t-clean", "prompt": "Write a limerick about a duck that bakes muffins.",
         "completion": "A duck with a passion for baking..."},
        {"id": "t-robe", "prompt": "A robe takes 2 bolts of blue fiber. Is that a lot?",
         "completion": "Not really."},
    ])
    return {"train": train, "gsm": gsm, "math": math}


def test_decontaminate_end_to_end(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [STILLROOM, "decontaminate", str(files["train"]), "--against", str(files["gsm"]),
         "--against", str(files["math"]), "-o", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, result.stderr
    folder = OutputFolder(out)
    kept = {row["id"] for row in folder.read_rows("data")}
    assert kept == {"t-clean", "t-robe"}  # t-robe shares one 8-gram: 8 of 22 tokens
    dropped = {row["id"]: row for row in folder.read_rows("dropped")}
    assert dropped["t-eggs"]["drop_reason"] == (
        f"contaminated: 100% of {files['gsm']}:2 covered by 8-gram matches"  # CSV line 2
    )
    assert dropped["t-chat"]["drop_reason"] == (
        f"contaminated: 100% of {files['math']}:unique_id=test/algebra/1.json covered by "
        "8-gram matches"
    )
    assert dropped["t-chat"]["contamination"][0]["column"] == "problem"
    assert (f"decontaminate: 2 of 4 rows contaminated; {files['gsm']}: 1 of 2 items leaked; "
            f"{files['math']}: 1 of 2 items leaked") in " ".join(result.stdout.split())
    card = (out / "README.md").read_text()
    assert f"| decontaminate | {files['math']}: leaked | unique_id=test/algebra/1.json |" in card

    # Rerunning the same command resumes the finished run; an edited benchmark is another run.
    command = [STILLROOM, "decontaminate", str(files["train"]), "--against", str(files["gsm"]),
               "--against", str(files["math"]), "-o", str(out), "--no-progress"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert again.returncode == 0, again.stderr
    files["gsm"].write_text(files["gsm"].read_text().replace("ducks", "geese"))
    edited = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert edited.returncode == 2, edited.stderr


def test_options_change_what_is_compared(tmp_path: Path, files: dict[str, Path]) -> None:
    runner = CliRunner()
    # Prompts not searched, even at threshold 0 (any shared 8-gram): t-eggs's copy goes unseen.
    result = runner.invoke(app, [
        "decontaminate", str(files["train"]), "-a", str(files["gsm"]), "-a", str(files["math"]),
        "-o", str(tmp_path / "o1"), "--column", "completion", "--column", "messages",
        "--threshold", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    dropped = {row["id"] for row in OutputFolder(tmp_path / "o1").read_rows("dropped")}
    assert dropped == {"t-chat"}
    # A lower threshold: t-robe's one shared 8-gram covers 8 of the item's 22 tokens.
    result = runner.invoke(app, [
        "decontaminate", str(files["train"]), "-a", str(files["gsm"]), "-o", str(tmp_path / "o2"),
        "--threshold", "0.3", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    dropped = {row["id"]: row for row in OutputFolder(tmp_path / "o2").read_rows("dropped")}
    assert set(dropped) == {"t-eggs", "t-robe"}
    assert dropped["t-robe"]["drop_reason"] == (
        f"contaminated: 36% of {files['gsm']}:3 covered by 8-gram matches"
    )
    # Longer n-grams: the 8 shared tokens hold no 9-gram, so even threshold 0 keeps t-robe.
    result = runner.invoke(app, [
        "decontaminate", str(files["train"]), "-a", str(files["gsm"]), "-o", str(tmp_path / "o3"),
        "--ngram", "9", "--threshold", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    dropped = {row["id"]: row for row in OutputFolder(tmp_path / "o3").read_rows("dropped")}
    assert set(dropped) == {"t-eggs"}


def test_bad_benchmarks_exit_2_naming_the_file(tmp_path: Path, files: dict[str, Path]) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope.jsonl"
    result = runner.invoke(app, ["decontaminate", str(files["train"]), "--against", str(missing),
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert str(missing) in result.output and "no such benchmark file" in result.output
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"answer": "18"}])
    result = runner.invoke(app, ["decontaminate", str(files["train"]), "--against", str(answers),
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--bench-column" in result.output
    result = runner.invoke(app, ["decontaminate", str(files["train"]), "--against", str(answers),
                                 "--bench-column", "answer", "-o", str(tmp_path / "out"),
                                 "--short-items", "sometimes"])
    assert result.exit_code == 2 and "short_items" in result.output
    assert not (tmp_path / "out" / "data").exists()
