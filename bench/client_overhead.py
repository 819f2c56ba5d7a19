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

stillroom runs with its end-of-run embedding diversity measure off (--no-embeddings) unless
--embeddings is given: that measure loads a sentence model and embeds every answer (about 13 s of
CPU for 3,000 answers here), a cost of the data set rather than of the client, and it would hide
the per-request figures this benchmark is for.

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
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_TOOLS = [
    "stillroom",
    "stillroom-progress",
    "stillroom-nocache",
    "stillroom-api",
    "stillroom-api-nocache",
    "stillroom-api-sdk",
    "openai",
    "aiohttp",
    "curator",
    "distilabel",
]
# Not run by default: an alternative set-up, for comparison.
EXTRA_TOOLS = ["distilabel-replicas"]
ALIASES = {
    "stillroom-all": ["stillroom", "stillroom-progress", "stillroom-nocache", "stillroom-api",
                      "stillroom-api-nocache", "stillroom-api-sdk"],
    "others": ["openai", "aiohttp", "curator", "distilabel"],
    "all": ALL_TOOLS,
}

# What each tool's venv gets; stillroom's is the repo's .venv or an editable install.
VENV_SPECS: dict[str, list[str]] = {
    "aiohttp": ["aiohttp"],
    "openai": ["openai"],
    "distilabel": ["distilabel[openai]==1.5.3", "requests"],
    "curator": ["bespokelabs-curator"],
}
VERSION_OF = {
    "aiohttp": "aiohttp",
    "openai": "openai",
    "distilabel": "distilabel",
    "curator": "bespokelabs-curator",
    "stillroom": "stillroom",
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- virtual environments ----------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """The python of the venv for ``name``, made (or completed) on demand."""
    if name == "stillroom":
        main = REPO / ".venv"
        if (main / "bin" / "stillroom").exists():
            return venv_python(main)
        venv, packages = VENVS / "stillroom", ["-e", str(REPO)]
    else:
        venv, packages = VENVS / name, VENV_SPECS[name]
    marker = venv / ".bench-spec.json"
    spec = json.dumps(packages)
    if marker.exists() and marker.read_text() == spec and venv_python(venv).exists():
        return venv_python(venv)
    log(f"making venv {venv} with {' '.join(packages)} (once)")
    if not venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    for command in ([*pip, "--upgrade", "pip"], [*pip, *packages]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    marker.write_text(spec)
    return venv_python(venv)


def package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "?"


# -- runners: written to the work dir and run with the tool's python ---------------------------

# Each runner gets a JSON config as argv[1]: base_url, prompts (a JSONL file of {"prompt"}),
# concurrency, answers (where to write {"prompt", "answer"} lines) and tool-specific keys. It
# prints one line "BENCH_REPORT {json}" with t_import (seconds to import the tool), t_run (wall of
# the generation itself) and cpu_run (this process's CPU during it).

RUNNER_PRELUDE = """\
import json, sys, time
_T0 = time.perf_counter()
"""

RUNNER_AIOHTTP = RUNNER_PRELUDE + '''
import asyncio
import aiohttp

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


async def main():
    semaphore = asyncio.Semaphore(cfg["concurrency"])
    url = cfg["base_url"] + "/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def one(prompt):
            body = {"model": "bench", "messages": [{"role": "user", "content": prompt}]}
            async with semaphore:
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    data = await response.json()
            return data["choices"][0]["message"]["content"]

        return await asyncio.gather(*(one(p) for p in prompts))


c0, w0 = time.process_time(), time.perf_counter()
answers = asyncio.run(main())
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
with open(cfg["answers"], "w") as f:
    for p, a in zip(prompts, answers):
        f.write(json.dumps({"prompt": p, "answer": a}) + "\\n")
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

RUNNER_OPENAI = RUNNER_PRELUDE + '''
import asyncio
import openai

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


async def main():
    semaphore = asyncio.Semaphore(cfg["concurrency"])
    client = openai.AsyncOpenAI(base_url=cfg["base_url"], api_key="dummy")

    async def one(prompt):
        async with semaphore:
            response = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": prompt}]
            )
        return response.choices[0].message.content

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


c0, w0 = time.process_time(), time.perf_counter()
answers = asyncio.run(main())
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
with open(cfg["answers"], "w") as f:
    for p, a in zip(prompts, answers):
        f.write(json.dumps({"prompt": p, "answer": a}) + "\\n")
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

RUNNER_STILLROOM_API = RUNNER_PRELUDE + '''
import os
from stillroom import api

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
backend = api.backend_config("bench", base_url=cfg["base_url"], concurrency=cfg["concurrency"],
                             client=cfg["client"])
options = dict(progress=False, use_cache=cfg["cache"], overwrite=True,
               diversity_embeddings=cfg["embeddings"])
# Warm-up: the lazy imports (aiohttp, pyarrow's writer, the report) and the first connections.
w = time.perf_counter()
api.complete(cfg["warmup_prompts"], cfg["warmup_out"], backend=backend,
             cache_dir=cfg["warmup_cache_dir"], **options)
t_warmup = time.perf_counter() - w
c0, w0 = time.process_time(), time.perf_counter()
result = api.complete(cfg["prompts"], cfg["out"], backend=backend, cache_dir=cfg["cache_dir"], **options)
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_warmup": t_warmup, "t_run": t_run,
                                    "cpu_run": cpu_run, "counts": result.counts}))
'''

RUNNER_DISTILABEL = RUNNER_PRELUDE + '''
import os
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepResources
from distilabel.steps.tasks import TextGeneration

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]

if __name__ == "__main__":
    c0, w0 = time.process_time(), time.perf_counter()
    with Pipeline(name="bench-client-overhead") as pipeline:
        load = LoadDataFromDicts(
            data=[{"instruction": p} for p in prompts], batch_size=cfg["load_batch_size"]
        )
        generate = TextGeneration(
            llm=OpenAILLM(model="bench", base_url=cfg["base_url"], api_key="dummy"),
            # OpenAILLM (an AsyncLLM) sends the rows of one batch concurrently and batches one
            # after another: input_batch_size is the number in flight (per replica).
            input_batch_size=cfg["concurrency"] // cfg["replicas"],
            resources=StepResources(replicas=cfg["replicas"]),
        )
        load >> generate
    distiset = pipeline.run(use_cache=False)
    t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
    rows = distiset["default"]["train"]
    with open(cfg["answers"], "w") as f:
        for row in rows:
            f.write(json.dumps({"prompt": row["instruction"], "answer": row["generation"]}) + "\\n")
    print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

RUNNER_CURATOR = RUNNER_PRELUDE + '''
from bespokelabs import curator

T_IMPORT = time.perf_counter() - _T0
cfg = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(cfg["prompts"])]


class Echo(curator.LLM):
    def prompt(self, row):
        return row["prompt"]

    def parse(self, row, response):
        return {"prompt": row["prompt"], "answer": response}


c0, w0 = time.process_time(), time.perf_counter()
llm = Echo(
    model_name="bench",
    backend="openai",
    backend_params={
        "base_url": cfg["base_url"],
        "api_key": "dummy",
        "max_concurrent_requests": cfg["concurrency"],
        # High enough never to throttle: the only limit is max_concurrent_requests.
        "max_requests_per_minute": 10_000_000,
        "max_tokens_per_minute": 1_000_000_000_000,
    },
)
response = llm([{"prompt": p} for p in prompts], working_dir=cfg["working_dir"])
t_run, cpu_run = time.perf_counter() - w0, time.process_time() - c0
dataset = response.dataset
with open(cfg["answers"], "w") as f:
    for row in dataset:
        f.write(json.dumps({"prompt": row["prompt"], "answer": row["answer"]}) + "\\n")
print("BENCH_REPORT " + json.dumps({"t_import": T_IMPORT, "t_run": t_run, "cpu_run": cpu_run}))
'''

# Counts a stillroom output folder's answers; run with stillroom's python (it has pyarrow).
COUNT_STILLROOM = """\
import glob, json, sys
import pyarrow.parquet as pq
ok = total = 0
for path in sorted(glob.glob(sys.argv[1] + "/data/*.parquet")):
    table = pq.read_table(path, columns=["prompt", "completion"])
    for prompt, answer in zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist()):
        total += 1
        ok += answer == "echo: " + prompt
print(json.dumps({"ok": ok, "total": total}))
"""


def count_answers_jsonl(path: Path) -> dict[str, int]:
    ok = total = 0
    if path.exists():
        for line in path.open():
            row = json.loads(line)
            total += 1
            ok += row["answer"] == "echo: " + row["prompt"]
    return {"ok": ok, "total": total}


# -- process CPU -------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """user + sys seconds of one live process (not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def system_busy_cpu() -> float:
    """CPU seconds all processes on the machine have used (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until the machine's other processes use less than
    ``threshold`` of a core over a second: others' work on a 2-core machine skews wall times.
    Returns the load of the last second, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, own0 = system_busy_cpu(), time.process_time()
        time.sleep(1.0)
        load = system_busy_cpu() - busy0 - (time.process_time() - own0)
        if load < threshold or time.monotonic() >= deadline:
            return load
        log(f"machine busy ({load:.2f} cores used by other processes); waiting")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, server_pid: int,
            timeout: float) -> dict[str, Any]:
    """Run ``cmd`` to completion; its wall time, CPU (rusage of waited-for children) and the CPU
    of the process tree seen by polling /proc (a cross-check for children it never waited for)."""
    cpu0, server0 = children_cpu(), proc_cpu(server_pid)
    system0, own0 = system_busy_cpu(), time.process_time()
    seen: dict[int, float] = {}
    started = time.perf_counter()
    stop = threading.Event()

    def poll_tree(root: int) -> None:
        while not stop.wait(0.25):
            for pid in descendants(root):
                seen[pid] = max(seen.get(pid, 0.0), proc_cpu(pid))

    with log_path.open("w") as handle:
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        poller = threading.Thread(target=poll_tree, args=(process.pid,), daemon=True)
        poller.start()
        try:
            # wait() returns the moment the child exits (the wall time must not be rounded to the
            # poller's period) and reaps it, so its CPU is in RUSAGE_CHILDREN from then on.
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RuntimeError(f"{cmd[:3]} ran past {timeout:.0f} s; see {log_path}") from None
        except BaseException:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise
        finally:
            stop.set()
    wall = time.perf_counter() - started
    poller.join()
    cpu = children_cpu() - cpu0
    server_cpu = proc_cpu(server_pid) - server0
    # CPU that neither the tool, the server nor this script used: other processes' work.
    foreign = system_busy_cpu() - system0 - cpu - server_cpu - (time.process_time() - own0)
    output = log_path.read_text(errors="replace")
    report: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith("BENCH_REPORT "):
            report = json.loads(line[len("BENCH_REPORT "):])
    return {
        "rc": process.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_polled_s": sum(seen.values()),
        "server_cpu_s": server_cpu,
        "other_processes_cpu_s": max(0.0, foreign),
        "report": report,
        "log": str(log_path),
    }


# -- the tools ---------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, work: Path, base_url: str, server_pid: int):
        self.args = args
        self.work = work
        self.base_url = base_url
        self.server_pid = server_pid
        self.pythons: dict[str, Path] = {}

    def python(self, venv_name: str) -> Path:
        if venv_name not in self.pythons:
            self.pythons[venv_name] = ensure_venv(venv_name)
        return self.pythons[venv_name]


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    # Offline: no hub, no telemetry, no proxy surprises for 127.0.0.1.
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    # Write bytecode (into a cache under bench/.venvs/), as a user's Python does: with
    # PYTHONDONTWRITEBYTECODE set, every start would recompile stillroom's own (editable) source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(VENVS / "pycache")
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    return env


def tool_venv(tool: str) -> str:
    return "stillroom" if tool.startswith("stillroom") else tool.split("-")[0]


def run_tool(ctx: Context, tool: str, prompts: Path, n: int, label: str) -> dict[str, Any]:
    """One measured run of ``tool`` on the first ``n`` prompts (``prompts`` holds exactly n)."""
    args = ctx.args
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tool}-{label}-", dir=ctx.work))
    python = ctx.python(tool_venv(tool))
    env = base_env()
    cfg: dict[str, Any] = {
        "base_url": ctx.base_url,
        "prompts": str(prompts),
        "concurrency": args.concurrency,
        "answers": str(run_dir / "answers.jsonl"),
    }
    out = run_dir / "out"
    counter = "jsonl"
    if tool in ("stillroom", "stillroom-progress", "stillroom-nocache"):
        env["STILLROOM_CACHE_DIR"] = str(run_dir / "cache")  # fresh: nothing served from cache
        stillroom = python.parent / "stillroom"
        cmd = [str(stillroom), "complete", str(prompts), "-o", str(out),
               "--base-url", ctx.base_url, "--model", "bench",
               "--concurrency", str(args.concurrency)]
        if tool != "stillroom-progress":
            cmd.append("--no-progress")
        if not args.embeddings:
            cmd.append("--no-embeddings")
        if tool == "stillroom-nocache":
            cmd.append("--no-cache")
        if tool == "stillroom-progress":
            # rich draws its bar only on a terminal: `script` gives the process a pty (its own CPU,
            # copying the bar's few hundred bytes a second, is counted in too).
            cmd = ["script", "-q", "-e", "-c", shlex.join(cmd), "/dev/null"]
            env.setdefault("TERM", "xterm-256color")
            env["COLUMNS"] = "120"
        counter = "stillroom"
    elif tool in ("stillroom-api", "stillroom-api-nocache", "stillroom-api-sdk"):
        warm = run_dir / "warmup.jsonl"
        warm.write_text("".join(
            json.dumps({"prompt": f"warm-up {i}"}) + "\n" for i in range(min(10, n))
        ))
        cfg.update(out=str(out), cache=tool != "stillroom-api-nocache", embeddings=args.embeddings,
                   client="sdk" if tool == "stillroom-api-sdk" else "aiohttp",
                   cache_dir=str(run_dir / "cache"),
                   warmup_prompts=str(warm), warmup_out=str(run_dir / "warmup-out"),
                   warmup_cache_dir=str(run_dir / "warmup-cache"))
        (run_dir / "runner.py").write_text(RUNNER_STILLROOM_API)
        cmd = [str(python), str(run_dir / "runner.py"), json.dumps(cfg)]
        counter = "stillroom"
    elif tool == "aiohttp":
        (run_dir / "runner.py").write_text(RUNNER_AIOHTTP)
        cmd = [str(python), str(run_dir / "runner.py"), json.dumps(cfg)]
    elif tool == "openai":
        (run_dir / "runner.py").write_text(RUNNER_OPENAI)
        cmd = [str(python), str(run_dir / "runner.py"), json.dumps(cfg)]
    elif tool in ("distilabel", "distilabel-replicas"):
        env.update(
            DISTILABEL_CACHE_DIR=str(run_dir / "distilabel-cache"),  # fresh, and use_cache=False
            DISTILABEL_LOG_LEVEL="WARNING",  # its INFO logging costs CPU we do not want to count
            HF_DATASETS_CACHE=str(run_dir / "hf-datasets"),
        )
        cfg["load_batch_size"] = max(args.concurrency, 1000)
        # distilabel-replicas: two replicas of the step (two processes), half the batch each, so
        # one replica's batch is in flight while the other's is between batches; still at most
        # `concurrency` requests in flight.
        cfg["replicas"] = 2 if tool == "distilabel-replicas" else 1
        (run_dir / "runner.py").write_text(RUNNER_DISTILABEL)
        cmd = [str(python), str(run_dir / "runner.py"), json.dumps(cfg)]
    elif tool == "curator":
        env.update(
            CURATOR_CACHE_DIR=str(run_dir / "curator-cache"),
            CURATOR_DISABLE_CACHE="1",  # a random fingerprint: never resumes an earlier run
            TELEMETRY_ENABLED="false",  # posthog
            BESPOKE_CURATOR_TRACKER_DISABLED="1",
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # litellm would fetch its cost map from GitHub
            TIKTOKEN_CACHE_DIR=str(tiktoken_dir(python)),  # cl100k_base, shipped inside litellm
            HF_DATASETS_CACHE=str(run_dir / "hf-datasets"),
        )
        env.pop("CURATOR_VIEWER", None)
        env.pop("BESPOKE_API_KEY", None)
        cfg["working_dir"] = str(run_dir / "curator-work")
        (run_dir / "runner.py").write_text(RUNNER_CURATOR)
        cmd = [str(python), str(run_dir / "runner.py"), json.dumps(cfg)]
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    if label != "warmup" and args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait)
    result = measure(cmd, env=env, cwd=run_dir, log_path=run_dir / "output.log",
                     server_pid=ctx.server_pid, timeout=args.timeout)
    if counter == "stillroom":
        counted = subprocess.run([str(python), "-c", COUNT_STILLROOM, str(out)],
                                 capture_output=True, text=True)
        answers = json.loads(counted.stdout) if counted.returncode == 0 else {"ok": 0, "total": 0}
    else:
        answers = count_answers_jsonl(run_dir / "answers.jsonl")
    result.update(tool=tool, requests=n, answers_ok=answers["ok"], answers_total=answers["total"])
    if tool == "stillroom-progress":
        text = Path(result["log"]).read_text(errors="replace")
        result["progress_bar_drawn"] = "rows" in text and "req/s" in text
    if result["rc"] != 0 or answers["ok"] != n:
        tail = "\n".join(Path(result["log"]).read_text(errors="replace").splitlines()[-30:])
        log(f"{tool} ({label}): rc={result['rc']}, {answers['ok']}/{n} correct answers; log tail:\n{tail}")
    if not ctx.args.keep:
        for sub in ("out", "cache", "curator-cache", "distilabel-cache", "hf-datasets", "curator-work",
                    "warmup-out", "warmup-cache"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    return result


def tiktoken_dir(python: Path) -> Path:
    code = ("import importlib.util, pathlib; "
            "print(pathlib.Path(importlib.util.find_spec('litellm').origin).parent "
            "/ 'litellm_core_utils' / 'tokenizers')")
    path = Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                               check=True).stdout.strip())
    # tiktoken names its cache files by the sha1 of the encoding's URL; litellm ships cl100k_base.
    if not (path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").exists():
        log(f"warning: cl100k_base is not in {path}; curator may try to download it")
    return path


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(python: Path, port: int, latency_ms: float, work: Path) -> subprocess.Popen[bytes]:
    handle = (work / "server.log").open("w")
    server = subprocess.Popen(
        # Run by path (it imports only the standard library and uvloop), so the server does not
        # depend on the rest of the package importing cleanly.
        [str(python), str(REPO / "src" / "stillroom" / "testing" / "echo_server.py"), "--host", "127.0.0.1",
         "--port", str(port), "--latency-ms", str(latency_ms)],
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"echo server exited: {(work / 'server.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    raise SystemExit("echo server did not start")


# -- report ------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric medians over repeats (the first run's other fields)."""
    out = dict(runs[0])
    for key in ("wall_s", "cpu_s", "cpu_polled_s", "server_cpu_s", "other_processes_cpu_s"):
        out[key] = statistics.median(r[key] for r in runs)
    out["repeats"] = [{k: r[k] for k in ("wall_s", "cpu_s", "server_cpu_s", "other_processes_cpu_s",
                                         "report")} for r in runs]
    reports = [r["report"] for r in runs if r.get("report")]
    if reports:
        out["report"] = {k: statistics.median(rep[k] for rep in reports)
                         for k, v in reports[0].items() if isinstance(v, (int, float))}
    return out


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
    parser.add_argument("--embeddings", action="store_true",
                        help="let stillroom measure the embedding diversity of the answers at the "
                             "end (a sentence model over every answer: a cost of the data, not of "
                             "the client, so off by default)")
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

    # -- derived figures and the tables ---------------------------------------------------------
    for r in results.values():
        r["wall_vs_ideal"] = r["wall_s"] / ideal
        r["cpu_ms_per_request"] = 1000.0 * r["cpu_s"] / n
        if base_n and base_n < n:
            b = r["baseline"]
            r["startup_cpu_s"] = b["cpu_s"]
            r["startup_wall_s"] = b["wall_s"]
            # The start-up run's own requests take ceil(base_n / concurrency) latencies at best.
            base_ideal = -(-base_n // args.concurrency) * args.latency_ms / 1000.0
            r["wall_excl_startup_s"] = r["wall_s"] - max(0.0, b["wall_s"] - base_ideal)
            r["wall_excl_startup_vs_ideal"] = r["wall_excl_startup_s"] / ideal
            r["cpu_ms_per_request_excl_startup"] = 1000.0 * (r["cpu_s"] - b["cpu_s"]) / (n - base_n)
        rep = r.get("report") or {}
        if "cpu_run" in rep:
            r["cpu_ms_per_request_in_process_run"] = 1000.0 * rep["cpu_run"] / n
        r["server_cpu_share_of_wall"] = r["server_cpu_s"] / r["wall_s"]

    def ratio(tool: str, ref: str, key: str) -> str:
        if ref not in results or key not in results[tool] or key not in results[ref]:
            return "-"
        return f"{results[tool][key] / results[ref][key]:.2f}x"

    rows = []
    for tool, r in results.items():
        rows.append([
            tool, f"{r['answers_ok']}/{n}", f"{r['wall_s']:.2f}", f"{r['wall_vs_ideal']:.2f}",
            f"{r['cpu_s']:.2f}", f"{r['cpu_ms_per_request']:.2f}",
            ratio(tool, "aiohttp", "cpu_ms_per_request"), ratio(tool, "openai", "cpu_ms_per_request"),
            f"{r['server_cpu_s']:.2f}", f"{r['other_processes_cpu_s']:.2f}",
        ])
    print()
    print(f"Client overhead: {n} requests, concurrency {args.concurrency}, server latency "
          f"{args.latency_ms:g} ms, ideal wall {ideal:.2f} s; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; repeats {args.repeats} (medians)")
    print()
    print(table(["tool", "answers", "wall s", "x ideal", "CPU s", "CPU ms/req", "vs aiohttp",
                 "vs openai", "server CPU s", "others' CPU s"], rows))
    if base_n and base_n < n:
        rows = []
        for tool, r in results.items():
            rep = r.get("report") or {}
            rows.append([
                tool, f"{r['startup_wall_s']:.2f}", f"{r['startup_cpu_s']:.2f}",
                f"{rep['t_import']:.2f}" if "t_import" in rep else "-",
                f"{r['wall_excl_startup_s']:.2f}", f"{r['wall_excl_startup_vs_ideal']:.2f}",
                f"{r['cpu_ms_per_request_excl_startup']:.2f}",
                ratio(tool, "aiohttp", "cpu_ms_per_request_excl_startup"),
                ratio(tool, "openai", "cpu_ms_per_request_excl_startup"),
                f"{r['cpu_ms_per_request_in_process_run']:.2f}" if "cpu_ms_per_request_in_process_run" in r else "-",
            ])
        print()
        print(f"Start-up ({base_n}-request run), and wall and CPU without it: wall({n}) - "
              f"(wall({base_n}) - its ideal), (CPU({n}) - CPU({base_n})) / {n - base_n}; last "
              "column: the runner's own process_time() around the generation only (main process "
              "only: distilabel's steps run in child processes)")
        print()
        print(table(["tool", f"{base_n}-req wall s", f"{base_n}-req CPU s", "import s",
                     "wall excl. s", "x ideal", "CPU ms/req excl.", "vs aiohttp", "vs openai", "in-run ms/req"], rows))
    print()
    versions = ", ".join(sorted({f"{VERSION_OF[tool_venv(t)]} {r['version']}"
                                 for t, r in results.items()}))
    print(f"versions: {versions}")

    goals: dict[str, Any] = {}
    target = "stillroom-progress" if "stillroom-progress" in results else (
        "stillroom" if "stillroom" in results else None)
    if target is not None:
        r = results[target]
        goals = {
            "measured_on": target,
            "wall_vs_ideal": r["wall_vs_ideal"],
            "wall_ok": r["wall_vs_ideal"] <= 1.15,
            "wall_excl_startup_vs_ideal": r.get("wall_excl_startup_vs_ideal"),
            "wall_excl_startup_ok": (r.get("wall_excl_startup_vs_ideal") or 99) <= 1.15,
            "cpu_ms_per_request": r["cpu_ms_per_request"],
            "cpu_ok": r["cpu_ms_per_request"] <= 1.0,
            "cpu_ms_per_request_excl_startup": r.get("cpu_ms_per_request_excl_startup"),
            "cpu_excl_startup_ok": (r.get("cpu_ms_per_request_excl_startup") or 99) <= 1.0,
        }
        if target == "stillroom-progress":
            goals["progress_bar_drawn"] = r.get("progress_bar_drawn")
        print()
        print(f"stillroom goals ({target}: cache on, progress "
              f"{'on' if target == 'stillroom-progress' else 'off'}):")
        print(f"  wall <= 1.15 x ideal (whole process): {r['wall_vs_ideal']:.2f}x -> "
              f"{'PASS' if goals['wall_ok'] else 'FAIL'}")
        if goals["wall_excl_startup_vs_ideal"] is not None:
            print(f"  wall <= 1.15 x ideal (excluding start-up): "
                  f"{goals['wall_excl_startup_vs_ideal']:.2f}x -> "
                  f"{'PASS' if goals['wall_excl_startup_ok'] else 'FAIL'}")
        print(f"  CPU <= 1 ms/request (whole process): {r['cpu_ms_per_request']:.2f} ms -> "
              f"{'PASS' if goals['cpu_ok'] else 'FAIL'}")
        if goals["cpu_ms_per_request_excl_startup"] is not None:
            print(f"  CPU <= 1 ms/request (excluding start-up): "
                  f"{goals['cpu_ms_per_request_excl_startup']:.2f} ms -> "
                  f"{'PASS' if goals['cpu_excl_startup_ok'] else 'FAIL'}")
        if target == "stillroom-progress":
            print(f"  progress bar drawn: {r.get('progress_bar_drawn')}")

    noisy = [t for t, r in results.items() if r["other_processes_cpu_s"] > 0.25 * r["wall_s"]]
    if noisy:
        print(f"\nwarning: other processes used > 0.25 core during {noisy}: their wall times are "
              "suspect (see others' CPU s)")
    busy = [t for t, r in results.items() if r["server_cpu_share_of_wall"] > 0.8]
    if busy:
        print(f"\nwarning: the echo server used > 80% of a core during {busy}: it may be the limit")
    if failures:
        print("\nFAILED: not every tool got all its answers:\n  " + "\n  ".join(failures))

    source = {}
    try:
        git = ["git", "-C", str(REPO)]
        source["head"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        source["modified_under_src"] = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.splitlines()
    except OSError:
        pass
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"load_average_at_end": os.getloadavg(), "requests": n, "concurrency": args.concurrency, "latency_ms": args.latency_ms,
                   "ideal_wall_s": ideal, "repeats": args.repeats, "baseline_requests": base_n,
                   "cpus": os.cpu_count(), "python": platform.python_version(),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "results": results,
        "goals": goals,
        "failures": failures,
        "stillroom_source": source,
    }, indent=2))
    log(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
