from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.servers import echo_command, free_port, katan_command, running


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own request cache: no answer leaks from one test into another."""
    cache = tmp_path / "request-cache"
    monkeypatch.setenv("STILLROOM_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One GGUF model cache (stillroom.llm.gguf_dense) for the whole session: the embedded GGUF
    is de-quantized once (~16 s on 2 cores) and every later load of it, in this process or in
    a CLI run it starts (which inherits the environment), reads the saved folder; nothing is
    written to the user's own cache. A test may point the variable elsewhere with monkeypatch.
    Run with ``STILLROOM_MODEL_CACHE=off`` to check (or time) the uncached loads instead."""
    folder = tmp_path_factory.mktemp("gguf-dense")
    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("STILLROOM_MODEL_CACHE", "").strip().lower() != "off":
            patch.setenv("STILLROOM_MODEL_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2's tokenizer as a transformers tokenizer folder, converted from the GGUF
    once per session: the conversion takes 5-15 s on 2 cores and a dozen test modules need the
    tokenizer, while loading the saved folder takes a fraction of a second. The copy is the same
    tokenizer (vocabulary, merges, special tokens, chat template). Tests only read the folder;
    each load gives its own tokenizer object, so no test sees another's changes to it."""
    import transformers

    from stillroom.llm.transformers_backend import locate

    folder, gguf = locate(None)
    saved = tmp_path_factory.mktemp("smollm2-tokenizer")
    transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(saved)
    return saved


@pytest.fixture
def katan(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start llm-katan (echo backend) with the given failure flags; returns its base URL."""
    with ExitStack() as stack:

        def start(*flags: str, providers: str = "openai", env: dict[str, str] | None = None) -> str:
            port = free_port()
            log = tmp_path / f"katan-{port}.log"
            stack.enter_context(
                running(katan_command(port, tmp_path / f"stats-{port}.json", *flags, providers=providers),
                        port, log, env=env)
            )
            return f"http://127.0.0.1:{port}/v1"

        yield start


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Start stillroom's echo server; returns (base URL, request log path)."""
    with ExitStack() as stack:

        def start(latency_ms: float = 0.0) -> tuple[str, Path]:
            port = free_port()
            log = tmp_path / f"echo-requests-{port}.jsonl"
            stack.enter_context(running(echo_command(port, latency_ms, log), port, tmp_path / f"echo-{port}.log"))
            return f"http://127.0.0.1:{port}/v1", log

        yield start


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start stillroom's fault-injecting server (see tests/integrity_helpers.py); returns a
    function that starts one with the given faults and gives its ``Server`` handle."""
    from tests.integrity_helpers import fault_servers

    yield from fault_servers(tmp_path)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Ray for a test module (the executor uses a session it finds open and leaves
    it); its workers can import the test modules by name (their stages are defined there)."""
    ray = pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    root = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, _temp_dir=str(temp), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    yield ray
    ray.shutdown()
