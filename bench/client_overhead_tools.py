"""The tools bench/client_overhead.py compares: their venvs, how each is run on a prompt file,
and the echo server they all talk to."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client_overhead_process import log, measure, wait_for_quiet
from client_overhead_runners import (
    COUNT_STILLROOM,
    RUNNER_AIOHTTP,
    RUNNER_CURATOR,
    RUNNER_DISTILABEL,
    RUNNER_OPENAI,
    RUNNER_STILLROOM_API,
    count_answers_jsonl,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"

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
        if args.no_embeddings:
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
        cfg.update(out=str(out), cache=tool != "stillroom-api-nocache", embeddings=not args.no_embeddings,
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
