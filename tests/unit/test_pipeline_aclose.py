"""Stages that hold resources (a tool server, a subprocess) are closed when a run ends, however
it ends, once each, on the loop they ran on; one failing close does not keep the others open."""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from stillroom import AllRowsStage, Pipeline
from stillroom.errors import CacheError
from stillroom.pipeline.stage import Failed, Row, RowStage, StageContext
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows

# (stage name, the thread its aclose ran on): module-level so that a copy of a stage unpickled
# in a Ray worker records here too.
CLOSED: list[tuple[str, str]] = []


class Holds(RowStage):
    """A row stage that "opens" something on its first row and records its close."""

    type: Literal["holds"] = "holds"
    fail_close: bool = False
    wait_for: str | None = None  # a row id whose processing never ends (to interrupt the run)

    async def process(self, row: Row, ctx: StageContext) -> Row:
        if self.wait_for is not None and row["id"] == self.wait_for:
            await asyncio.Event().wait()
        return {**row, f"seen_{self.name}": True}

    async def aclose(self) -> None:
        asyncio.get_running_loop()  # called on a running loop, never synchronously
        CLOSED.append((str(self.name), threading.current_thread().name))
        if self.fail_close:
            raise RuntimeError("the server would not stop (token sk-abcdefghijklmnopqrstuvwx)")


class Aborts(AllRowsStage):
    type: Literal["aborts"] = "aborts"

    async def run(self, rows: Any, ctx: StageContext) -> AsyncIterator[Row | Failed]:  # type: ignore[override]
        for row in rows:
            yield Failed(row, CacheError("the request cache x is damaged"))


@pytest.fixture(autouse=True)
def fresh() -> None:
    CLOSED.clear()
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend()


def pipeline(stages: list[Any], count: int = 4) -> Pipeline:
    return Pipeline(stages, input=rows(count), backends={"default": ScriptedConfig()})


def names() -> list[str]:
    return sorted(name for name, _ in CLOSED)


def test_every_stage_is_closed_once_after_a_complete_run(tmp_path: Path) -> None:
    result = pipeline([Holds(name="a"), Complete(), Holds(name="b")]).run(
        tmp_path / "out", progress=False)
    assert result.counts["data"] == 4
    assert names() == ["a", "b"]


def test_a_failing_close_is_logged_and_does_not_keep_the_others_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        result = pipeline([Holds(name="a", fail_close=True), Holds(name="b")]).run(
            tmp_path / "out", progress=False)
    assert result.counts["data"] == 4  # the run's outcome is not replaced by a closing error
    assert names() == ["a", "b"]
    message = next(r.getMessage() for r in caplog.records if "closing stage" in r.getMessage())
    assert "'a'" in message and "the server would not stop" in message
    assert "sk-abcdefghijklmnopqrstuvwx" not in message  # the reason is redacted


def test_stages_are_closed_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(CacheError):
        pipeline([Holds(name="a"), Aborts(), Holds(name="b")]).run(tmp_path / "out", progress=False)
    assert names() == ["a", "b"]


async def test_stages_are_closed_when_the_run_is_interrupted(tmp_path: Path) -> None:
    run = asyncio.create_task(
        pipeline([Holds(name="a", wait_for="r2"), Holds(name="b")]).arun(
            tmp_path / "out", progress=False))
    await asyncio.sleep(0.3)
    assert CLOSED == []  # still running: row r2 never ends
    run.cancel()  # what Ctrl-C does to the main task
    with pytest.raises(asyncio.CancelledError):
        await run
    assert names() == ["a", "b"]


def test_a_ray_worker_closes_its_stages_on_its_own_loop_when_deleted() -> None:
    """Ray Data deletes an actor's UDF on a graceful shutdown; the worker then closes the stages
    it ran, on the loop they ran on (tool sets are per loop). Run in this process, without Ray."""
    from stillroom.pipeline.ray_executor import SegmentWorker, WorkerSpec, pickle_spec

    built = pipeline([Holds(name="a"), Complete(), Holds(name="b")])
    worker = SegmentWorker(pickle_spec(WorkerSpec(built, 0, False, "/tmp/unused-cache", 4)))
    out = worker({"key": ["k0"], "order": [0], "row": [pickle.dumps({"id": "r0", "prompt": "p0"})]})
    [[(kind, row, _)]] = [pickle.loads(blob) for blob in out["outcomes"]]
    assert kind == "data" and row["seen_a"] and row["seen_b"]
    assert CLOSED == []
    loop = worker.loop
    del worker  # what Ray Data's __ray_shutdown__ does to the UDF
    assert names() == ["a", "b"]
    assert {thread for _, thread in CLOSED} == {"stillroom-worker"}
    for _ in range(100):  # the loop is stopped after the close
        if not loop.is_running():
            break
        threading.Event().wait(0.01)
    assert not loop.is_running()
