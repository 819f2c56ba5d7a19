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
    folder.release()  # what the crash did: the kernel drops a dead process's lock
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
    folder.release()
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


def two_commits(tmp_path: Path) -> OutputFolder:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}, {"a": 2}], "failed": [{"a": 3, "error": "x"}]},
                  ["0", "1", "2"], segment=0)
    folder.commit(state, {"data": [{"a": 4}]}, ["3"], segment=0)
    folder.release()
    return folder


def test_a_second_writer_is_refused_before_it_touches_anything(tmp_path: Path) -> None:
    first = OutputFolder(tmp_path / "out")
    first.prepare({"run": 1})
    second = OutputFolder(tmp_path / "out")
    with pytest.raises(OutputFolderError, match=r"being written by another stillroom process \(process \d+"):
        second.prepare({"run": 1}, overwrite=True)
    assert first.run_file.exists()  # the refused --overwrite removed nothing
    first.release()
    assert second.prepare({"run": 1}).notes == []  # a lock given back cleanly is no "takeover"


def test_the_lock_of_a_dead_writer_is_taken_over_and_said(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare({"run": 1})
    # What a SIGKILLed writer leaves: its record in the lock file, the lock itself gone with it.
    record = folder.lock_file.read_bytes()
    folder.release()
    folder.lock_file.write_bytes(record.replace(b'"pid":', b'"pid":999999,"old_pid":'))
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.notes and "took over the lock" in state.notes[0] and "999999" in state.notes[0]


def test_overwrite_keeps_the_lock_file(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare({"run": 1})
    folder.prepare({"run": 2}, overwrite=True)
    assert folder.lock_file.exists()
    with pytest.raises(OutputFolderError, match="being written"):
        OutputFolder(tmp_path / "out").prepare({"run": 2})


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "grown"])
def test_a_damaged_committed_shard_undoes_its_commit_and_says_so(tmp_path: Path, damage: str) -> None:
    folder = two_commits(tmp_path)
    shard = folder.root / "data" / "part-00000.parquet"
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "garbage":
        shard.write_bytes(b"x" * shard.stat().st_size)  # same size, not Parquet
    else:
        shard.write_bytes(shard.read_bytes() + b"tail")
    assert not folder.committed_files_intact() or damage == "garbage"
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    # The whole first commit is undone (its failed/ shard too), so its keys are done again once.
    assert state.done(0) == {"3"}
    assert any("data/part-00000.parquet" in note and "undone" in note for note in state.notes)
    assert not (folder.root / "failed" / "part-00000.parquet").exists()
    assert folder.count("data") == 1 and folder.count("failed") == 0
    assert [record["seq"] for record in folder.read_commits()] == [1]


def test_two_commits_naming_one_shard_are_both_undone(tmp_path: Path) -> None:
    # What the flush race left behind: two records for one file, which holds only one's rows.
    import orjson

    from stillroom.data.commit_log import sealed

    folder = two_commits(tmp_path)
    lines = folder.commit_log.read_bytes().splitlines()
    lines[1] = sealed(orjson.loads(lines[1].replace(b"part-00001", b"part-00000")))
    folder.commit_log.write_bytes(b"\n".join(lines) + b"\n")
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.done(0) == set() and folder.count("data") == 0
    assert any("named by two commits" in note for note in state.notes)


def test_a_damaged_line_in_the_middle_of_the_log_is_skipped_and_its_rows_redone(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    lines = folder.commit_log.read_bytes().splitlines()
    folder.commit_log.write_bytes(lines[0][:-7] + b"#garbage\n" + lines[1] + b"\n")
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.done(0) == {"3"} and state.next_seq == 2
    assert any("line 1 is damaged" in note for note in state.notes)
    # The skipped commit's shards are debris now: removed, so their rows are written once.
    assert folder.count("data") == 1 and folder.count("failed") == 0


def test_a_garbage_run_record_is_a_clear_error(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    folder.run_file.write_bytes(b"\x00garbage{")
    with pytest.raises(OutputFolderError, match=r"run\.json is damaged.*--overwrite"):
        OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert OutputFolder(tmp_path / "out").prepare({"run": 1}, overwrite=True).done(0) == set()


def test_a_folder_is_complete_only_while_its_shards_are(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    folder.mark_complete({"counts": {"data": 3, "failed": 1, "dropped": 0}})
    assert not folder.is_complete()  # no card yet: the card appears last
    (folder.root / "README.md").write_text("card")
    assert folder.is_complete()
    (folder.root / "data" / "part-00001.parquet").unlink()
    assert not folder.is_complete()


def test_a_completion_record_whose_counts_are_not_the_logs_is_not_complete(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    (folder.root / "README.md").write_text("card")
    folder.mark_complete({"counts": {"data": 4, "failed": 1, "dropped": 0}})
    assert not folder.is_complete()


def test_a_kill_during_overwrite_never_leaves_a_card_over_missing_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    folder = two_commits(tmp_path)
    (folder.root / "README.md").write_text("card")
    folder.mark_complete({"counts": {"data": 3, "failed": 1, "dropped": 0}})

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies as the data is being removed

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        folder.clear()
    assert not folder.complete_file.exists() and not (folder.root / "README.md").exists()
    assert not folder.is_complete()


def test_an_edited_commit_line_is_found_by_its_checksum(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    lines = folder.commit_log.read_bytes().splitlines()
    lines[0] = lines[0].replace(b'"0","1","2"', b'"0","2"')  # a key removed by hand
    folder.commit_log.write_bytes(b"\n".join(lines) + b"\n")
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.done(0) == {"3"} and any("line 1 is damaged" in n for n in state.notes)
    assert folder.count("data") == 1  # its shards went with it: its rows are done again once


def test_rows_after_a_checkpoint_whose_line_is_damaged_are_undone(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"dropped": [{"a": 0}]}, [], segment=0, checkpoint=[{"a": 1}, {"a": 2}])
    folder.commit(state, {"data": [{"a": 1}]}, ["1:0"], segment=1)
    folder.release()
    lines = folder.commit_log.read_bytes().splitlines()
    folder.commit_log.write_bytes(b"garbage\n" + lines[1] + b"\n")
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.checkpoints == {} and state.done(1) == set()
    assert folder.count("data") == 0 and folder.count("dropped") == 0


def test_a_checkpoint_reads_back_exactly(tmp_path: Path) -> None:
    # Not through Parquet: that gives every row every column (None) and turns a column of mixed
    # types into JSON text, so a resumed run would ask different requests than the first.
    rows = [{"messages": [{"role": "user", "content": "hi", "name": "x"}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            {"other": 1.5, "n": None}]
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {}, [], segment=0, checkpoint=rows)
    assert folder.read_checkpoint(state.checkpoints[0]) == rows


def test_shards_rewritten_to_one_schema_are_not_taken_for_damaged(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"id": "a", "x": None}]}, ["0"], segment=0)
    folder.commit(state, {"data": [{"id": "b", "x": 2.5, "y": "new"}]}, ["1"], segment=0)
    sizes = [p.stat().st_size for p in folder.shard_paths("data")]
    folder.harmonize_shards()
    assert [p.stat().st_size for p in folder.shard_paths("data")] != sizes  # rewritten
    folder.mark_complete({})
    (folder.root / "README.md").write_text("card")
    assert folder.is_complete()
    folder.release()
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert state.notes == [] and state.done(0) == {"0", "1"}


def test_keys_of_an_old_release_that_repeated_rows_are_refused(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    folder.commit(state, {"data": [{"a": 1}]}, [], segment=0, checkpoint=[{"a": 1}])
    folder.commit(state, {"data": [{"a": 1}]}, ["2:0"], segment=1)  # should have been "1:0"
    folder.release()
    with pytest.raises(OutputFolderError, match="--overwrite"):
        OutputFolder(tmp_path / "out").prepare({"run": 1})


def test_concurrent_commits_never_share_a_shard(tmp_path: Path) -> None:
    import threading

    folder = OutputFolder(tmp_path / "out")
    state = folder.prepare({"run": 1})
    threads = [
        threading.Thread(target=folder.commit,
                         args=(state, {"data": [{"a": i}] * 50}, [str(i)]), kwargs={"segment": 0})
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert folder.count("data") == 400 and len(folder.shard_paths("data")) == 8
    folder.release()
    assert OutputFolder(tmp_path / "out").prepare({"run": 1}).notes == []


def test_an_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder|cannot write"):
        OutputFolder(blocker).prepare({"run": 1})
    with pytest.raises(OutputFolderError, match="cannot write the output folder"):
        OutputFolder(blocker / "sub").prepare({"run": 1})


def test_debris_of_an_interrupted_session_is_removed_and_said(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    (folder.root / "data" / "part-00009.parquet.tmp").write_bytes(b"half")
    (folder.root / "README.md.tmp").write_text("a card never published")
    state = OutputFolder(tmp_path / "out").prepare({"run": 1})
    assert any("removed 2 file(s)" in note and "part-00009.parquet.tmp" in note
               for note in state.notes)
    assert not (folder.root / "README.md.tmp").exists()


def test_damage_is_reported_read_only_and_a_writer_is_seen(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    assert folder.damage() == [] and folder.writer() is None
    shard = folder.root / "failed" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:10])
    assert len(folder.damage()) == 1 and "failed/part-00000.parquet has" in folder.damage()[0]
    assert shard.stat().st_size == 10  # nothing repaired by looking
    writer = OutputFolder(tmp_path / "out")
    writer.acquire()
    assert "process" in (folder.writer() or "")
    writer.release()
    assert folder.writer() is None


def test_an_input_inside_what_the_run_writes_is_refused(tmp_path: Path) -> None:
    folder = two_commits(tmp_path)
    for inside in (folder.root / "data", folder.root / "data" / "part-00000.parquet",
                   folder.state_dir):
        with pytest.raises(OutputFolderError, match="lies in the output folder"):
            folder.refuse_as_input(inside)
    folder.refuse_as_input(tmp_path / "elsewhere.jsonl")
    folder.refuse_as_input(folder.root / "notes.jsonl")  # the folder itself is not cleared


def test_the_run_record_holds_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-proj-InExtraBody0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    fingerprint = {"pipeline": {"backends": {"t": {"extra_body": {"api_key": secret}}}}}
    folder = OutputFolder(tmp_path / "out")
    folder.prepare(fingerprint)
    assert secret.encode() not in folder.run_file.read_bytes()
    assert folder.holds_run(fingerprint)
    folder.release()
    OutputFolder(tmp_path / "out").prepare(fingerprint)  # the same run: resumed, not refused


def test_an_output_folder_inside_a_folder_input_is_refused(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    folder = OutputFolder(inputs / "out")
    with pytest.raises(OutputFolderError, match="lies inside the input folder"):
        folder.refuse_as_input(inputs)
