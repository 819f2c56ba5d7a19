"""The local executor with a scripted backend: routing of rows, failures, drops, resume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import pytest

from stillroom import AllRowsStage, Drop, Dropped, Failed, Pipeline, RowFailure
from stillroom.data.output import OutputFolder
from stillroom.errors import InputError, OutputFolderError
from stillroom.llm.types import BackendError
from stillroom.pipeline.stage import Row, StageContext
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows


@pytest.fixture(autouse=True)
def fresh_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend()
    fakes.CURRENT["default"] = backend
    return backend


def read(out: Path, kind: str = "data") -> list[dict[str, Any]]:
    return OutputFolder(out).read_rows(kind)


def pipeline(stages: list[Any], data: Any, **kwargs: Any) -> Pipeline:
    return Pipeline(stages, input=data, backends={"default": ScriptedConfig()}, **kwargs)


def test_every_row_gets_its_own_completion_and_keeps_its_columns(tmp_path: Path) -> None:
    result = pipeline([Complete()], rows(20, extra=1)).run(tmp_path / "out", progress=False)
    data = sorted(read(tmp_path / "out"), key=lambda r: int(r["id"][1:]))
    assert [r["id"] for r in data] == [f"r{i}" for i in range(20)]
    for row in data:
        assert row["completion"] == f"answer to {row['prompt']} #0"
        assert row["extra"] == 1
        assert row["metadata"]["complete"]["model"] == "scripted-model"
    assert result.counts == {"data": 20, "failed": 0, "dropped": 0}
    assert (tmp_path / "out" / "README.md").exists() and (tmp_path / "out" / "report.html").exists()


def test_n_samples_are_distinct_requests_and_land_in_completions(tmp_path: Path, fresh_backend: ScriptedBackend) -> None:
    pipeline([Complete(n=3, temperature=0.7)], rows(4)).run(tmp_path / "out", progress=False)
    data = read(tmp_path / "out")
    assert all(r["completions"] == [f"answer to {r['prompt']} #{i}" for i in range(3)] for r in data)
    assert len(fresh_backend.calls) == 12
    seeds = {(c.messages[0]["content"], c.effective_seed()) for c in fresh_backend.calls}
    assert len(seeds) == 12  # each sample its own seed


def test_a_request_failing_after_retries_sends_its_row_to_failed(tmp_path: Path) -> None:
    def script(request: Any, attempt: int) -> str:
        if "p3" in request.messages[-1]["content"]:
            raise fakes.server_error(500)
        return "fine"

    fakes.CURRENT["default"] = ScriptedBackend(script)
    config = ScriptedConfig(max_retries=2)
    result = Pipeline([Complete()], input=rows(6), backends={"default": config}).run(
        tmp_path / "out", progress=False, max_failure_rate=0.5
    )
    failed = read(tmp_path / "out", "failed")
    assert [r["id"] for r in failed] == ["r3"]
    assert failed[0]["attempts"] == 3
    assert failed[0]["stage"] == "complete"
    assert failed[0]["error_type"] == "InternalServerError"
    assert "completion" not in failed[0]
    assert result.counts["data"] == 5 and result.ok
    assert result.failures_by_reason == {"complete: InternalServerError": 1}


def test_failure_rate_above_the_limit_makes_the_result_not_ok(tmp_path: Path) -> None:
    fakes.CURRENT["default"] = ScriptedBackend(lambda r, a: (_ for _ in ()).throw(
        BackendError("bad", kind="BadRequestError", status=400)))
    result = pipeline([Complete()], rows(3)).run(tmp_path / "out", progress=False)
    assert result.counts["failed"] == 3 and not result.ok
    assert all(r["attempts"] == 1 for r in read(tmp_path / "out", "failed"))  # 400 is not retried


def test_an_empty_answer_is_a_failure_never_an_empty_row(tmp_path: Path) -> None:
    fakes.CURRENT["default"] = ScriptedBackend(lambda r, a: "   " if "p1" in r.messages[-1]["content"] else "ok")
    pipeline([Complete()], rows(3)).run(tmp_path / "out", progress=False, max_failure_rate=1.0)
    assert sorted(r["id"] for r in read(tmp_path / "out")) == ["r0", "r2"]
    failed = read(tmp_path / "out", "failed")
    assert failed[0]["error_type"] == "EmptyCompletion"


def test_filters_drop_with_a_reason_and_expansions_keep_every_child(tmp_path: Path) -> None:
    def short_only(row: Row) -> Row | Drop:
        return Drop("too long") if row["id"] in ("r1", "r2") else row

    def twice(row: Row) -> list[Row]:
        return [{**row, "copy": 0}, {**row, "copy": 1}] if row["id"] != "r3" else []

    result = pipeline([short_only, twice], rows(5)).run(tmp_path / "out", progress=False)
    data = read(tmp_path / "out")
    assert sorted((r["id"], r["copy"]) for r in data) == [("r0", 0), ("r0", 1), ("r4", 0), ("r4", 1)]
    dropped = sorted(read(tmp_path / "out", "dropped"), key=lambda r: r["id"])
    assert [(r["id"], r["stage"], r["drop_reason"]) for r in dropped] == [
        ("r1", "short_only", "too long"),
        ("r2", "short_only", "too long"),
        ("r3", "twice", "twice produced no rows"),
    ]
    assert result.drops_by_reason == {"short_only: too long": 2, "twice: twice produced no rows": 1}


def test_a_stage_that_raises_fails_its_row_with_the_exception(tmp_path: Path) -> None:
    def fragile(row: Row) -> Row:
        if row["id"] == "r1":
            raise RowFailure("cannot parse", kind="ParseError")
        if row["id"] == "r2":
            raise KeyError("missing")
        return row

    pipeline([fragile], rows(3)).run(tmp_path / "out", progress=False, max_failure_rate=1.0)
    failed = {r["id"]: r for r in read(tmp_path / "out", "failed")}
    assert failed["r1"]["error_type"] == "ParseError" and failed["r1"]["error"] == "cannot parse"
    assert failed["r2"]["error_type"] == "KeyError"


def test_bad_input_fails_before_any_request(tmp_path: Path, fresh_backend: ScriptedBackend) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"question": "c"}\n')
    with pytest.raises(InputError) as error:
        pipeline([Complete()], str(source)).run(tmp_path / "out", progress=False)
    assert f"{source}:3" in str(error.value) and "prompt" in str(error.value)
    assert fresh_backend.calls == []
    assert not (tmp_path / "out").exists()


def test_a_rerun_resumes_and_a_different_run_is_refused(tmp_path: Path, fresh_backend: ScriptedBackend) -> None:
    out = tmp_path / "out"
    pipeline([Complete()], rows(5)).run(out, progress=False)
    calls = len(fresh_backend.calls)
    pipeline([Complete()], rows(5)).run(out, progress=False)  # nothing left to do
    assert len(fresh_backend.calls) == calls
    assert len(read(out)) == 5
    with pytest.raises(OutputFolderError):
        pipeline([Complete(temperature=0.3)], rows(5)).run(out, progress=False)
    pipeline([Complete(temperature=0.3)], rows(5)).run(out, progress=False, overwrite=True)
    assert len(read(out)) == 5


async def test_an_interrupted_run_commits_what_finished_and_the_rerun_does_the_rest(
    tmp_path: Path,
) -> None:
    import asyncio

    out = tmp_path / "out"
    release = asyncio.Event()

    class Stuck(ScriptedBackend):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            if int(request.messages[-1]["content"][1:]) >= 3:
                await release.wait()  # rows 3.. never answer in the first session
            return await super().generate(request)

    fakes.CURRENT["default"] = Stuck()
    run = asyncio.create_task(pipeline([Complete()], rows(8)).arun(out, progress=False))
    while len(fakes.CURRENT["default"].calls) < 3:  # rows 0-2 answered, 3-7 waiting
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not (out / ".stillroom" / "commits.jsonl").exists()  # nothing due for a commit yet
    run.cancel()  # what Ctrl-C does to the main task
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sorted(r["id"] for r in read(out)) == ["r0", "r1", "r2"]
    assert not (out / "README.md").exists()  # an unfinished run does not look finished
    assert OutputFolder(out).read_sessions()[-1]["status"] == "interrupted"

    again = ScriptedBackend()
    fakes.CURRENT["default"] = again
    result = await pipeline([Complete()], rows(8)).arun(out, progress=False, use_cache=False)
    assert sorted(c.messages[-1]["content"] for c in again.calls) == [f"p{i}" for i in range(3, 8)]
    assert sorted(r["id"] for r in read(out)) == [f"r{i}" for i in range(8)]
    assert result.session_counts == {"data": 5}
    assert (out / "README.md").exists()


def test_same_seed_and_cache_give_the_same_output(tmp_path: Path) -> None:
    for name in ("a", "b"):
        pipeline([Complete(n=2)], rows(6), seed=7).run(tmp_path / name, progress=False)
    def norm(out: Path) -> list[Any]:
        return sorted((r["id"], r["completions"]) for r in read(out))
    assert norm(tmp_path / "a") == norm(tmp_path / "b")


class KeepLongest(AllRowsStage):
    """Test all-rows stage: keeps the row with the longest completion per prompt parity."""

    type: Literal["keep_longest"] = "keep_longest"

    async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Dropped]:  # type: ignore[override]
        for index, row in enumerate(rows):
            if index % 2:
                yield Dropped(row, "odd position")
            else:
                yield {**row, "position": index}


def test_all_rows_stage_sees_input_order_and_checkpoints(tmp_path: Path, fresh_backend: ScriptedBackend) -> None:
    fresh_backend.latency = 0.001
    out = tmp_path / "out"
    p = pipeline([Complete(), KeepLongest(), lambda row: {**row, "after": True}], rows(10))
    result = p.run(out, progress=False)
    data = sorted(read(out), key=lambda r: r["position"])
    assert [r["id"] for r in data] == ["r0", "r2", "r4", "r6", "r8"]
    assert all(r["after"] for r in data)
    assert result.drops_by_reason == {"keep_longest: odd position": 5}
    assert (out / ".stillroom" / "checkpoint-0.jsonl.zst").exists()


def test_rerunning_a_finished_run_with_an_all_rows_stage_changes_nothing(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    # Keys of the rows after an all-rows stage were read lazily, one segment late: the first
    # session wrote `2:i`, a rerun `1:i`, and every row came out twice.
    out = tmp_path / "out"
    p = pipeline([Complete(), KeepLongest(), lambda row: {**row, "after": True}], rows(10))
    p.run(out, progress=False)
    calls = len(fresh_backend.calls)
    keys = [k for r in OutputFolder(out).read_commits() for k in r["keys"]]
    assert sorted(keys) == sorted(f"1:{i}" for i in range(5))
    result = p.run(out, progress=False)
    assert result.counts == {"data": 5, "failed": 0, "dropped": 5}
    assert len(fresh_backend.calls) == calls and result.session_counts == {}


def test_a_run_killed_after_its_all_rows_stage_resumes_without_repeating_rows(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    out = tmp_path / "out"
    stages = [Complete(), KeepLongest(), lambda row: {**row, "after": True}]
    pipeline(stages, rows(10)).run(out, progress=False, flush_rows=1)
    folder = OutputFolder(out)
    # Keep the checkpoint and the first commit of the last segment, as a kill would have.
    lines = folder.commit_log.read_bytes().splitlines()[:2]
    assert b'"1:0"' in lines[1]
    folder.commit_log.write_bytes(b"\n".join(lines) + b"\n")
    (out / ".stillroom" / "complete.json").unlink()
    result = pipeline(stages, rows(10)).run(out, progress=False, flush_rows=1)
    assert sorted(r["id"] for r in read(out)) == ["r0", "r2", "r4", "r6", "r8"]
    assert result.session_counts == {"data": 4}


async def test_a_flush_cancelled_in_the_middle_of_its_commit_finishes_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race that lost rows: the periodic flusher is cancelled as the run ends, possibly in
    # the middle of a commit whose thread goes on writing; the final flush must not start
    # before that commit is done (both picked the same sequence number, so the same shard).
    import asyncio
    import time as clock
    from collections import Counter
    from types import SimpleNamespace

    from stillroom.data import output
    from stillroom.pipeline.executor import Sink

    original = output.write_table_atomically

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        clock.sleep(0.3)  # a slow disk
        return original(*args, **kwargs)

    monkeypatch.setattr(output, "write_table_atomically", slow_write)
    folder = OutputFolder(tmp_path / "out")
    executor = SimpleNamespace(
        folder=folder, state=folder.prepare({"run": 1}), session_counts=Counter(), keys_done=0,
        options=SimpleNamespace(flush_rows=1000, flush_seconds=10.0), stats_record=dict,
    )
    sink = Sink(executor, 0)  # type: ignore[arg-type]
    sink.add("0", [("data", {"a": 0}, (0,))])
    timed = asyncio.create_task(sink.flush())
    await asyncio.sleep(0.1)  # the timed commit is writing now
    timed.cancel()
    sink.add("1", [("data", {"a": 1}, (1,))])
    await sink.flush()  # the final flush
    with pytest.raises(asyncio.CancelledError):
        await timed
    records = folder.read_commits()
    assert [r["keys"] for r in records] == [["0"], ["1"]]
    assert [r["files"]["data"] for r in records] == ["data/part-00000.parquet",
                                                       "data/part-00001.parquet"]
    assert sorted(row["a"] for row in folder.read_rows("data")) == [0, 1]


def test_shards_with_different_columns_are_harmonized(tmp_path: Path) -> None:
    def vary(row: Row) -> Row:
        return {**row, "only_late": "x"} if int(row["id"][1:]) >= 5 else row

    out = tmp_path / "out"
    pipeline([vary], rows(10)).run(out, progress=False, flush_rows=1)
    shards = sorted((out / "data").glob("*.parquet"))
    assert len(shards) > 1
    schemas = {pq.read_schema(s).remove_metadata().to_string() for s in shards}
    assert len(schemas) == 1
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert loaded.num_rows == 10 and "only_late" in loaded.column_names


def test_a_missing_api_key_stops_the_run_before_the_output_folder_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stillroom.errors import ConfigError
    from stillroom.llm.openai_compat import OpenAIConfig

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    remote = OpenAIConfig(model="gpt-x", base_url="https://api.example.com/v1")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Pipeline([Complete(backend="r")], input=rows(2), backends={"r": remote}).run(
            tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_row_stage_may_return_kept_rows_beside_discarded_ones(tmp_path: Path) -> None:
    def try_three(row: Row) -> list[Row | Dropped]:
        return [{**row, "try": 0}, Dropped({**row, "try": 1}, "no gain"), {**row, "try": 2}]

    result = pipeline([try_three], rows(2)).run(tmp_path / "out", progress=False)
    assert sorted((r["id"], r["try"]) for r in read(tmp_path / "out")) == [
        ("r0", 0), ("r0", 2), ("r1", 0), ("r1", 2)
    ]
    dropped = read(tmp_path / "out", "dropped")
    assert sorted((r["id"], r["try"], r["drop_reason"]) for r in dropped) == [
        ("r0", 1, "no gain"), ("r1", 1, "no gain")
    ]
    assert result.counts == {"data": 4, "failed": 0, "dropped": 2}


class FailEveryThird(AllRowsStage):
    type: Literal["fail_every_third"] = "fail_every_third"

    async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:  # type: ignore[override]
        for index, row in enumerate(rows):
            if index % 3 == 0:
                yield Failed(row, RowFailure("could not", kind="Unparseable", attempts=2))
            else:
                yield row


def test_an_all_rows_stage_sends_what_it_could_not_make_to_failed(tmp_path: Path) -> None:
    result = pipeline([FailEveryThird()], rows(6)).run(tmp_path / "out", progress=False)
    failed = sorted(read(tmp_path / "out", "failed"), key=lambda r: r["id"])
    assert [(r["id"], r["error_type"], r["attempts"], r["stage"]) for r in failed] == [
        ("r0", "Unparseable", 2, "fail_every_third"), ("r3", "Unparseable", 2, "fail_every_third")
    ]
    assert result.counts["data"] == 4


def test_rows_input_makes_empty_rows_with_ids(tmp_path: Path) -> None:
    from stillroom.pipeline.config import InputConfig

    result = pipeline([lambda row: {**row, "x": 1}], InputConfig(rows=3)).run(tmp_path / "out", progress=False)
    assert sorted(r["id"] for r in read(tmp_path / "out")) == ["0", "1", "2"]
    assert result.counts["data"] == 3
    with pytest.raises(ValueError, match="exactly one"):
        InputConfig(path="a.jsonl", rows=3)


def test_the_card_appears_only_after_the_run_is_marked_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill between the card and the completion record must not leave a card on a run that
    # is not complete: the record is written first, the card and report renamed in after it.
    out = tmp_path / "out"

    def killed(self: OutputFolder, summary: dict[str, Any]) -> None:
        raise KeyboardInterrupt  # the process dies right here

    monkeypatch.setattr(OutputFolder, "mark_complete", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline([Complete()], rows(5)).run(out, progress=False)
    assert not (out / "README.md").exists() and not (out / "report.html").exists()
    monkeypatch.undo()
    result = pipeline([Complete()], rows(5)).run(out, progress=False)
    assert result.counts["data"] == 5 and (out / "README.md").exists()
    assert not list(out.glob("*.tmp"))


def test_inspect_refuses_a_damaged_folder_in_one_line(tmp_path: Path) -> None:
    from stillroom.api import inspect_output

    out = tmp_path / "out"
    pipeline([Complete()], rows(5)).run(out, progress=False)
    shard = OutputFolder(out).shard_paths("data")[0]
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(OutputFolderError, match=r"part-00000\.parquet has 20 bytes.*again"):
        inspect_output(out)


def test_a_changed_function_stage_is_a_different_run(tmp_path: Path) -> None:
    # A function stage's identity was its name alone: a resume after editing it mixed rows of
    # both versions into one folder marked complete.
    out = tmp_path / "out"

    def shout(row: Row) -> Row:
        return {**row, "prompt": row["prompt"].upper()}

    pipeline([shout, Complete()], rows(3)).run(out, progress=False)

    def shout(row: Row) -> Row:  # noqa: F811 - the same name, other code
        return {**row, "prompt": row["prompt"].lower()}

    with pytest.raises(OutputFolderError, match="different run"):
        pipeline([shout, Complete()], rows(3)).run(out, progress=False)
    assert (pipeline([lambda row: row], rows(1)).identity()
            != pipeline([lambda row: {**row, "x": 1}], rows(1)).identity())


def test_rows_after_an_all_rows_stage_are_the_checkpoint_s_in_every_session(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    # The first session used its rows in memory, a resumed one read them back from a Parquet
    # checkpoint (with None for every column a row lacked, mixed types as JSON text): different
    # rows, so different requests, and answers paid for were asked again. Now both sessions
    # read the checkpoint, which keeps rows exactly.
    seen: list[Row] = []

    def after(row: Row) -> Row:
        seen.append(dict(row))
        return row

    data = [{"id": "a", "prompt": "p", "only_a": 1}, {"id": "b", "prompt": "q"},
            {"id": "c", "prompt": "r", "info": {"v": [{"type": "text", "text": "x"}]}},
            {"id": "d", "prompt": "s"}, {"id": "e", "prompt": "t", "info": {"v": "plain"}}]
    out = tmp_path / "out"
    stages = [Complete(), KeepLongest(), after]
    pipeline(stages, data).run(out, progress=False)
    first = sorted(seen, key=lambda row: row["id"])
    folder = OutputFolder(out)
    lines = folder.commit_log.read_bytes().splitlines()[:1]  # killed right after the checkpoint
    folder.commit_log.write_bytes(b"\n".join(lines) + b"\n")
    (out / ".stillroom" / "complete.json").unlink()
    seen.clear()
    pipeline(stages, data).run(out, progress=False)
    assert sorted(seen, key=lambda row: row["id"]) == first
    assert "only_a" not in first[1] and first[2]["info"] == {"v": "plain"}


def test_a_run_abort_inside_an_all_rows_stage_stops_the_run(tmp_path: Path) -> None:
    # An all-rows stage that turns every exception into Failed rows must not turn a damaged
    # cache into failed rows (and go on paying for answers it cannot keep).
    from stillroom.errors import CacheError

    class Breaks(AllRowsStage):
        type: Literal["breaks"] = "breaks"

        async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Failed]:  # type: ignore[override]
            for row in rows:
                yield Failed(row, CacheError("the request cache x is damaged"))

    with pytest.raises(CacheError):
        pipeline([Complete(), Breaks()], rows(3)).run(tmp_path / "out", progress=False)
    assert OutputFolder(tmp_path / "out").count("failed") == 0
