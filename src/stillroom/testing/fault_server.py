"""An OpenAI-compatible echo server that misbehaves on purpose, for adversarial tests.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` with ``"echo: <last user
message>"`` (the answer of :mod:`stillroom.testing.echo_server`), after a fixed or uniformly drawn
latency, except for the requests it picks to fail. Each fault has its share of requests:

    --rate-429 F --retry-after S   429 with ``Retry-After: S`` (any text, e.g. 86400)
    --rate-500 F                   500 with a JSON error body
    --rate-drop F                  a 200 whose body is cut off halfway, then the connection closes
    --rate-empty F                 a 200 whose answer is ``""``
    --rate-nonjson F               a 200 whose body is an HTML page, not JSON
    --rate-401 F                   401 whose error message echoes the request's Authorization header

Which request fails is decided by a seeded hash of (seed, prompt, how many times this prompt was
asked before), never by arrival order, so a test can predict it with :func:`fault_for`; with
``--sticky`` the attempt number is left out, so every retry of a faulty prompt fails the same way.
``--match TEXT`` limits faults to prompts containing TEXT; ``--first-k K`` limits them to the first
K requests the server receives (a rerun then meets a healthy server).

Every request is appended to a JSON-lines log as it arrives: ``t`` (unix time), ``n`` (its number,
from 1), ``path``, ``prompt``, ``attempt`` (earlier requests with this prompt, from 0), ``status``
(what it is answered: 200, 429, 500 or 401), ``fault`` (null, or the fault's name) and ``auth``
(whether an Authorization header came; never its value).

    python -m stillroom.testing.fault_server --port 8124 --seed 1 --latency-ms 20 \\
        --rate-500 0.1 --rate-drop 0.05 --log requests.jsonl

Run as a file (``python path/to/fault_server.py ...``) it does not import the stillroom package,
only the echo server's module beside it: it listens within a tenth of a second instead of half
a second, which adds up over the dozens of servers a test session starts.

Written by hand on asyncio streams, like the echo server, rather than on an ASGI framework:
the faults need control a framework hides (a body cut off mid-write, then a dropped socket; a
Content-Length that lies; exact header bytes), it starts in a fraction of a second, and a
hundred readable lines are easier to trust in a test than a stack of middleware.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__:
    from stillroom.testing.echo_server import _answer
else:  # run as a file: the echo server's module alone, without the stillroom package
    _spec = importlib.util.spec_from_file_location(
        "_stillroom_echo_server", Path(__file__).with_name("echo_server.py"))
    assert _spec is not None and _spec.loader is not None
    _echo = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_echo)
    _answer = _echo._answer

# The order in which a request's draw is matched against the faults' shares.
FAULTS = ("429", "500", "drop", "empty", "nonjson", "401")
_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error"}


@dataclass(frozen=True)
class Faults:
    """The shares of requests each fault gets, and which requests may fail at all."""

    seed: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_drop: float = 0.0
    rate_empty: float = 0.0
    rate_nonjson: float = 0.0
    rate_401: float = 0.0
    retry_after: str = "1"
    match: str | None = None
    first_k: int | None = None
    sticky: bool = False

    def rates(self) -> list[tuple[str, float]]:
        return list(zip(FAULTS, (self.rate_429, self.rate_500, self.rate_drop, self.rate_empty,
                                 self.rate_nonjson, self.rate_401), strict=True))


def _draw(*parts: object) -> float:
    """A uniform number in [0, 1) from a stable hash of ``parts`` (same on every run and host)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fault_for(faults: Faults, prompt: str, attempt: int, number: int) -> str | None:
    """The fault the ``number``-th request (from 1), the ``attempt``-th (from 0) with ``prompt``,
    gets: None for a proper answer, else one of FAULTS."""
    if faults.first_k is not None and number > faults.first_k:
        return None
    if faults.match is not None and faults.match not in prompt:
        return None
    x = _draw(faults.seed, prompt, 0 if faults.sticky else attempt)
    for name, rate in faults.rates():
        if x < rate:
            return name
        x -= rate
    return None


def prompt_of(body: dict[str, Any]) -> str:
    """The last user message of a chat request, or a completion request's prompt."""
    messages = body.get("messages")
    if messages is not None:
        for message in reversed(messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""
    return str(body.get("prompt", ""))


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


class FaultServer:
    def __init__(self, faults: Faults, latency_ms: tuple[float, float] = (0.0, 0.0),
                 log_path: str | None = None):
        self.faults = faults
        self.latency = (latency_ms[0] / 1000.0, latency_ms[1] / 1000.0)
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self.number = 0
        self.attempts: Counter[str] = Counter()

    def _delay(self, number: int) -> float:
        low, high = self.latency
        return low + (high - low) * _draw(self.faults.seed, "latency", number)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, *_ = lines[0].split(" ") + ["", ""]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b"{}"
                if not await self._answer(path, raw, headers, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, raw: bytes, headers: dict[str, str],
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(writer, 404, _error(f"no route {path}", "not_found"))
            await writer.drain()
            return True
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        self.number += 1
        number, prompt = self.number, prompt_of(body)
        attempt = self.attempts[prompt]
        self.attempts[prompt] += 1
        fault = fault_for(self.faults, prompt, attempt, number)
        status = {"429": 429, "500": 500, "401": 401}.get(fault or "", 200)
        if self._log is not None:
            self._log.write(json.dumps({
                "t": time.time(), "n": number, "path": path, "prompt": prompt, "attempt": attempt,
                "status": status, "fault": fault, "auth": "authorization" in headers,
            }) + "\n")
        delay = self._delay(number)
        if delay:
            await asyncio.sleep(delay)
        answer = _answer(body, int(time.time()))
        if fault is None:
            self._send(writer, 200, json.dumps(answer).encode())
        elif fault == "429":
            self._send(writer, 429, _error("rate limited", "rate_limit_exceeded"),
                       {"Retry-After": self.faults.retry_after})
        elif fault == "500":
            self._send(writer, 500, _error("the server had an error", "server_error"))
        elif fault == "401":
            self._send(writer, 401, _error(
                f"Incorrect API key provided: {headers.get('authorization', '(none)')}",
                "invalid_request_error"))
        elif fault == "nonjson":
            self._send(writer, 200, b"<html><body>502 Bad Gateway</body></html>",
                       content_type="text/html")
        elif fault == "empty":
            choice = answer["choices"][0]
            if "message" in choice:
                choice["message"]["content"] = ""
            else:
                choice["text"] = ""
            answer["usage"]["completion_tokens"] = 0
            self._send(writer, 200, json.dumps(answer).encode())
        else:  # drop: promise the whole body, send half of it, hang up
            payload = json.dumps(answer).encode()
            writer.write(self._head(200, len(payload)) + payload[: len(payload) // 2])
            await writer.drain()
            return False
        await writer.drain()
        return True

    @staticmethod
    def _head(status: int, length: int, extra: dict[str, str] | None = None,
              content_type: str = "application/json") -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"Content-Type: {content_type}", f"Content-Length: {length}",
                 "Connection: keep-alive"]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes,
              extra: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        writer.write(self._head(status, len(payload), extra, content_type) + payload)

    async def serve(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        server = await asyncio.start_server(self.handle, sock=sock)
        async with server:
            await server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0], metavar="MS",
                        help="fixed latency, or LOW HIGH for a uniform range")
    for name in FAULTS:
        parser.add_argument(f"--rate-{name}", type=float, default=0.0, metavar="F",
                            help=f"share of requests answered with fault {name!r}")
    parser.add_argument("--retry-after", default="1", help="Retry-After header of a 429")
    parser.add_argument("--match", default=None, help="only prompts containing this text fail")
    parser.add_argument("--first-k", type=int, default=None, help="only the first K requests fail")
    parser.add_argument("--sticky", action="store_true",
                        help="a prompt's retries fail as its first request did")
    parser.add_argument("--log", default=None, help="append each request to this JSONL file")
    args = parser.parse_args(argv)
    if len(args.latency_ms) not in (1, 2):
        parser.error("--latency-ms takes MS or LOW HIGH")
    return args


def faults_of(args: argparse.Namespace) -> Faults:
    return Faults(
        seed=args.seed, rate_429=args.rate_429, rate_500=args.rate_500, rate_drop=args.rate_drop,
        rate_empty=args.rate_empty, rate_nonjson=args.rate_nonjson, rate_401=args.rate_401,
        retry_after=args.retry_after, match=args.match, first_k=args.first_k, sticky=args.sticky,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    latency = args.latency_ms if len(args.latency_ms) == 2 else args.latency_ms * 2
    server = FaultServer(faults_of(args), (latency[0], latency[1]), args.log)
    asyncio.run(server.serve(args.host, args.port))


if __name__ == "__main__":
    main()
