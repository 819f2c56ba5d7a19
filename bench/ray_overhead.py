#!/usr/bin/env python
"""Local executor vs Ray executor on the same pipeline, on this machine: what Ray costs.

How to run (from the repository root, with the repo's .venv; Ray is in the dev extra):

    python bench/ray_overhead.py                       # both workloads, 2 repeats
    python bench/ray_overhead.py --rows 20000 --skip-embedded

The baseline is the local executor, measured in the same run on the same input. Two workloads:

* **server**: ``--rows`` prompts (and ``--small-rows``, to tell Ray's fixed cost from its cost
  per row), one ``complete`` stage, against stillroom's echo server (``--latency-ms`` per answer,
  ``--concurrency`` requests in flight in all, split between the Ray workers), no request cache. The work is waiting, so what shows is the executor's own cost: Ray's start,
  moving rows to workers and back, the actors' start. ``ray (cold)`` is what a user sees:
  ``executor="ray"`` starts a local Ray and stops it. ``ray (warm)`` runs in a Ray already up (a
  cluster), which leaves the per-row cost.
* **embedded**: ``--embedded-rows`` prompts to the embedded SmolLM2-135M (llama.cpp) with
  ``--max-tokens``: local is one model using both cores; Ray is two workers, each its own model
  replica with one core (Ray sets OMP_NUM_THREADS for each worker, which the llama.cpp backend
  follows): the data-parallel replicas a GPU cluster would have, on CPU.

Each configuration is run ``--repeats`` times into a fresh output folder; the best wall time
counts (the machine is shared and noisy). Rows are checked equal between the executors.
Writes bench/results/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from servers import echo_command, free_port, running  # noqa: E402

from stillroom import Pipeline  # noqa: E402
from stillroom.llm import LlamaCppConfig, OpenAIConfig  # noqa: E402
from stillroom.stages import Complete  # noqa: E402

QUIET = {"progress": False, "diversity_embeddings": False, "use_cache": False}


def timed(pipeline: Pipeline, out: Path, **options: Any) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    result = pipeline.run(out, overwrite=True, **QUIET, **options)
    return time.perf_counter() - started, result.counts


def read_sorted(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    rows: list[str] = []
    for shard in sorted((out / "data").glob("*.parquet")):
        rows += [json.dumps(row, sort_keys=True) for row in pq.read_table(shard).to_pylist()]
    return sorted(rows)


def measure(name: str, make: Any, work: Path, repeats: int, workers: int) -> dict[str, Any]:
    """Best-of-``repeats`` wall time of local, cold Ray and warm Ray on one workload."""
    import ray

    walls: dict[str, list[float]] = {"local": [], "ray_cold": [], "ray_warm": []}
    counts: dict[str, Any] = {}
    for repeat in range(repeats):
        wall, counts["local"] = timed(make(1), work / f"{name}-local")
        walls["local"].append(wall)
        wall, counts["ray_cold"] = timed(make(workers), work / f"{name}-ray-cold", executor="ray",
                                         workers=workers)
        walls["ray_cold"].append(wall)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"),
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "src")}})
        try:
            wall, counts["ray_warm"] = timed(make(workers), work / f"{name}-ray-warm", executor="ray",
                                             workers=workers)
        finally:
            ray.shutdown()
        walls["ray_warm"].append(wall)
        print(f"  {name} repeat {repeat + 1}: " + ", ".join(
            f"{key} {values[-1]:.2f} s" for key, values in walls.items()), flush=True)
    same = read_sorted(work / f"{name}-local") == read_sorted(work / f"{name}-ray-cold") \
        == read_sorted(work / f"{name}-ray-warm")
    best = {key: min(values) for key, values in walls.items()}
    return {"walls_s": walls, "best_s": best, "counts": counts, "rows_equal": same,
            "ratio_cold": best["ray_cold"] / best["local"],
            "ratio_warm": best["ray_warm"] / best["local"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--small-rows", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--embedded-rows", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_overhead.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stillroom-ray-bench-"))
    results: dict[str, Any] = {}
    port = free_port()
    with running(echo_command(port, args.latency_ms), port, work / "echo.log"):
        def server_pipeline(rows: int) -> Any:
            prompts = [{"id": f"p{i}", "prompt": f"question number {i}"} for i in range(rows)]

            def make(processes: int) -> Pipeline:
                # The same requests in flight in all: split between the Ray workers.
                echo = OpenAIConfig(model="echo", base_url=f"http://127.0.0.1:{port}/v1",
                                    concurrency=max(1, args.concurrency // processes))
                return Pipeline([Complete(backend="echo")], input=prompts, backends={"echo": echo})

            return make

        for name, rows in (("server_small", args.small_rows), ("server", args.rows)):
            print(f"{name}: {rows} rows, {args.latency_ms:g} ms per answer, "
                  f"{args.concurrency} requests in flight in all", flush=True)
            results[name] = measure(name, server_pipeline(rows), work, args.repeats, args.workers)

    if not args.skip_embedded:
        questions = [{"id": f"q{i}", "prompt": f"Name a fruit that is {color}."}
                     for i, color in enumerate(["red", "green", "yellow", "orange", "purple",
                                                "blue", "brown", "pink"] * (args.embedded_rows // 8))]

        def embedded_pipeline(processes: int) -> Pipeline:
            return Pipeline(
                [Complete(backend="embedded", max_tokens=args.max_tokens, temperature=0.0)],
                input=questions, backends={"embedded": LlamaCppConfig()},
            )

        print(f"embedded: {len(questions)} rows, {args.max_tokens} tokens each", flush=True)
        results["embedded"] = measure("embedded", embedded_pipeline, work, args.repeats,
                                      args.workers)

    print()
    print(f"{'workload':10} {'local s':>9} {'ray cold s':>11} {'ray warm s':>11} "
          f"{'cold/local':>11} {'warm/local':>11} {'rows equal':>11}")
    for name, figures in results.items():
        if "best_s" not in figures:
            continue
        best = figures["best_s"]
        print(f"{name:10} {best['local']:9.2f} {best['ray_cold']:11.2f} {best['ray_warm']:11.2f} "
              f"{figures['ratio_cold']:11.2f} {figures['ratio_warm']:11.2f} "
              f"{str(figures['rows_equal']):>11}")
    # Ray's cost as a fixed part (the small run's extra time) and a per-row part (what the
    # large run adds beyond it).
    small, large = results["server_small"]["best_s"], results["server"]["best_s"]
    fixed_warm = small["ray_warm"] - small["local"]
    fixed_cold = small["ray_cold"] - small["local"]
    per_row_ms = ((large["ray_warm"] - large["local"]) - fixed_warm) / (
        args.rows - args.small_rows) * 1000
    results["overhead"] = {"fixed_s_warm": fixed_warm, "fixed_s_cold": fixed_cold,
                           "per_row_ms": per_row_ms}
    print(f"Ray's cost: {fixed_cold:.1f} s fixed when it starts a local Ray, {fixed_warm:.1f} s "
          f"in a running Ray, then {per_row_ms:.2f} ms per row")
    record = {"config": {**vars(args), "out": str(args.out), "cpus": os.cpu_count(),
                         "load_average_at_end": os.getloadavg(),
                         "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {args.out}")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
