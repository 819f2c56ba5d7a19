"""The output folder's commit protocol: what a crash can and cannot leave behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom.data.output import OutputFolder
from stillroom.errors import OutputFolderError


def test_uncommitted_shards_and_torn_log_lines_are_cleaned_up(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}], "failed": [{"a": 2, "error": "x"}]}, ["0", "1"], segment=0)
    # A crash after writing a shard but before its commit line, and a torn half line:
    (folder.root / "data" / "part-00001.parquet").write_bytes(b"partial")
    (folder.root / "data" / "part-00002.parquet.tmp").write_bytes(b"partial")
    with open(folder.commit_log, "ab") as handle:
        handle.write(b'{"seq": 1, "files": {"data": "data/part-0')
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.done(0) == {"0", "1"} and state.next_seq == 1
    assert [p.name for p in (folder.root / "data").iterdir()] == ["part-00000.parquet"]
    assert folder.commit_log.read_bytes().endswith(b"\n")
    assert folder.count("data") == 1 and folder.count("failed") == 1


def test_a_folder_of_another_run_or_foreign_data_is_refused(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare({"run": 1})
    with pytest.raises(OutputFolderError, match="different run"):
        folder.prepare({"run": 2})
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "x.parquet").write_bytes(b"")
    with pytest.raises(OutputFolderError, match="did not write"):
        OutputFolder(foreign).prepare({"run": 1})


def test_overwrite_removes_only_what_stillroom_wrote(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}]}, ["0"], segment=0)
    (folder.root / "notes.txt").write_text("mine")
    state = folder.prepare({"run": 2}, overwrite=True)
    assert state.done(0) == set() and (folder.root / "notes.txt").read_text() == "mine"
    assert folder.count("data") == 0


def test_a_record_that_lost_only_its_newline_still_counts_and_the_log_stays_valid(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}]}, ["0"], segment=0)
    folder.commit_log.write_bytes(folder.commit_log.read_bytes().rstrip(b"\n"))
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.done(0) == {"0"}
    folder.commit(state, {"data": [{"a": 2}]}, ["1"], segment=0)
    assert len(folder.read_commits()) == 2 and folder.count("data") == 2


def test_reading_a_live_folder_does_not_touch_its_log(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}]}, ["0"], segment=0)
    with open(folder.commit_log, "ab") as handle:
        handle.write(b'{"seq": 1, "fi')  # another process is appending right now
    before = folder.commit_log.read_bytes()
    assert len(folder.read_commits()) == 1
    assert folder.commit_log.read_bytes() == before


def test_shards_whose_column_types_conflict_are_harmonized_as_json_text(tmp_path: Path) -> None:
    import json

    import datasets

    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    # Rows that mix `prompt` text and a conversation, landing in different shards.
    folder.commit(state, {"data": [{"id": "a", "prompt": "hi", "n": 1}]}, ["0"], segment=0)
    conversation = [{"role": "user", "content": "hello"}]
    folder.commit(state, {"data": [{"id": "b", "prompt": conversation, "n": 2.5}]}, ["1"], segment=0)
    folder.harmonize_shards()
    rows = {row["id"]: row for row in folder.read_rows("data")}
    assert json.loads(rows["a"]["prompt"]) == "hi"
    assert json.loads(rows["b"]["prompt"]) == conversation
    assert rows["a"]["n"] == 1.0 and rows["b"]["n"] == 2.5  # compatible types still unify
    loaded = datasets.load_dataset("parquet", data_dir=str(folder.root / "data"), split="train")
    assert sorted(loaded["id"]) == ["a", "b"]
