"""API keys come from the environment and are never written anywhere: outputs, cache, logs, terminal.

The attack: a server that answers a bad key with an error that quotes it, whole and in pieces
("Incorrect API key provided: sk-abc...xyz"), as OpenAI's and others' do. The real command runs
against it (openai over aiohttp, openai through its SDK, anthropic through its SDK), then
``stillroom inspect`` reads the folder back; every file under the output folder and the request
cache, and everything printed, is searched for the key and for every 8-character piece of it.
Parquet files are searched decoded too (their pages are compressed: a raw byte search could miss
a key that is there).
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
FRAGMENT = 8  # stillroom.secrets.MIN_FRAGMENT: shorter pieces are not secrets


def new_key(prefix: str = "") -> str:
    """A key no other text in a run contains by chance (random, not a provider's shape unless
    ``prefix`` gives it one: masking must work by value, not by shape)."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(random.SystemRandom().choices(alphabet, k=36))


def pieces(key: str) -> list[str]:
    return [key, *(key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1))]


def file_texts(path: Path) -> Iterator[str]:
    """What a file holds, as text: its bytes, and for Parquet its decoded rows and metadata."""
    raw = path.read_bytes()
    yield raw.decode("latin-1")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception:  # noqa: BLE001 - a half-written shard: its bytes were searched above
            return
        yield json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
        yield str(table.schema.metadata)


def leaks(key: str, roots: list[Path], printed: str) -> list[str]:
    """Where the key or a piece of it was found: file paths, and "printed"."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file() and any(p in text for text in file_texts(path) for p in pieces(key)):
                found.append(str(path))
    if any(p in printed for p in pieces(key)):
        found.append(f"printed: {[p for p in pieces(key) if p in printed][:3]}")
    return found


# -- a server that quotes the key it is given -------------------------------------------------------


def echoed(key: str) -> str:
    return (
        f"Incorrect API key provided: {key}. You can find your API key at "
        f"https://platform.example.com/account/api-keys (you sent {key[:10]}...{key[-8:]}; "
        f"middle {key[9:21]})"
    )


class KeyEchoHandler(BaseHTTPRequestHandler):
    """401 with the received key in the error, in OpenAI's or Anthropic's error format; with
    ``mode = "garbage"``, a 200 whose body is not JSON and quotes the key."""

    mode = "401"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("x-api-key") or ""
        authorization = self.headers.get("Authorization") or ""
        if not key and authorization.startswith("Bearer "):
            key = authorization.removeprefix("Bearer ")
        if self.mode == "garbage":
            status, body = 200, f"<html>proxy error for {key}</html>".encode()
        elif self.path.endswith("/messages"):
            status, body = 401, json.dumps({
                "type": "error",
                "error": {"type": "authentication_error", "message": echoed(key)},
                "received": {"x-api-key": key},
            }).encode()
        else:
            status, body = 401, json.dumps({
                "error": {"message": echoed(key), "type": "invalid_request_error",
                          "param": key, "code": "invalid_api_key"},
            }).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status == 401 else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def key_echo_server() -> Iterator[Callable[[str], str]]:
    """Start the server in this process (the command under test runs in another); returns
    ``http://127.0.0.1:PORT``."""
    servers: list[ThreadingHTTPServer] = []

    def start(mode: str = "401") -> str:
        handler = type("Handler", (KeyEchoHandler,), {"mode": mode})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, env=env, timeout=timeout)


def prompts(tmp_path: Path, n: int = 4) -> Path:
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(n)))
    return source


def base_env(cache: Path, **extra: str) -> dict[str, str]:
    """Nothing of this process's environment (no stray key), but PYTHONPATH: the command runs
    the same code as the test."""
    passed = {name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}
    return {"STILLROOM_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache.parent),
            **passed, **extra}


CASES = {
    # (backend, client, key variable, key prefix, server mode)
    "openai-aiohttp": ("openai", "aiohttp", "OPENAI_API_KEY", "sk-", "401"),
    # A variable whose name says nothing: masked only because the backend registered its value.
    "openai-aiohttp-plain-name": ("openai", "aiohttp", "TEACHER_CRED_VALUE", "", "401"),
    "openai-aiohttp-not-json": ("openai", "aiohttp", "TEACHER_CRED_VALUE", "", "garbage"),
    "openai-sdk": ("openai", "sdk", "TEACHER_CRED_VALUE", "", "401"),
    "anthropic": ("anthropic", None, "ANTHROPIC_API_KEY", "sk-ant-", "401"),
    "anthropic-plain-name": ("anthropic", None, "TEACHER_CRED_VALUE", "", "401"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_key_the_server_echoes_is_written_and_printed_nowhere(
    case: str, key_echo_server: Callable[[str], str], tmp_path: Path, isolated_cache: Path
) -> None:
    backend, client, variable, prefix, mode = CASES[case]
    key = new_key(prefix)
    root = key_echo_server(mode)
    out = tmp_path / "out"
    env = base_env(isolated_cache, **{variable: key})
    common = ["-o", str(out), "--max-retries", "0", "--no-progress", "--max-failure-rate", "1",
              "--no-embeddings"]
    if client == "sdk":  # `stillroom complete` has no option for it: a pipeline file
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(
            f"input: {prompts(tmp_path)}\n"
            "backends:\n"
            f"  teacher: {{kind: openai, model: m, base_url: '{root}/v1', client: sdk,"
            f" api_key_env: {variable}, max_retries: 0}}\n"
            "stages:\n"
            "  - {type: complete, backend: teacher}\n"
        )
        common = [option for option in common if option not in ("--max-retries", "0")]
        result = run(["run", str(pipeline), *common], env)
    else:
        url = f"{root}/v1" if backend == "openai" else root
        result = run(["complete", str(prompts(tmp_path)), "--backend", backend, "-m", "m",
                      "--base-url", url, "--api-key-env", variable, *common], env)
    assert result.returncode == 0, result.stdout + result.stderr
    failed = pq.read_table(out / "failed").to_pylist()
    assert len(failed) == 4 and all(row["error"] for row in failed)
    if mode == "401":
        # The reason is still readable, with the key masked.
        assert {row["error_type"] for row in failed} == {"AuthenticationError"}
        assert all("Incorrect API key provided: ***" in row["error"] for row in failed), failed[0]
    inspected = run(["inspect", str(out)], env)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "failed" in inspected.stdout
    printed = result.stdout + result.stderr + inspected.stdout + inspected.stderr
    assert leaks(key, [out, isolated_cache], printed) == []
    assert (out / "README.md").exists() and (out / "report.html").exists()
    assert variable in (out / "README.md").read_text()  # the card names the variable, not its value


@pytest.mark.parametrize("validate", [False, True], ids=["accepted", "rejected"])
def test_the_api_key_is_never_written_with_llm_katan(
    katan: Callable[..., str], tmp_path: Path, isolated_cache: Path, validate: bool
) -> None:
    """A third-party server (llm-katan); rejected: it answers 401 to the key it was given."""
    key = new_key("sk-")
    flags = ("--validate-keys", "--api-keys", "openai=another-key") if validate else ()
    base_url = katan(*flags)
    out = tmp_path / "out"
    env = base_env(isolated_cache, OPENAI_API_KEY=key)
    result = run(["complete", str(prompts(tmp_path, 5)), "-o", str(out), "--base-url", base_url,
                  "--model", "m", "--max-retries", "0", "--no-progress", "--max-failure-rate", "1",
                  "--no-embeddings"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    if validate:
        assert (out / "failed").exists() and list((out / "failed").glob("*.parquet"))
    inspected = run(["inspect", str(out)], env)
    printed = result.stdout + result.stderr + inspected.stdout + inspected.stderr
    assert leaks(key, [out, isolated_cache], printed) == []
    assert "OPENAI_API_KEY" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("backend", "variable"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_credentials_in_a_base_url_are_refused_before_anything_is_written(
    backend: str, variable: str, key_echo_server: Callable[[str], str], tmp_path: Path,
    isolated_cache: Path,
) -> None:
    key = new_key("sk-")
    host = key_echo_server("401").removeprefix("http://")
    out = tmp_path / "out"
    env = base_env(isolated_cache)  # the key is only in the URL
    url = f"http://user:{key}@{host}" + ("/v1" if backend == "openai" else "")
    result = run(["complete", str(prompts(tmp_path)), "-o", str(out), "--backend", backend,
                  "-m", "m", "--base-url", url, "--no-progress"], env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "base_url" in result.stderr and variable in result.stderr
    assert not out.exists()
    assert leaks(key, [tmp_path], result.stdout + result.stderr) == []


def test_credentials_in_a_pipeline_files_url_are_refused_naming_file_and_line(
    tmp_path: Path, isolated_cache: Path
) -> None:
    key = new_key()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"input: {prompts(tmp_path)}\n"
        "backends:\n"
        f"  teacher: {{kind: openai, model: m, base_url: 'https://{key}@api.example.com/v1'}}\n"
        "stages:\n"
        "  - {type: complete, backend: teacher}\n"
    )
    out = tmp_path / "out"
    result = run(["run", str(pipeline), "-o", str(out), "--no-progress"], base_env(isolated_cache))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{pipeline}:3" in result.stderr and "base_url" in result.stderr
    assert not out.exists()
    printed = result.stdout + result.stderr
    assert leaks(key, [out, isolated_cache], printed) == []


def test_a_base_url_without_http_is_refused_before_any_request(
    tmp_path: Path, isolated_cache: Path
) -> None:
    out = tmp_path / "out"
    result = run(["complete", str(prompts(tmp_path)), "-o", str(out), "-m", "m",
                  "--base-url", "127.0.0.1:8000/v1", "--no-progress"], base_env(isolated_cache))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "http://127.0.0.1:8000/v1" in result.stderr and not out.exists()


# -- secrets a pipeline file or a stage puts in the run itself -----------------------------------

QUERY_KEY = "QzX9secretQueryKey77"
BODY_KEY = "Zq8SecretInBody4242"
BODY_PASSWORD = "hunter2hunter2x"
ENV_SECRET = "Zz9EnvSecretValue1234"
SCRIPT = """\
import os
import sys

from stillroom import Drop, Pipeline
from stillroom.llm import OpenAIConfig
from stillroom.stages import Complete


def gate(row):
    # A filter's reason (and a failure) quoting a secret from the environment.
    if row["n"] == 0:
        return Drop(f"refused by upstream: key {os.environ['MY_API_KEY']} is rate limited")
    if row["n"] == 1:
        raise RuntimeError(f"upstream said key {os.environ['MY_API_KEY']} is rate limited")
    return row


base_url, source, out = sys.argv[1:]
backend = OpenAIConfig(model="echo", base_url=base_url, api_key_env="MY_API_KEY",
                       extra_body={"api_key": "%s", "password": "%s"})
Pipeline([gate, Complete()], input=source, backends={"default": backend}).run(
    out, progress=False, diversity_embeddings=False)
"""


def test_secrets_in_extra_body_a_url_query_and_a_drop_reason_are_written_nowhere(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path, isolated_cache: Path
) -> None:
    """Red-team findings 1 and 2: a backend's extra_body and base_url query were written in plain
    text to the card, report, run.json and complete.json; a drop reason to dropped/. A real run
    against the echo server; every file of the output folder is searched."""
    base_url, _ = echo_server()
    script = tmp_path / "run.py"
    script.write_text(SCRIPT % (BODY_KEY, BODY_PASSWORD))
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"n": i, "prompt": f"question {i}"}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(script), f"{base_url}?key={QUERY_KEY}", str(source), str(out)],
        capture_output=True, text=True, env=base_env(isolated_cache, MY_API_KEY=ENV_SECRET),
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for expected in ("README.md", "report.html", ".stillroom/run.json", ".stillroom/complete.json"):
        assert expected in written
    for kind in ("data", "dropped", "failed"):
        assert any(name.startswith(f"{kind}/") and name.endswith(".parquet") for name in written), kind
    found = {secret: leaks(secret, [out], result.stdout + result.stderr)
             for secret in (QUERY_KEY, BODY_KEY, BODY_PASSWORD, ENV_SECRET)}
    assert found == {secret: [] for secret in found}
    # What explains the run is kept: the reason, masked where the key was.
    dropped = pq.read_table(next((out / "dropped").glob("*.parquet"))).to_pylist()
    assert dropped[0]["drop_reason"] == "refused by upstream: key *** is rate limited"
