"""The fault proxy (stillroom.testing.fault_proxy) in front of real local servers: what passes
through is what the upstream sent and received, byte for byte; exactly the chosen requests fail,
without reaching the upstream, however many arrive at once; LLMClient retries through it. Tests
of a teacher failing mid-run trust these."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stillroom.llm.client import LLMClient
from stillroom.llm.openai_compat import OpenAIConfig
from stillroom.llm.types import BackendError, Request, RequestFailed
from tests.servers import echo_command, free_port, running

pytestmark = pytest.mark.integration

Answer = tuple[int, dict[str, str], bytes]
# Compressed, so that a proxy that decoded what it forwards would be caught.
PAYLOAD = gzip.compress("{\"answer\": \"déjà vu\"}\n".encode(), mtime=0)


def send(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def chat(port: int, prompt: str) -> Answer:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    return send(port, "POST", "/v1/chat/completions", body.encode(),
                {"Content-Type": "application/json"})


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., tuple[int, Path]]]:
    """Starts a fault proxy before ``upstream`` with the given flags; returns (port, its log)."""
    with ExitStack() as stack:

        def start(upstream: str, *flags: str) -> tuple[int, Path]:
            port = free_port()
            log = tmp_path / f"proxy-{port}.jsonl"
            command = [sys.executable, "-m", "stillroom.testing.fault_proxy", "--upstream",
                       upstream, "--port", str(port), "--log", str(log), *flags]
            stack.enter_context(running(command, port, tmp_path / f"proxy-{port}.out"))
            return port, log

        yield start


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The project's echo server: (its root URL, the log of requests that reached it)."""
    port = free_port()
    log = tmp_path / "echo-requests.jsonl"
    with running(echo_command(port, 0.0, log), port, tmp_path / "echo.out"):
        yield f"http://127.0.0.1:{port}", log


@contextmanager
def recording_upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server that records each request exactly as it arrived and answers with fixed
    bytes: a compressed 200 with its own headers, or a 404 under /missing."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append({"method": self.command, "path": self.path,
                         "headers": {k.lower(): v for k, v in self.headers.items()},
                         "body": self.rfile.read(length)})
            missing = self.path.startswith("/missing")
            body = b"no such thing" if missing else PAYLOAD
            self.send_response(404 if missing else 200)
            if not missing:
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Type", "application/json")
            self.send_header("X-Upstream", "recorded")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_requests_and_answers_pass_unchanged(proxy: Callable[..., tuple[int, Path]]) -> None:
    with recording_upstream() as (url, seen):
        port, log = proxy(url)
        body = "{\"prompt\": \"ünïcode\", \"n\": 1}".encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test-123",
                   "X-Trace": "a, b", "Accept-Encoding": "gzip"}
        status, got_headers, got = send(port, "PUT", "/v1/x/y?q=1&r=%20z", body, headers)
        assert status == 200
        assert got == PAYLOAD
        assert got_headers["content-encoding"] == "gzip"
        assert got_headers["x-upstream"] == "recorded"
        arrived = seen[-1]
        assert (arrived["method"], arrived["path"], arrived["body"]) == ("PUT", "/v1/x/y?q=1&r=%20z", body)
        for name, value in headers.items():
            assert arrived["headers"][name.lower()] == value

        # An upstream's own error passes as it came: it is the upstream's, not a fault.
        assert send(port, "GET", "/missing")[::2] == (404, b"no such thing")
        assert seen[-1]["method"] == "GET"
    entries = read_log(log)
    assert [(e["n"], e["status"], e["fault"]) for e in entries] == [(1, 200, False), (2, 404, False)]
    assert "sk-test-123" not in log.read_text()  # headers are never logged


def test_echo_answers_are_byte_identical(echo: tuple[str, Path],
                                         proxy: Callable[..., tuple[int, Path]]) -> None:
    url, _ = echo
    port, _ = proxy(url)
    echo_port = int(url.rsplit(":", 1)[1])
    # The echo stamps its answer with the current second: a proxied answer between two direct
    # answers stamped alike must be identical to them.
    for _ in range(5):
        before, through, after = chat(echo_port, "same"), chat(port, "same"), chat(echo_port, "same")
        if before == after:
            break
    assert before == after, "five tries straddled a second boundary"
    assert through[0] == 200 and through[2] == before[2]
    assert through[1]["content-type"] == before[1]["content-type"]


def test_the_chosen_requests_fail_without_reaching_upstream(
        echo: tuple[str, Path], proxy: Callable[..., tuple[int, Path]], tmp_path: Path) -> None:
    url, echo_log = echo
    port, log = proxy(url, "--fail-every", "3", "--fail-first", "1", "--status", "500")
    answers = [chat(port, f"q{n}") for n in range(1, 11)]
    failing = {1, 3, 6, 9}
    for n, (status, headers, body) in enumerate(answers, start=1):
        if n in failing:
            assert status == 500, n
            assert headers["content-type"].startswith("application/json")
            error = json.loads(body)["error"]
            assert error["code"] == 500 and f"request {n}" in error["message"]
        else:
            assert status == 200, n
            assert json.loads(body)["choices"][0]["message"]["content"] == f"echo: q{n}"
    reached = [entry["body"]["messages"][0]["content"] for entry in read_log(echo_log)]
    assert reached == [f"q{n}" for n in range(1, 11) if n not in failing]
    assert [e["n"] for e in read_log(log) if e["fault"]] == sorted(failing)
    assert (tmp_path / f"proxy-{port}.out").read_text() == ""  # it prints nothing but errors


def test_an_unreachable_upstream_is_a_502_and_an_error_line(
        proxy: Callable[..., tuple[int, Path]], tmp_path: Path) -> None:
    port, log = proxy(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    status, _, body = chat(port, "anyone?")
    assert status == 502 and json.loads(body)["error"]["type"] == "fault_proxy_upstream"
    assert "upstream" in (tmp_path / f"proxy-{port}.out").read_text()
    assert [(e["status"], e["fault"]) for e in read_log(log)] == [(502, False)]


def test_every_request_fails_with_fail_every_one(
        echo: tuple[str, Path], proxy: Callable[..., tuple[int, Path]]) -> None:
    url, echo_log = echo
    port, _ = proxy(url, "--fail-every", "1")
    assert [chat(port, "x")[0] for _ in range(3)] == [503, 503, 503]
    assert read_log(echo_log) == []


def test_a_server_that_goes_down_after_k_answers(
        echo: tuple[str, Path], proxy: Callable[..., tuple[int, Path]]) -> None:
    url, echo_log = echo
    port, _ = proxy(url, "--fail-after", "2")
    assert [chat(port, f"q{n}")[0] for n in range(1, 6)] == [200, 200, 503, 503, 503]
    assert [e["body"]["messages"][0]["content"] for e in read_log(echo_log)] == ["q1", "q2"]


def test_counting_is_exact_under_concurrency(
        echo: tuple[str, Path], proxy: Callable[..., tuple[int, Path]]) -> None:
    url, echo_log = echo
    port, log = proxy(url, "--fail-every", "4")
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: chat(port, f"c{i}")[0], range(80)))
    assert statuses.count(503) == 20 and statuses.count(200) == 60
    entries = read_log(log)
    assert sorted(e["n"] for e in entries) == list(range(1, 81))  # each number given once
    assert sorted(e["n"] for e in entries if e["fault"]) == list(range(4, 81, 4))
    assert len(read_log(echo_log)) == 60


def test_llm_client_retries_through_the_proxy(
        echo: tuple[str, Path], proxy: Callable[..., tuple[int, Path]]) -> None:
    url, echo_log = echo
    flaky, flaky_log = proxy(url, "--fail-every", "2")
    dead, _ = proxy(url, "--fail-every", "1")

    async def ask(port: int, prompts: list[str], retries: int) -> tuple[list[Any], LLMClient]:
        config = OpenAIConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=retries,
                              retry_base_delay=0.01, retry_max_delay=0.05)
        client = LLMClient.from_config(config)
        try:
            requests = [Request(messages=[{"role": "user", "content": p}]) for p in prompts]
            answers = await asyncio.gather(*(client.generate(r) for r in requests),
                                           return_exceptions=True)
        finally:
            await client.backend.aclose()
        return answers, client

    prompts = [f"retry me {i}" for i in range(8)]
    answers, client = asyncio.run(ask(flaky, prompts, 6))
    assert [a.text for a in answers] == [f"echo: {p}" for p in prompts]
    faults = sum(e["fault"] for e in read_log(flaky_log))
    assert faults >= 4  # every other request of at least eight failed
    assert client.stats.retries == faults == client.stats.errors["InternalServerError"]
    assert len(read_log(echo_log)) == 8  # each prompt reached the server once

    (failure,), client = asyncio.run(ask(dead, ["never answered"], 2))
    assert isinstance(failure, RequestFailed)
    assert isinstance(failure.error, BackendError)
    assert failure.attempts == 3 and failure.error.status == 503
    assert len(read_log(echo_log)) == 8
