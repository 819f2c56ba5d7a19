"""The Ray executor closes the stages its workers ran: each worker calls ``aclose`` of its
stages on its own event loop when Ray Data lets the actor go, on a real local Ray."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from stillroom import Pipeline
from stillroom.pipeline.stage import Row, RowStage, StageContext

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]



class MarksClose(RowStage):
    """Writes a file in ``folder`` when closed: which process, which thread, how many rows it
    saw in that process (a worker's copy of the stage is closed where it ran)."""

    type: Literal["marks_close"] = "marks_close"
    folder: str
    _seen: int = 0

    async def process(self, row: Row, ctx: StageContext) -> Row:
        self._seen += 1
        return {**row, "pid": os.getpid()}

    async def aclose(self) -> None:
        marker = Path(self.folder) / f"closed-{os.getpid()}-{threading.current_thread().name}"
        marker.write_text(str(self._seen))


def test_each_worker_closes_its_stages_on_its_loop(local_ray: Any, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}"} for i in range(6)]
    result = Pipeline([MarksClose(folder=str(tmp_path))], input=rows).run(
        tmp_path / "out", executor="ray", workers=1, progress=False, diversity_embeddings=False)
    worker = {row["pid"] for row in result.dataset.to_list()}
    assert len(result.dataset) == 6 and os.getpid() not in worker  # the rows ran in the worker
    [pid] = worker
    marker = tmp_path / f"closed-{pid}-stillroom-worker"
    deadline = time.monotonic() + 60  # the actor is let go as its segment's dataset ends
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), sorted(path.name for path in tmp_path.iterdir())
    assert marker.read_text() == "6"  # closed after its rows, on the worker's loop
    # The driver closes its own copy too (no rows ran there).
    assert (tmp_path / f"closed-{os.getpid()}-MainThread").read_text() == "0"
