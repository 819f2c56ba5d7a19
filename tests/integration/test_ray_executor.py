"""The Ray executor on a real local Ray (``ray.init(num_cpus=2)``) against a real local server:
its output folder equals the local executor's, a killed worker loses and duplicates nothing, a
rerun skips what either executor committed, and MinHash dedup finds duplicates across workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from stillroom import Pipeline
from stillroom.curate.dedup import Dedup
from stillroom.llm import OpenAIConfig
from stillroom.pipeline.stage import Drop, RowFailure
from stillroom.stages import Complete

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KINDS = ("data", "failed", "dropped")



# -- stages: plain functions, run in the workers ---------------------------------------------------


def shape(row: dict[str, Any]) -> Any:
    """Fails some rows, drops some, splits some in two: every outcome a key can have."""
    i = row["i"]
    if i % 17 == 3:
        raise RowFailure(f"row {i} is unlucky", kind="Unlucky")
    if i % 13 == 5:
        return Drop("thirteen")
    prompt = f"question {i % 40}"  # repeats: the dedup stage has work
    if i % 5 == 0:
        return [{**row, "prompt": prompt, "part": part} for part in (0, 1)]
    return {**row, "prompt": prompt, "part": 0}


def measure(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "length": len(row["completion"])}


def count_and_kill(row: dict[str, Any]) -> dict[str, Any]:
    """Notes each call in a log; the first time row 60 comes, kills its own worker (SIGKILL)."""
    log = Path(row["log"])
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{row['id']}\n")
    marker = log.with_suffix(".killed")
    if row["i"] == 60 and row.get("kill") and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {**row, "double": row["i"] * 2}


class OnlyInThisProcess:
    """Unpickles only in the process that made it: a stand-in for a module or model file that a
    node lacks."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["pid"] != os.getpid():
            raise RuntimeError("the model file is not on this node")
        self.__dict__.update(state)


def stage_needing(guard: OnlyInThisProcess) -> Any:
    def needs_guard(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "pid": guard.pid}

    return needs_guard


# -- helpers ------------------------------------------------------------------------------------------


def read_rows(out: Path) -> dict[str, list[bytes]]:
    """Each kind's rows, canonical and sorted (the order rows arrive in is not part of the output)."""
    found: dict[str, list[bytes]] = {}
    for kind in KINDS:
        rows = []
        for shard in sorted((out / kind).glob("*.parquet")):
            rows += pq.read_table(shard).to_pylist()
        found[kind] = sorted(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in rows)
    return found


def ids_in(out: Path) -> list[str]:
    rows: list[str] = []
    for kind in KINDS:
        for shard in sorted((out / kind).glob("*.parquet")):
            rows += [row["id"] for row in pq.read_table(shard).to_pylist()]
    return rows


def mixed_pipeline(base_url: str) -> Pipeline:
    rows = [{"id": f"r{i}", "i": i} for i in range(120)]
    echo = OpenAIConfig(model="echo", base_url=base_url, concurrency=8, max_retries=1)
    return Pipeline(
        [shape, Complete(backend="echo"), Dedup(method="exact", column="completion"), measure],
        input=rows, backends={"echo": echo}, seed=3,
    )


QUIET = {"progress": False, "diversity_embeddings": False, "flush_rows": 25}


# -- tests --------------------------------------------------------------------------------------------


def test_ray_output_equals_local(local_ray: Any, echo_server: Any, tmp_path: Path) -> None:
    base_url, _ = echo_server()
    local = mixed_pipeline(base_url).run(tmp_path / "local", **QUIET)
    on_ray = mixed_pipeline(base_url).run(tmp_path / "ray", executor="ray", workers=2, **QUIET)
    assert on_ray.counts == local.counts
    # Every kind of outcome happened, so the comparison covers them all.
    assert all(local.counts[kind] > 0 for kind in KINDS), local.counts
    assert read_rows(tmp_path / "ray") == read_rows(tmp_path / "local")
    # The same card and completion marker as a local run.
    assert (tmp_path / "ray" / "README.md").exists()
    assert (tmp_path / "ray" / ".stillroom" / "complete.json").exists()
    # The workers' request counters reach the run's record, and the workers read the request
    # cache the local run filled: nothing was asked twice.
    assert local.backends["echo"]["responses"] > 0
    asked = local.backends["echo"]["responses"] + local.backends["echo"]["cache_hits"]
    assert on_ray.backends["echo"]["cache_hits"] == asked
    assert on_ray.backends["echo"]["responses"] == 0


def test_embedded_model_replicas_on_ray(local_ray: Any, tmp_path: Path) -> None:
    """A local engine under Ray: each worker loads its own llama.cpp model (one replica each)."""
    from stillroom.llm import LlamaCppConfig

    rows = [{"id": f"q{i}", "prompt": f"Name a {thing}."}
            for i, thing in enumerate(["fruit", "colour", "river", "planet", "tree", "bird"])]

    def pipeline() -> Pipeline:
        return Pipeline([Complete(backend="tiny", max_tokens=8, temperature=0.0)], input=rows,
                        backends={"tiny": LlamaCppConfig()})

    local = pipeline().run(tmp_path / "local", use_cache=False, **QUIET)
    on_ray = pipeline().run(tmp_path / "ray", use_cache=False, executor="ray", workers=2, **QUIET)
    assert on_ray.counts == local.counts == {"data": 6, "failed": 0, "dropped": 0}
    assert on_ray.backends["tiny"]["responses"] == 6  # answered by the workers' models
    assert read_rows(tmp_path / "ray") == read_rows(tmp_path / "local")


def test_killed_worker_loses_and_duplicates_nothing(local_ray: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"

    def pipeline(kill: bool) -> Pipeline:
        rows = [{"id": f"r{i}", "i": i, "log": str(log), "kill": kill} for i in range(200)]
        return Pipeline([count_and_kill], input=rows)

    result = pipeline(kill=True).run(tmp_path / "ray", executor="ray", workers=2, **QUIET)
    assert log.with_suffix(".killed").exists(), "the worker was never killed: the test tested nothing"
    assert result.counts == {"data": 200, "failed": 0, "dropped": 0}
    ids = ids_in(tmp_path / "ray")
    assert sorted(ids) == sorted(f"r{i}" for i in range(200))  # none lost, none twice
    # Row 60's batch ran again on the restarted worker.
    assert log.read_text().split().count("r60") >= 2
    local = pipeline(kill=True).run(tmp_path / "local", **QUIET)  # marker exists: no kill here
    assert read_rows(tmp_path / "ray") == read_rows(tmp_path / "local")
    assert local.counts == result.counts


def test_rerun_skips_committed_keys_across_executors(
    local_ray: Any, echo_server: Any, tmp_path: Path
) -> None:
    base_url, requests_log = echo_server()
    rows = [{"id": f"r{i}", "prompt": f"say {i}"} for i in range(90)]
    echo = OpenAIConfig(model="echo", base_url=base_url, concurrency=4, max_retries=1)

    def pipeline() -> Pipeline:
        return Pipeline([Complete(backend="echo")], input=rows, backends={"echo": echo})

    out = tmp_path / "out"
    pipeline().run(out, **{**QUIET, "flush_rows": 30})
    # Make it look interrupted after its first commit: later commits' shards become debris.
    commits = (out / ".stillroom" / "commits.jsonl").read_bytes().splitlines(keepends=True)
    assert len(commits) >= 3
    (out / ".stillroom" / "commits.jsonl").write_bytes(commits[0])
    (out / ".stillroom" / "complete.json").unlink()
    first = orjson.loads(commits[0])
    committed = set(first["keys"])
    sent_before = len(requests_log.read_text().splitlines())

    result = pipeline().run(out, executor="ray", workers=2, use_cache=False, **QUIET)
    assert result.counts["data"] == 90
    assert [session["executor"] for session in result.summary["sessions"]] == ["local", "ray"]
    assert sorted(ids_in(out)) == sorted(f"r{i}" for i in range(90))
    # Only the keys the first commit did not hold were asked again (no cache: every one is sent).
    sent_again = len(requests_log.read_text().splitlines()) - sent_before
    assert sent_again == 90 - len(committed)


def test_a_worker_that_cannot_start_is_a_clear_error(local_ray: Any, tmp_path: Path) -> None:
    from stillroom.errors import WorkerError

    pipeline = Pipeline([stage_needing(OnlyInThisProcess())],
                        input=[{"id": f"r{i}"} for i in range(10)])
    with pytest.raises(WorkerError, match="RuntimeError: the model file is not on this node"):
        pipeline.run(tmp_path / "out", executor="ray", workers=1, **QUIET)
    assert not (tmp_path / "out" / ".stillroom" / "complete.json").exists()


def test_minhash_dedup_clusters_span_workers(local_ray: Any) -> None:
    from stillroom.pipeline.ray_executor import RayParallelMap

    near = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    texts = [" ".join(f"w{i}x{j}" for j in range(12)) for i in range(30)]  # unrelated texts
    # Near-duplicates placed far apart: in different batches, so on different workers.
    texts[2] = near
    texts[27] = near.replace("today", "now")
    texts[14] = near
    batches = [texts[start : start + 4] for start in range(0, len(texts), 4)]
    stage = Dedup(method="minhash", threshold=0.7)
    here = stage.find_clusters(batches, lambda: None)
    spread = stage.find_clusters(batches, lambda: None, RayParallelMap(4))
    assert here.keeper.tolist() == spread.keeper.tolist()
    assert spread.keeper[14] == 2 and spread.keeper[27] == 2  # across batches 0, 3 and 6
    assert int(spread.kept.sum()) == 28


def test_cli_complete_and_dedup_on_ray(echo_server: Any, tmp_path: Path) -> None:
    """The flag on the one-stage verbs, with a Ray the command starts and stops itself."""
    base_url, _ = echo_server()
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(orjson.dumps({"id": f"p{i}", "prompt": f"item {i % 7}"}).decode() + "\n"
                            for i in range(40)))
    stillroom = [str(Path(sys.executable).with_name("stillroom"))]

    def run(*args: str) -> None:
        done = subprocess.run([*stillroom, *args, "--no-progress"], capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]

    for executor in ("local", "ray"):
        extra = ["--executor", "ray", "--workers", "2"] if executor == "ray" else []
        run("complete", str(data), "-o", str(tmp_path / f"complete-{executor}"),
            "--base-url", base_url, "--model", "echo", "--no-embeddings", "--no-cache", *extra)
        # Both dedups read the same folder: the order of a completed folder's rows is the order
        # answers arrived, and which of two duplicates is kept follows the input's order.
        run("dedup", str(tmp_path / "complete-local" / "data"), "-o",
            str(tmp_path / f"dedup-{executor}"), "--method", "minhash", "--column", "completion",
            "--threshold", "0.5", *extra)
    assert read_rows(tmp_path / "complete-ray") == read_rows(tmp_path / "complete-local")
    assert read_rows(tmp_path / "dedup-ray") == read_rows(tmp_path / "dedup-local")
    assert len(read_rows(tmp_path / "dedup-ray")["data"]) == 7


def test_ray_options_need_the_ray_executor(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"prompt": "hi"}\n')
    done = subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), "complete", str(tmp_path / "x.jsonl"), "-o",
         str(tmp_path / "out"), "--workers", "2"], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "workers" in done.stderr and "ray" in done.stderr
