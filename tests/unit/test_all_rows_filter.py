"""All-rows filters streamed by the executor: an index over the rows, then a decision per row,
committed in chunks; resumed runs decide again and write each row once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.errors import CacheError, RunAbort
from stillroom.pipeline import segments
from stillroom.pipeline.stage import (
    AllRowsFilter,
    Dropped,
    Failed,
    Row,
    RowFailure,
    Rows,
    StageContext,
)


class Decisions:
    def __init__(self, stage: KeepEven, figures: dict[str, Any] | None):
        self.stage = stage
        self.figures = figures

    def decide(self, position: int, row: Row) -> Row | Dropped | Failed:
        self.stage.decided.append(position)
        if KeepEven.stop_at == position:
            raise KeyboardInterrupt
        if self.stage.bug_at == position:
            raise ZeroDivisionError("a bug in decide")
        if self.stage.abort_at == position:
            return Failed(row, CacheError("the cache is damaged"))
        if row["n"] < 0:
            return Failed(row, RowFailure("negative", kind="Negative"))
        if row["n"] % 2:
            return Dropped(row, "odd")
        return {**row, "kept_by": "keep_even"}


class KeepEven(AllRowsFilter):
    """Keeps rows whose ``n`` is even; records how it was called."""

    type: Literal["keep_even"] = "keep_even"
    abort_at: int | None = None
    bug_at: int | None = None
    measure: bool = True
    seen: ClassVar[list[str]] = []
    decided: ClassVar[list[int]] = []
    passes: ClassVar[int] = 0
    stop_at: ClassVar[int | None] = None  # a Ctrl-C while deciding this row (not an option)

    async def index(self, rows: Rows, ctx: StageContext) -> Decisions:
        assert isinstance(rows, Rows) and not isinstance(rows, list)
        type(self).seen.append(type(rows).__name__)
        count = sum(1 for _ in rows)
        type(self).passes += 1
        assert count == len(rows)
        evens = sum(1 for row in rows if row["n"] >= 0 and row["n"] % 2 == 0)
        figures = {"rows": count, "kept": evens} if self.measure else None
        return Decisions(self, figures)

    def summary_columns(self) -> list[str]:
        return ["kept_by"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        return {"summarized": sum(1 for row in rows if row.get("kept_by"))}


@pytest.fixture(autouse=True)
def reset() -> None:
    KeepEven.seen.clear()
    KeepEven.decided.clear()
    KeepEven.passes = 0
    KeepEven.stop_at = None


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(segments, "ROWS_PER_CHUNK", 4)
    return 4


def write_input(path: Path, values: list[int]) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "n": n}) + "\n" for i, n in enumerate(values)))
    return path


def ids(out: Path, kind: str) -> list[str]:
    return sorted(row["id"] for row in OutputFolder(out).read_rows(kind))


def commits(out: Path) -> list[dict[str, Any]]:
    return OutputFolder(out).read_commits()


def test_a_first_filter_streams_the_input_file_in_chunks(tmp_path: Path, small_chunks: int) -> None:
    source = write_input(tmp_path / "in.jsonl", list(range(10)))
    result = Pipeline([KeepEven()], input=source).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 5, "failed": 0, "dropped": 5}
    assert ids(tmp_path / "out", "data") == sorted(f"r{i}" for i in range(0, 10, 2))
    assert {row["drop_reason"] for row in OutputFolder(tmp_path / "out").read_rows("dropped")} == {"odd"}
    # The stage got Rows read from the file, never a list; one commit per chunk of 4 rows.
    assert KeepEven.seen == ["Rows"] and KeepEven.decided == list(range(10))
    assert [record["keys"] for record in commits(tmp_path / "out")] == [["c0"], ["c1"], ["c2"]]
    assert not any(record.get("checkpoint") for record in commits(tmp_path / "out"))
    # Its figures are the ones it measured, not read back from the rows.
    assert result.summary["stage_results"]["keep_even"] == {"rows": 10, "kept": 5}


def test_an_interrupted_filter_resumes_at_the_first_chunk_not_committed(
    tmp_path: Path, small_chunks: int
) -> None:
    source = write_input(tmp_path / "in.jsonl", list(range(10)))
    out = tmp_path / "out"
    KeepEven.stop_at = 9  # Ctrl-C in the middle of the third chunk
    with pytest.raises(KeyboardInterrupt):
        Pipeline([KeepEven()], input=source).run(out, progress=False)
    assert [record["keys"] for record in commits(out)] == [["c0"], ["c1"]]
    assert not OutputFolder(out).is_complete()
    assert sorted(ids(out, "data") + ids(out, "dropped")) == sorted(f"r{i}" for i in range(8))

    KeepEven.stop_at = None
    KeepEven.decided.clear()
    result = Pipeline([KeepEven()], input=source).run(out, progress=False)
    assert KeepEven.passes == 2  # the index is built again in the resumed session
    assert KeepEven.decided == [8, 9]  # committed chunks are not decided again
    assert result.counts == {"data": 5, "failed": 0, "dropped": 5}
    assert sorted(ids(out, "data") + ids(out, "dropped")) == sorted(f"r{i}" for i in range(10))
    assert OutputFolder(out).is_complete()


def test_a_kill_between_chunks_loses_and_doubles_nothing(tmp_path: Path, small_chunks: int) -> None:
    """Ctrl-C at the first row of a chunk, right after the previous chunk's commit."""
    source = write_input(tmp_path / "in.jsonl", list(range(12)))
    out = tmp_path / "out"
    KeepEven.stop_at = 8
    with pytest.raises(KeyboardInterrupt):
        Pipeline([KeepEven()], input=source).run(out, progress=False)
    KeepEven.stop_at = None
    Pipeline([KeepEven()], input=source).run(out, progress=False)
    every = ids(out, "data") + ids(out, "dropped")
    assert sorted(every) == sorted(f"r{i}" for i in range(12)) and len(every) == 12


def test_a_filter_before_row_stages_keys_each_row(tmp_path: Path, small_chunks: int) -> None:
    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, -3, 4])
    seen: list[str] = []

    def mark(row: Row) -> Row:
        seen.append(row["id"])
        return {**row, "marked": True}

    result = Pipeline([KeepEven(), mark], input=source).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 3, "failed": 1, "dropped": 1}
    assert sorted(seen) == ["r0", "r2", "r4"]  # the row stage sees only what the filter kept
    keys = sorted(key for record in commits(tmp_path / "out") for key in record["keys"])
    assert keys == ["0", "1", "2", "3", "4"]  # one key per row, drops and failures included
    failed = OutputFolder(tmp_path / "out").read_rows("failed")
    assert failed[0]["error"] == "negative" and failed[0]["stage"] == "keep_even"
    # A rerun changes nothing and asks the row stage for nothing.
    seen.clear()
    again = Pipeline([KeepEven(), mark], input=source).run(tmp_path / "out", progress=False)
    assert seen == [] and again.counts == result.counts


def test_a_filter_after_a_row_stage_gathers_and_checkpoints(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, 3])

    def double(row: Row) -> Row:
        return {**row, "n": row["n"] * 3}

    result = Pipeline([double, KeepEven()], input=source).run(tmp_path / "out", progress=False)
    assert ids(tmp_path / "out", "data") == ["r0", "r2"]
    assert any(record.get("checkpoint") for record in commits(tmp_path / "out"))
    assert result.summary["stage_results"]["keep_even"] == {"rows": 4, "kept": 2}


def test_without_measured_figures_the_stage_summarizes_its_rows(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, 3, 4])
    result = Pipeline([KeepEven(measure=False)], input=source).run(tmp_path / "out", progress=False)
    assert result.summary["stage_results"]["keep_even"] == {"summarized": 3}


def test_a_run_abort_from_a_decision_stops_the_run(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, 3])
    with pytest.raises(CacheError):
        Pipeline([KeepEven(abort_at=2)], input=source).run(tmp_path / "out", progress=False)
    assert isinstance(CacheError("x"), RunAbort)
    assert not OutputFolder(tmp_path / "out").is_complete()


def test_the_general_run_of_a_filter_is_its_two_passes() -> None:
    import asyncio

    rows = [{"id": "a", "n": 2}, {"id": "b", "n": 1}]

    async def collect() -> list[Any]:
        ctx = StageContext("keep_even", 0)
        return [item async for item in KeepEven().run(Rows.of(rows), ctx)]

    out = asyncio.run(collect())
    assert out[0] == {"id": "a", "n": 2, "kept_by": "keep_even"}
    assert isinstance(out[1], Dropped) and out[1].reason == "odd"


@pytest.mark.parametrize("then_row_stage", [False, True])
def test_a_bug_in_decide_fails_its_row_not_the_run(tmp_path: Path, then_row_stage: bool) -> None:
    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, 4])
    stages: list[Any] = [KeepEven(bug_at=2)] + ([lambda row: row] if then_row_stage else [])
    result = Pipeline(stages, input=source).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 2, "failed": 1, "dropped": 1}
    failed = OutputFolder(tmp_path / "out").read_rows("failed")
    assert failed[0]["id"] == "r2" and failed[0]["error"] == "a bug in decide"
    assert failed[0]["error_type"] == "ZeroDivisionError"


def test_an_input_changed_while_indexed_is_found_before_any_decision_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stillroom.errors import InputError

    source = write_input(tmp_path / "in.jsonl", [0, 1, 2, 3])
    index = KeepEven.index

    async def index_then_append(self: KeepEven, rows: Rows, ctx: StageContext) -> Decisions:
        decisions = await index(self, rows, ctx)
        with source.open("a") as handle:
            handle.write(json.dumps({"id": "late", "n": 8}) + "\n")
        return decisions

    monkeypatch.setattr(KeepEven, "index", index_then_append)
    with pytest.raises(InputError, match="changed while the run read it"):
        Pipeline([KeepEven()], input=source).run(tmp_path / "out", progress=False)
    assert commits(tmp_path / "out") == [] and KeepEven.decided == []


def test_a_folder_of_an_older_run_format_says_so(tmp_path: Path) -> None:
    from stillroom.errors import OutputFolderError

    source = write_input(tmp_path / "in.jsonl", [0, 1])
    Pipeline([KeepEven()], input=source).run(tmp_path / "out", progress=False)
    run_file = tmp_path / "out" / ".stillroom" / "run.json"
    record = json.loads(run_file.read_text())
    record["fingerprint"]["version"] = 1
    record.pop("digest", None)
    run_file.write_text(json.dumps(record))
    with pytest.raises(OutputFolderError, match="another stillroom version .*run format 1, now 2"):
        Pipeline([KeepEven()], input=source).run(tmp_path / "out", progress=False)
