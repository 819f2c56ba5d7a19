"""A minimal OpenAI-compatible echo server for benchmarks and tests.

It answers ``POST /v1/chat/completions`` and ``/v1/completions`` after a fixed latency with
``"echo: <last user message>"``, in a single write, over keep-alive HTTP/1.1, with a large listen
backlog: so that when a client is measured against it, the client is the bottleneck, not the
server. Each request can be appended to a JSON-lines log (to check what a client sent, e.g. that a
resumed run did not resend answered requests).

    python -m stillroom.testing.echo_server --port 8123 --latency-ms 100 [--log requests.jsonl]

Written by hand, on asyncio streams, because the usual ASGI stacks cost more CPU per request than
the clients we measure (llm-katan, FastAPI-based, is used for failure injection instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

_RESPONSE_HEAD = (
    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
)


def _answer(body: dict[str, Any], created: int) -> dict[str, Any]:
    messages = body.get("messages")
    if messages is not None:
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    else:
        user = body.get("prompt", "")
    text = f"echo: {user}"
    words = text.split()
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if messages is not None:
        choice["message"] = {"role": "assistant", "content": text}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": word,
                        "logprob": -0.5,
                        "top_logprobs": [
                            {"token": word if i == 0 else f"{word}~{i}", "logprob": -0.5 - i}
                            for i in range(k)
                        ],
                    }
                    for word in words
                ]
            }
    else:
        choice["text"] = text
    return {
        "id": f"echo-{created}",
        "object": "chat.completion" if messages is not None else "text_completion",
        "created": created,
        "model": body.get("model", "echo"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(str(user).split()),
            "completion_tokens": len(words),
            "total_tokens": len(str(user).split()) + len(words),
        },
    }


class EchoServer:
    def __init__(self, latency_ms: float = 0.0, log_path: str | None = None):
        self.latency = latency_ms / 1000.0
        self.log_path = log_path
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                raw = await reader.readexactly(length) if length else b"{}"
                self.requests += 1
                body = json.loads(raw)
                if self._log is not None:
                    self._log.write(json.dumps({"t": time.time(), "body": body}) + "\n")
                if self.latency:
                    await asyncio.sleep(self.latency)
                payload = json.dumps(_answer(body, int(time.time()))).encode()
                head_out = _RESPONSE_HEAD.format(status=200, reason="OK", length=len(payload))
                writer.write(head_out.encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def serve(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
        server = await asyncio.start_server(self.handle, sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--log", default=None, help="append each request body to this JSONL file")
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(EchoServer(args.latency_ms, args.log).serve(args.host, args.port))


if __name__ == "__main__":
    main()
