"""``stillroom export rl``'s output checks and column types (the task rows themselves are tested
in tests/unit/test_grpo.py): every refusal is exit 2 with nothing written and no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stillroom.cli.main import app
from stillroom.errors import ConfigError, InputError
from stillroom.export_rl import export_rl, one_type_columns

ROWS = [{"id": "a", "prompt": "2+2?", "answer": "4", "completion": "4"},
        {"id": "b", "prompt": "3+3?", "answer": 6, "completion": "6"}]


def source(folder: Path, rows: list[dict] = ROWS) -> Path:
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", "rl", *args])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.exit_code, result.output


def test_the_output_may_not_be_the_source_a_folder_or_unwritable(tmp_path: Path) -> None:
    data = source(tmp_path)
    before = data.read_bytes()
    code, output = export(str(data), "-o", str(data), "-k", "math")
    assert code == 2 and "is the source" in output
    same = tmp_path / "sub" / ".." / "in.jsonl"  # another spelling of the same file
    (tmp_path / "sub").mkdir()
    assert export(str(data), "-o", str(same), "-k", "math")[0] == 2
    assert data.read_bytes() == before
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    code, output = export(str(data), "-o", str(folder), "-k", "math")
    assert code == 2 and "is a folder" in output and not list(tmp_path.glob("*.tmp"))
    code, output = export(str(data), "-o", "/proc/stillroom-x.jsonl", "-k", "math")
    assert code == 2 and "cannot write" in output and "-o" in output
    blocked = tmp_path / "file"
    blocked.write_text("", encoding="utf-8")
    code, output = export(str(data), "-o", str(blocked / "out.jsonl"), "-k", "math")
    assert code == 2 and "cannot write" in output


def test_the_output_may_not_lie_in_the_source_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pytest.importorskip("pyarrow").Table.from_pylist(
        [{"id": "a", "prompt": "2+2?", "answer": "4"}]), run / "data" / "part-0.parquet")
    with pytest.raises(ConfigError, match="lies in the source folder") as caught:
        export_rl(run, run / "data" / "tasks.jsonl", verifier="math")
    assert caught.value.key == "-o"
    assert export_rl(run, run / "tasks.jsonl", verifier="math").exists()  # beside data/: fine


def test_text_and_numbers_in_one_column_are_written_as_text(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    for suffix in (".jsonl", ".parquet"):
        out = export_rl(source(tmp_path), tmp_path / f"rl{suffix}", verifier="math")
        loaded = datasets.load_dataset(suffix.lstrip(".").replace("jsonl", "json"),
                                       data_files=str(out), split="train")
        assert loaded["answer"] == ["4", "6"]
        # The teacher's completion is never part of a task.
        assert "completion" not in loaded.column_names


def test_one_type_columns() -> None:
    rows = [{"a": 1, "b": [1], "c": True}, {"a": 2.5, "b": [2, 3], "c": "x"}, {"a": None}]
    assert one_type_columns(rows, "d") == [{"a": "1", "b": [1], "c": "True"},
                                           {"a": "2.5", "b": [2, 3], "c": "x"}, {"a": None}]
    same = [{"a": 1}, {"a": 2}]
    assert one_type_columns(same, "d") is same
    with pytest.raises(InputError, match=r"`b` holds values of different types .* \(list, str\)"):
        one_type_columns([{"b": [1]}, {"b": "x"}], "d")


def test_the_reference_may_not_be_the_answer_column(tmp_path: Path) -> None:
    data = source(tmp_path)
    code, output = export(str(data), "-o", str(tmp_path / "out.jsonl"), "-k", "exact",
                          "--options", '{"reference_column": "completion"}')
    assert code == 2 and "reference_column" in output and "`completion`" in output
    assert not (tmp_path / "out.jsonl").exists()
