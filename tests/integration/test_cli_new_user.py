"""The CLI as a new user meets it, run as a subprocess whose stdout is a pipe (as when piped to a
file): `run --concurrency`, cost at the end of a run and in `inspect`, `inspect --json`, example
row ids per failure and drop reason, tables not cut at 80 columns, and no library progress bars
without `-v`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
LONG_ID = "row-with-a-rather-long-identifier-that-must-stay-whole-when-piped-to-a-file-1"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STILLROOM, *args], capture_output=True, text=True, timeout=timeout)


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def inspect_json(out: Path) -> dict[str, object]:
    result = cli("inspect", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_run_concurrency_is_requests_in_flight_and_cost_is_shown(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # One second per answer and a pipeline that allows one request at a time: six rows take six
    # seconds, unless --concurrency 6 puts all six in flight at once.
    base_url, requests_log = echo_server(latency_ms=1000)
    write_rows(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(6)])
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "input: prompts.jsonl\n"
        "backends:\n"
        f"  teacher: {{kind: openai, model: echo, base_url: '{base_url}', concurrency: 1,\n"
        "            input_price: 2.0, output_price: 10.0}\n"
        "stages:\n"
        "  - {type: complete, backend: teacher}\n"
    )
    out = tmp_path / "out"
    result = cli("run", str(pipeline), "-o", str(out), "--concurrency", "6", "--no-embeddings",
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    sent = [json.loads(line)["t"] for line in requests_log.read_text().splitlines()]
    assert len(sent) == 6
    assert max(sent) - min(sent) < 1.0  # all in flight together (one at a time: >= 5 s apart)

    document = inspect_json(out)
    stats = document["backends"]["teacher"]
    expected = (stats["prompt_tokens"] * 2.0 + stats["completion_tokens"] * 10.0) / 1e6
    assert stats["prompt_tokens"] > 0 and stats["cost"] == pytest.approx(expected)
    assert document["cost"] == pytest.approx(expected)
    assert f"estimated cost: {expected:,.4f}" in result.stdout
    assert f"estimated cost: {expected:,.4f}" in cli("inspect", str(out)).stdout


def test_inspect_json_examples_and_wide_tables_without_a_price(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # Failures: a server nobody listens on. No price is set: no cost line, and cost is null.
    source = write_rows(tmp_path / "prompts.jsonl",
                        [{"id": LONG_ID, "prompt": "a"}, {"id": "second", "prompt": "b"},
                         {"prompt": "no id"}])
    failed_out = tmp_path / "failed-out"
    result = cli("complete", str(source), "-o", str(failed_out), "--base-url",
                 "http://127.0.0.1:9/v1", "-m", "m", "--max-retries", "0", "--max-failure-rate", "1",
                 "--no-embeddings", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "cost" not in result.stdout
    # The long id stays whole on one line of the failures table (rich would cut it at 80).
    assert any(LONG_ID in line and "APIConnectionError" in line
               for line in result.stdout.splitlines()), result.stdout
    document = inspect_json(failed_out)
    assert document["counts"] == {"data": 0, "failed": 3, "dropped": 0}
    assert document["cost"] is None and document["backends"]["default"]["cost"] is None
    (failure,) = document["failures_by_reason"]
    assert failure["reason"] == "complete: APIConnectionError" and failure["rows"] == 3
    # The row without an id is found by its shard and position.
    # The three rows fail at once, so they are committed in any order.
    ids = failure["example_ids"]
    assert sorted(i for i in ids if not i.startswith("failed/")) == sorted([LONG_ID, "second"])
    assert [i for i in ids if i.startswith("failed/")][0] in {
        f"failed/part-00000.parquet row {n}" for n in range(3)}
    assert len(ids) == 3
    assert {example["id"] for example in document["failure_examples"]} == {LONG_ID, "second", None}

    # Drops, from the heuristic filter (no model): each reason with the ids of its rows.
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"id": LONG_ID, "prompt": "Say hi.", "completion": ""},
        {"id": "kept", "prompt": "Say hi.", "completion": "Hello there, how are you today?"},
    ])
    dropped_out = tmp_path / "dropped-out"
    assert cli("filter", str(rows), "-o", str(dropped_out), "--heuristics").returncode == 0
    document = inspect_json(dropped_out)
    assert document["counts"] == {"data": 1, "failed": 0, "dropped": 1}
    assert document["drops_by_reason"] == [
        {"reason": "heuristic_filter: empty: the completion is empty", "rows": 1,
         "example_ids": [LONG_ID]},
    ]
    assert document["stages"]["heuristic_filter"]["rows_in"] == 2
    assert [row["id"] for row in document["samples"]] == ["kept"]
    shown = cli("inspect", str(dropped_out)).stdout
    assert any(LONG_ID in line and "the completion is empty" in line for line in shown.splitlines())


@pytest.mark.timeout(180)
def test_no_library_progress_bars_or_logs_without_verbose(tmp_path: Path) -> None:
    # The cheapest verb that loads a transformers model: --ifd on a tiny Llama saved in shards.
    from tests.tiny_models import byte_tokenizer, tiny_llama

    model = tmp_path / "tiny"
    tokenizer = byte_tokenizer(bos=True)
    tiny_llama(tokenizer, max_positions=256).save_pretrained(model, max_shard_size="100KB")
    tokenizer.save_pretrained(model)
    rows = write_rows(tmp_path / "rows.jsonl", [
        {"id": "a", "instruction": "Name a fruit.", "input": "", "output": "An apple, or a pear."},
        {"id": "b", "instruction": "Name a city.", "input": "", "output": "Paris, in France."},
    ])
    args = ["filter", str(rows), "-o", str(tmp_path / "out"), "--ifd", "--ifd-model", str(model),
            "--ifd-top-k", "1", "--overwrite", "--no-progress"]
    # Before cli/quiet.py, stderr held transformers' "Loading weights: 100%|...| 21/21" bar (and
    # "Converting and de-quantizing GGUF tensors" for the embedded model); with -v it still does
    # (test_cli_options.py checks that -v leaves the libraries alone).
    quiet = cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # no "Loading weights", tqdm bar or transformers warning
    assert "ifd: kept 1 of 2 rows" in quiet.stdout
