"""The fault server itself (stillroom.testing.fault_server): each fault comes out as specified,
predictably, only where it is asked for. The other test_integrity_* files prove something only
if this holds."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

import pytest

from stillroom.testing.fault_server import FAULTS, Faults, fault_for
from tests.integrity_helpers import Server

pytestmark = pytest.mark.integration



def ask(server: Server, prompt: str, *, chat: bool = True, key: str | None = None
        ) -> tuple[int | str, dict[str, str], bytes]:
    """(status or the exception's name, headers, body) of one request."""
    host, port = server.base_url.removeprefix("http://").split("/")[0].split(":")
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"model": "m"}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (http.client.HTTPException, ConnectionError) as error:
        return type(error).__name__, {}, b""
    finally:
        connection.close()


def text_of(body: bytes) -> str:
    choice = json.loads(body)["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def test_each_fault(fault_server: Callable[..., Server]) -> None:
    """One server, each fault (and a proper answer) a seventh of the prompts: a prompt is picked
    for each outcome with fault_for, and asked."""
    rates = {f"rate_{name}": 1 / 7 for name in FAULTS}
    faults = Faults(seed=2, retry_after="86400", **rates)
    server = fault_server(seed=2, retry_after="86400", **rates)
    pick: dict[str | None, str] = {}
    for i in range(500):
        pick.setdefault(fault_for(faults, f"p{i}", 0, 1), f"p{i}")
    assert set(pick) == {None, *FAULTS}

    status, _, body = ask(server, pick[None])
    assert status == 200 and text_of(body) == f"echo: {pick[None]}"
    status, headers, _ = ask(server, pick["429"])
    assert status == 429 and headers.get("Retry-After") == "86400"
    assert ask(server, pick["500"])[0] == 500
    assert ask(server, pick["drop"])[0] == "IncompleteRead"
    status, _, body = ask(server, pick["empty"])
    assert status == 200 and text_of(body) == ""
    status, _, body = ask(server, pick["nonjson"])
    assert status == 200 and body.startswith(b"<html>")
    status, _, body = ask(server, pick["401"], key="sk-abc")
    assert status == 401 and b"Bearer sk-abc" in body
    healthy = fault_server()
    status, _, body = ask(healthy, "raw", chat=False)
    assert status == 200 and text_of(body) == "echo: raw"


def test_where_faults_apply_and_the_log(fault_server: Callable[..., Server]) -> None:
    # Only prompts with the text; only the first K requests.
    matching = fault_server(rate_500=1, match="bad")
    assert [ask(matching, p)[0] for p in ("good 1", "bad 1", "good 2")] == [200, 500, 200]
    first = fault_server(rate_500=1, first_k=2)
    assert [ask(first, f"p{i}")[0] for i in range(4)] == [500, 500, 200, 200]
    # Sticky: a faulty prompt fails on every attempt; not sticky: attempts draw anew.
    sticky = fault_server(rate_500=0.5, sticky=True, seed=4)
    assert len({ask(sticky, "again")[0] for _ in range(6)}) == 1
    # The server decides as fault_for predicts, and logs each request without the key.
    faults = Faults(seed=9, rate_500=0.3, rate_empty=0.3)
    server = fault_server(latency_ms=(1, 5), seed=9, rate_500=0.3, rate_empty=0.3)
    prompts = [f"q{i % 7}" for i in range(20)]
    for prompt in prompts:
        ask(server, prompt, key="sk-secret-value")
    attempts: dict[str, int] = {}
    for number, (prompt, entry) in enumerate(zip(prompts, server.entries(), strict=True), 1):
        attempt = attempts.get(prompt, 0)
        attempts[prompt] = attempt + 1
        assert entry["prompt"] == prompt and entry["n"] == number and entry["attempt"] == attempt
        assert entry["fault"] == fault_for(faults, prompt, attempt, number)
        assert entry["status"] == (500 if entry["fault"] == "500" else 200) and entry["auth"]
    assert {e["fault"] for e in server.entries()} == {None, "500", "empty"}
    assert b"sk-secret-value" not in server.log.read_bytes()
