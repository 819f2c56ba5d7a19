"""The figures and tables of bench/client_overhead.py: medians over rounds, ratios to the
baselines, the stillroom goals, and the JSON record."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from client_overhead_process import log
from client_overhead_tools import REPO, VERSION_OF, tool_venv


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



def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], failures: list[str],
           n: int, base_n: int, ideal: float) -> None:
    """Derive the figures, print the tables and goals, write the JSON record."""
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
