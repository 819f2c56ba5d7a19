"""`stillroom filter --ifd` as a user runs it, on the embedded SmolLM2 (loaded by transformers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.curate.ifd import REASON_NOT_HELPFUL
from stillroom.curate.ifd_scoring import REASON_ONE_TOKEN
from stillroom.data.output import OutputFolder

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))

ROWS = [
    {"id": "tips", "instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat plenty of fruit and vegetables.\n2. Exercise every day.\n3. Sleep well."},
    {"id": "capital", "instruction": "What is the capital of France?", "input": "",
     "output": "The capital of France is Paris."},
    {"id": "translate", "instruction": "Translate the sentence into French.",
     "input": "I like apples.", "output": "J'aime les pommes."},
    {"id": "sort", "instruction": "Sort the numbers in ascending order.", "input": "5, 2, 9, 1",
     "output": "1, 2, 5, 9"},
    {"id": "mismatch", "instruction": "What is the capital of France?", "input": "",
     "output": "Photosynthesis turns light, water and carbon dioxide into sugar in leaves."},
    {"id": "one-token", "instruction": "Name a color.", "input": "", "output": "Blue"},
]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=300)


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.timeout(240)
def test_ifd_keeps_the_highest_scores_below_one(tmp_path: Path) -> None:
    source = write(tmp_path / "alpaca.jsonl", ROWS)
    result = cli("filter", str(source), "-o", str(tmp_path / "out"), "--ifd", "--ifd-top-k", "2",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    folder = OutputFolder(tmp_path / "out")
    kept, dropped = folder.read_rows("data"), folder.read_rows("dropped")
    assert len(kept) + len(dropped) == len(ROWS) and not folder.read_rows("failed")
    scored = [row for row in kept + dropped if row["ifd"] is not None]
    for row in scored:
        assert row["ifd"] == pytest.approx(row["ifd_ppl_conditioned"] / row["ifd_ppl_direct"])
        assert row["ifd_answer_tokens"] > 1 and row["ifd_truncated"] is False
    below_one = sorted((row["ifd"] for row in scored if row["ifd"] < 1), reverse=True)
    assert len(kept) == min(2, len(below_one))
    assert sorted(row["ifd"] for row in kept) == sorted(below_one[:2])
    cutoff = min(row["ifd"] for row in kept)
    reasons = {row["id"]: row["drop_reason"] for row in dropped}
    assert reasons.pop("one-token") == REASON_ONE_TOKEN
    for row in dropped:
        if row["id"] in reasons:
            expected = (REASON_NOT_HELPFUL if row["ifd"] >= 1
                        else f"ifd below the top 2 cutoff ({cutoff:.4g})")
            assert row["drop_reason"] == expected
    assert row_by_id(kept + dropped, "tips")["metadata"]["ifd_filter"]["model"] == (
        "SmolLM2-135M-Instruct"
    )
    assert f"ifd: kept {len(kept)} of {len(ROWS)} rows (top 2" in result.stdout
    assert "README.md" in {p.name for p in (tmp_path / "out").iterdir()}


def row_by_id(rows: list[dict[str, object]], row_id: str) -> dict[str, object]:
    return next(row for row in rows if row["id"] == row_id)


def test_missing_columns_exit_2_naming_file_and_line(tmp_path: Path) -> None:
    source = write(tmp_path / "pairs.jsonl", [ROWS[0], {"question": "q?", "answer": "a"}])
    result = cli("filter", str(source), "-o", str(tmp_path / "out"), "--ifd")
    assert result.returncode == 2
    assert f"{source}:2" in result.stderr and "IFD needs `instruction`" in result.stderr
    assert not (tmp_path / "out" / "data").exists()


def test_ifd_options_without_ifd_and_no_filter_exit_2(tmp_path: Path) -> None:
    source = write(tmp_path / "pairs.jsonl", ROWS[:1])
    result = cli("filter", str(source), "-o", str(tmp_path / "out"), "--ifd-top-k", "3")
    assert result.returncode == 2 and "--ifd-top-k set but --ifd is not" in result.stderr
    result = cli("filter", str(source), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "choose at least one filter: --heuristics or --ifd" in result.stderr
    result = cli("filter", str(source), "-o", str(tmp_path / "out"), "--ifd",
                 "--ifd-top-k", "3", "--ifd-top-fraction", "0.5")
    assert result.returncode == 2 and "not both" in result.stderr


def test_heuristics_drop_empty_refusing_and_foreign_answers(tmp_path: Path) -> None:
    rows = [
        {"id": "good", "prompt": "Give a tip for sleeping well.",
         "completion": "Keep the bedroom dark and cool, and go to bed at the same time each night."},
        {"id": "placeholder", "prompt": "Summarize the text.", "completion": "N/A"},
        {"id": "refusal", "prompt": "Explain tides.",
         "completion": "As an AI language model, I cannot explain tides."},
        {"id": "french", "prompt": "Describe the weather.",
         "completion": "Il fait très beau aujourd'hui et le soleil brille sur toute la ville."},
        {"id": "long", "prompt": "Say hello.", "completion": " ".join(["hello"] * 40)},
    ]
    out = tmp_path / "out"
    done = cli("filter", str(write(tmp_path / "in.jsonl", rows)), "-o", str(out), "--heuristics",
               "--language", "en", "--max-words", "30", "--no-progress")
    assert done.returncode == 0, done.stderr
    folder = OutputFolder(out)
    assert [row["id"] for row in folder.read_rows("data")] == ["good"]
    reasons = {row["id"]: row["drop_reason"] for row in folder.read_rows("dropped")}
    assert reasons["placeholder"].startswith("empty:")
    assert reasons["refusal"].startswith("refusal:")
    assert reasons["french"].startswith("language:")
    assert reasons["long"].startswith("length:")
    assert "heuristics: 4 of 5 rows dropped" in done.stdout
    wrong = cli("filter", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o2"), "--language", "en")
    assert wrong.returncode == 2 and "add --heuristics" in wrong.stderr
