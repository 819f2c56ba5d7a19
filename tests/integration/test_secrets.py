"""API keys come from the environment and are never written anywhere: outputs, cache, logs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SECRET = "sk-stillroom-test-0123456789-SECRET"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


@pytest.mark.parametrize("validate", [False, True], ids=["accepted", "rejected"])
def test_the_api_key_is_never_written(
    katan: Callable[..., str], tmp_path: Path, isolated_cache: Path, validate: bool
) -> None:
    # Rejected: the server answers 401 and may quote what it received; that must not leak either.
    flags = ("--validate-keys", "--api-keys", "openai=another-key") if validate else ()
    base_url = katan(*flags)
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    stillroom = str(Path(sys.executable).with_name("stillroom"))
    env = {"OPENAI_API_KEY": SECRET, "STILLROOM_CACHE_DIR": str(isolated_cache), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [stillroom, "complete", str(source), "-o", str(out), "--base-url", base_url, "--model", "m",
         "--max-retries", "0", "--no-progress", "--max-failure-rate", "1"],
        capture_output=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET.encode() not in result.stdout + result.stderr
    assert (out / "README.md").exists() and (out / "report.html").exists()
    if validate:
        assert (out / "failed").exists() and list((out / "failed").glob("*.parquet"))
    assert files_containing(out, SECRET.encode()) == []
    assert files_containing(isolated_cache, SECRET.encode()) == []
    assert files_containing(out, b"OPENAI_API_KEY")  # the card names the variable, not its value
