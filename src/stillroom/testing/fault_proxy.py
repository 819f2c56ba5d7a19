"""A reverse proxy that fails chosen requests, to put faults in front of any real server.

The fault server (:mod:`stillroom.testing.fault_server`) misbehaves in place of a model; this
proxy sits in front of a real one (a llama-cpp-python or vLLM server scoring tokens for
on-policy distillation), forwards every request unchanged (method, path and query, headers,
body) and returns the upstream's answer unchanged (status, headers, body bytes), except the
requests it is told to fail: those are answered at once with ``--status`` and a JSON error body
in the OpenAI shape, and never reach the upstream.

    python -m stillroom.testing.fault_proxy --upstream http://127.0.0.1:8080 --port 8081 \\
        --fail-every 3 [--status 503] [--fail-first 2] [--fail-after 10] [--log requests.jsonl]

Requests are numbered from 1 in the order they arrive. Request n fails when ``n <=
--fail-first``, when ``--fail-every N`` is set and n is a multiple of N (``--fail-every 1``
fails everything), or when ``--fail-after K`` is set and n > K (a server that goes down for
good after K answers). Each request can be appended to a JSON-lines log: ``t``, ``n``, ``method``,
``path``, ``status`` (what the client got) and ``fault`` (whether the proxy made it up); never
headers or bodies, which may hold a key.

It prints nothing but errors (an upstream that cannot be reached is answered with 502 and
reported on stderr). Built on aiohttp, which the OpenAI-compatible backend already uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TextIO

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

# Headers that describe one connection, not the message (RFC 9110 7.6.1), plus those aiohttp
# writes itself for the body it sends: forwarding them would describe the wrong hop.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


class FaultProxy:
    """The proxy's state: the request counter, the fault rule and the log."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_every: int = 0,
        fail_first: int = 0,
        fail_after: int | None = None,
        status: int = 503,
        log_path: str | None = None,
    ):
        if fail_every < 0 or fail_first < 0 or (fail_after is not None and fail_after < 0):
            raise ValueError("--fail-every, --fail-first and --fail-after must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError(f"--status must be an HTTP error status (400-599), got {status}")
        self.upstream = upstream.rstrip("/")
        self.fail_every = fail_every
        self.fail_first = fail_first
        self.fail_after = fail_after
        self.status = status
        # aiohttp serves from one event loop thread, but the proxy may also be embedded and
        # driven from several loops (one per thread): the counter is taken under a lock so that
        # each request gets its own number whatever runs it.
        self._lock = threading.Lock()
        self._count = 0
        self._log: TextIO | None = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self._session: ClientSession | None = None

    def next_number(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def fails(self, n: int) -> bool:
        return (n <= self.fail_first or (self.fail_every > 0 and n % self.fail_every == 0)
                or (self.fail_after is not None and n > self.fail_after))

    def _record(self, n: int, request: web.Request, status: int, fault: bool) -> None:
        if self._log is not None:
            entry = {"t": time.time(), "n": n, "method": request.method, "path": request.path_qs,
                     "status": status, "fault": fault}
            with self._lock:
                self._log.write(json.dumps(entry) + "\n")

    def _fault(self, n: int) -> web.Response:
        body = {"error": {
            "message": f"fault_proxy: request {n} failed on purpose",
            "type": "fault_proxy", "code": self.status,
        }}
        return web.json_response(body, status=self.status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = self.next_number()
        if self.fails(n):
            self._record(n, request, self.status, True)
            return self._fault(n)
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        body = await request.read()
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                # Chunk by chunk, so that a streamed (server-sent events) answer stays streamed.
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
        except ClientError as error:
            print(f"fault_proxy: upstream {self.upstream} failed for request {n}: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
            self._record(n, request, 502, False)
            if response is not None and response.prepared:
                # The status line is gone already: cut the answer short, as the upstream did.
                if request.transport is not None:
                    request.transport.close()
                return response
            return web.json_response(
                {"error": {"message": f"fault_proxy: upstream unreachable ({type(error).__name__})",
                           "type": "fault_proxy_upstream", "code": 502}}, status=502)
        self._record(n, request, upstream.status, False)
        return response

    async def _open(self, app: web.Application) -> None:
        # auto_decompress off: a compressed answer goes back as the upstream's exact bytes,
        # with its Content-Encoding, instead of being decoded and re-sent under a wrong header.
        self._session = ClientSession(
            connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
        if self._log is not None:
            self._log.close()

    def app(self) -> web.Application:
        # No size limit of our own: the proxy must pass whatever the upstream would accept.
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="An HTTP reverse proxy that answers chosen requests with an error status.")
    parser.add_argument("--upstream", required=True, help="base URL of the real server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-every", type=int, default=0,
                        help="fail every Nth request (1 fails all; 0, the default, none)")
    parser.add_argument("--fail-first", type=int, default=0, help="fail the first M requests")
    parser.add_argument("--fail-after", type=int, default=None,
                        help="fail every request after the Kth (the server goes down)")
    parser.add_argument("--status", type=int, default=503, help="status of a failed request")
    parser.add_argument("--log", default=None, help="append one JSON line per request here")
    args = parser.parse_args(argv)
    try:
        proxy = FaultProxy(args.upstream, fail_every=args.fail_every, fail_first=args.fail_first,
                           fail_after=args.fail_after, status=args.status, log_path=args.log)
    except ValueError as error:
        parser.error(str(error))
    web.run_app(proxy.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
