"""Real local servers for integration tests, started on 127.0.0.1 and stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not open port {port} in {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(
    command: list[str], port: int, log: Path, *, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        wait_for_port(port, process, timeout, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def katan_command(port: int, stats_file: Path, *flags: str, providers: str = "openai") -> list[str]:
    """llm-katan's echo backend: a third-party OpenAI/Anthropic server with failure injection."""
    katan = Path(sys.executable).with_name("llm-katan")
    return [
        str(katan), "--model", "echo-model", "--backend", "echo", "--host", "127.0.0.1",
        "--port", str(port), "--providers", providers, "--stats-file", str(stats_file),
        "--disable-dashboard", "--log-level", "WARNING", *flags,
    ]


def echo_command(port: int, latency_ms: float = 0.0, log: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "stillroom.testing.echo_server", "--port", str(port),
               "--latency-ms", str(latency_ms)]
    if log is not None:
        command += ["--log", str(log)]
    return command
