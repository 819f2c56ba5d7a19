"""Wall time and CPU of a child process (and its tree), and the machine's other load, for
bench/client_overhead.py."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


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
