#!/usr/bin/env python
"""Client overhead: wall time and CPU per request of stillroom and other LLM clients against a
local OpenAI-compatible server that answers every request after a fixed latency.

How to run (from the repository root; any Python >= 3.10 works, the repo's .venv is simplest):

    python bench/client_overhead.py [--requests 3000 --concurrency 64 --latency-ms 100
                                     --tools stillroom,aiohttp,...] [--repeats 3]
                                    [--baseline-requests 10] [--quiet-wait 60] [--port 0] [--keep]

Tools (default: all, in this order):

    stillroom           `stillroom complete` CLI, request cache on (fresh cache dir), --no-progress
    stillroom-progress  the same with the progress bar on: run under `script` so that rich sees a
                        terminal (else it disables itself)
    stillroom-nocache   the CLI with --no-cache
    stillroom-api       in-process `stillroom.api.complete` (cache on): imports and a 10-row warm-up
                        run first, then only the measured run is timed, inside the process
    stillroom-api-nocache  the same with the request cache off
    stillroom-api-sdk   stillroom-api with the backend's `client: sdk` (the openai SDK instead of
                        stillroom's own aiohttp hot path; cache on)
    openai              a plain openai-SDK loop: AsyncOpenAI + asyncio.Semaphore(concurrency)
    aiohttp             a bare aiohttp loop: one ClientSession + asyncio.Semaphore(concurrency)
    curator             bespokelabs-curator, OpenAI online backend at the local base_url
    distilabel          distilabel 1.5.3, TextGeneration + OpenAILLM, input_batch_size=concurrency
    distilabel-replicas (only when named) the same step as 2 replicas of input_batch_size
                        concurrency/2: still at most `concurrency` in flight, batches overlap

stillroom runs as a user runs it, with its own default for the end-of-run embedding diversity
measure: on a run under a minute (every run here) it is skipped, since loading the sentence model
alone costs more than such a run (before that default, it took 18.4 s instead of 5.9 s here).
--no-embeddings passes --no-embeddings (the API runners: diversity_embeddings=False).

Groups: `stillroom-all` (the six stillroom variants), `others` (the rest), `all`.

Each tool runs in its own virtual environment under bench/.venvs/ (made on first use, reused
after; stillroom uses the repo's .venv when there is one), as a child process of this script, so
its wall time and CPU time (user + sys of the child and everything it waited for, from
getrusage(RUSAGE_CHILDREN) deltas) can be measured. Each tool first makes one untimed warm-up
run; then, in each of --repeats rounds (3; medians reported), every tool in turn runs once on
--baseline-requests rows (10) to measure its fixed cost (interpreter start, imports, set-up) and
once on --requests rows. Rounds rather than all of one tool's runs in a row: this shared 2-core
VM's speed drifts by tens of percent over minutes, and rounds spread that over all tools. Before
each measured run the script waits (up to --quiet-wait s) for other processes to leave the CPUs
idle, and it reports the CPU others used during each run anyway ("others' CPU s"). CPU per request
"excluding start-up" is (CPU(N) - CPU(baseline)) / (N - baseline), wall excluding start-up is
wall(N) - (wall(baseline) - its ideal). Every tool's answers are counted and checked (each must be
"echo: <its prompt>"); a tool that did not get all of them fails the run (exit status 1).

The server is src/stillroom/testing/echo_server.py (asyncio + uvloop, one write per response),
run by path from the stillroom venv; its own CPU during each run is reported too, to show it is
not the bottleneck. Results: tables on stdout, and bench/results/client_overhead.json.

The code: this file (options and the rounds), client_overhead_tools.py (the tools' venvs, how each
is run, the echo server), client_overhead_runners.py (the scripts run inside the tools' venvs),
client_overhead_process.py (wall and CPU of a process tree), client_overhead_report.py (figures,
tables, goals, the JSON record).

Offline set-up of the third-party tools (all in the runner code below): distilabel gets a fresh
DISTILABEL_CACHE_DIR, use_cache=False, HF_*_OFFLINE and input_batch_size=concurrency (OpenAILLM
sends one batch's rows concurrently, batches one after another); Curator gets a fresh
CURATOR_CACHE_DIR plus CURATOR_DISABLE_CACHE=1, TELEMETRY_ENABLED=false, no CURATOR_VIEWER,
LITELLM_LOCAL_MODEL_COST_MAP=True, TIKTOKEN_CACHE_DIR=<litellm>/litellm_core_utils/tokenizers
(cl100k_base ships there, named by the sha1 of its URL), max_concurrent_requests=concurrency and
rpm/tpm limits too high to throttle.

Goals checked for stillroom (CLI, cache on, progress on): wall <= 1.15 x ideal, CPU <= 1 ms per
request, where ideal = requests / concurrency * latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from client_overhead_process import log
from client_overhead_report import median_run, report
from client_overhead_tools import (
    ALIASES,
    ALL_TOOLS,
    EXTRA_TOOLS,
    RESULTS,
    VERSION_OF,
    Context,
    ensure_venv,
    free_port,
    package_version,
    run_tool,
    start_server,
    tool_venv,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--tools", default="all", help=f"comma-separated: {', '.join(ALL_TOOLS)} "
                        f"or {', '.join(ALIASES)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; medians are reported")
    parser.add_argument("--baseline-requests", type=int, default=10,
                        help="rows of the start-up run (0: skip it)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up run of each tool")
    parser.add_argument("--port", type=int, default=0, help="echo server port (0: a free one)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each measured run, wait up to this many seconds for other "
                        "processes to leave the CPUs idle (0: do not wait)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="turn stillroom's end-of-run embedding diversity measure off (by "
                             "default it runs as stillroom decides: skipped on a short run)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (outputs, logs)")
    parser.add_argument("--json", default=str(RESULTS / "client_overhead.json"))
    args = parser.parse_args()

    tools: list[str] = []
    for name in (t.strip() for t in args.tools.split(",") if t.strip()):
        for tool in ALIASES.get(name, [name]):
            if tool not in ALL_TOOLS + EXTRA_TOOLS:
                parser.error(f"unknown tool {tool!r}; choose from {', '.join(ALL_TOOLS + EXTRA_TOOLS)}")
            if tool not in tools:
                tools.append(tool)
    if "stillroom-progress" in tools and shutil.which("script") is None:
        log("`script` (util-linux) is missing: skipping stillroom-progress")
        tools.remove("stillroom-progress")
    n, base_n = args.requests, min(args.baseline_requests, args.requests)
    ideal = n / args.concurrency * args.latency_ms / 1000.0

    work = Path(tempfile.mkdtemp(prefix="stillroom-client-overhead-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"prompt": f"Question {i}: what is {i} times {i % 97}? Answer briefly."}) + "\n"
        for i in range(n)
    ))
    base_prompts = work / "prompts-baseline.jsonl"
    base_prompts.write_text("".join(prompts.read_text().splitlines(keepends=True)[:base_n]))
    warm_prompts = work / "prompts-warmup.jsonl"
    warm_rows = prompts.read_text().splitlines(keepends=True)[: max(1, min(10, n))]
    warm_prompts.write_text("".join(warm_rows))

    # Make every venv before anything is timed.
    ctx_pythons = {tool_venv(t): ensure_venv(tool_venv(t)) for t in ["stillroom", *tools]}
    port = args.port or free_port()
    server = start_server(ctx_pythons["stillroom"], port, args.latency_ms, work)
    ctx = Context(args, work, f"http://127.0.0.1:{port}/v1", server.pid)
    ctx.pythons.update(ctx_pythons)
    log(f"echo server pid {server.pid} on port {port}, latency {args.latency_ms:g} ms; work dir {work}")

    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    base_runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    try:
        active = []
        for tool in tools:
            if not args.no_warmup:
                # Untimed: warms the page cache and whatever a tool does only on its first run,
                # so that the measured runs all start warm.
                log(f"{tool}: warm-up run, {len(warm_rows)} requests (not measured)")
                warm = run_tool(ctx, tool, warm_prompts, len(warm_rows), "warmup")
                if warm["rc"] != 0 or warm["answers_ok"] != len(warm_rows):
                    failures.append(f"{tool}: warm-up run failed (log: {warm['log']})")
                    continue
            active.append(tool)
        # Rounds: every tool once per round, so that the machine's speed drifting over time (it
        # does, by tens of percent, on this shared VM) spreads over all tools instead of
        # favouring whichever ran in a fast minute.
        for repeat in range(args.repeats):
            for tool in active:
                if base_n:
                    log(f"{tool}: start-up run, {base_n} requests (round {repeat + 1}/{args.repeats})")
                    base_runs[tool].append(run_tool(ctx, tool, base_prompts, base_n, f"baseline{repeat}"))
                log(f"{tool}: {n} requests at concurrency {args.concurrency} "
                    f"(round {repeat + 1}/{args.repeats})")
                run = run_tool(ctx, tool, prompts, n, f"run{repeat}")
                log(f"{tool}: wall {run['wall_s']:.2f} s, CPU {run['cpu_s']:.2f} s, "
                    f"{run['answers_ok']}/{n} answers")
                runs[tool].append(run)
        for tool in active:
            entry: dict[str, Any] = {"version": package_version(
                ctx.python(tool_venv(tool)), VERSION_OF[tool_venv(tool)])}
            if base_runs[tool]:
                entry["baseline"] = median_run(base_runs[tool])
            entry.update(median_run(runs[tool]))
            results[tool] = entry
            for run in runs[tool] + base_runs[tool]:
                if run["rc"] != 0 or run["answers_ok"] != run["requests"]:
                    failures.append(f"{tool}: rc={run['rc']}, {run['answers_ok']}/{run['requests']} "
                                    f"correct answers (log: {run['log']})")
                if run["cpu_polled_s"] > run["cpu_s"] * 1.05 + 0.2:
                    log(f"warning: {tool}: polled process-tree CPU {run['cpu_polled_s']:.2f} s > "
                        f"rusage {run['cpu_s']:.2f} s (a child it never waited for?)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)

    report(args, results, failures, n, base_n, ideal)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
