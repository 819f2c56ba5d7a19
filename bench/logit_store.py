#!/usr/bin/env python
"""Bytes per token of stored top-k logprobs: the ``records`` layout against the compact one.

How to run (from the repository root, in the repo's .venv):

    python bench/logit_store.py [--rows 32] [--max-tokens 128] [--k 3,5]

For each K, the embedded model (llama.cpp, one thread, temperature 0.7) answers ``--rows``
prompts through a ``complete`` stage with ``top_logprobs: K`` (``records`` layout); the same rows
are then converted with :func:`stillroom.data.logit_store.to_compact`. Three stores of the same
numbers are measured:

* ``records``: the ``logprobs`` column as the output folder writes it (inferred Arrow types);
* ``compact``: the four integer columns as the output folder writes them today (Python ints are
  inferred as int64);
* ``compact_narrow``: the same cast to int32 ids and int16 logprobs
  (:func:`stillroom.data.logit_store.narrowed`).

For each: the Parquet file size (zstd, as ``write_table_atomically`` writes) of a table holding
only the logprob columns, and of the whole rows; and the in-memory Arrow size (``Table.nbytes``)
of the logprob columns. ``pairs`` counts the top-k (id, logprob) pairs the teacher gave (K per
token); the goal is ``8 * pairs + 4 * tokens`` bytes (8 bytes per pair plus an int32 id per
generated token), reported as ``goal_bytes`` and ``meets_goal``. Results go to stdout and to
bench/results/logit_store.json.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stillroom import Pipeline
from stillroom.data import logit_store
from stillroom.data.output import OutputFolder
from stillroom.data.tables import rows_to_table
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.stages.complete import Complete

TOPICS = ["photosynthesis", "the French revolution", "binary search", "compound interest",
          "plate tectonics", "the water cycle", "recursion", "supply and demand"]
ASKS = ["Explain {} in two short paragraphs.", "Give three facts about {}.",
        "Write a short quiz question about {} and answer it.", "Summarize {} for a child."]


def prompts(count: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "prompt": ASKS[i % len(ASKS)].format(TOPICS[i // len(ASKS) % len(TOPICS)])}
            for i in range(count)]


def generate(count: int, k: int, max_tokens: int) -> list[dict[str, Any]]:
    stage = Complete(top_logprobs=k, max_tokens=max_tokens, temperature=0.7)
    with tempfile.TemporaryDirectory() as folder:
        Pipeline([stage], input=prompts(count), seed=0,
                 backends={"default": LlamaCppConfig(n_threads=1)}).run(folder, progress=False)
        return OutputFolder(folder).read_rows("data")


def parquet_size(table: pa.Table) -> int:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")  # as write_table_atomically does
    return buffer.tell()


def measure(rows: list[dict[str, Any]], names: list[str], narrow: bool) -> dict[str, int]:
    table = rows_to_table(rows)
    if narrow:
        table = logit_store.narrowed(table, "logprobs")
    store = table.select(names)
    return {"file_bytes_store": parquet_size(store), "file_bytes_rows": parquet_size(table),
            "memory_bytes_store": store.nbytes}


def run_k(count: int, k: int, max_tokens: int) -> dict[str, Any]:
    records = generate(count, k, max_tokens)
    compact = []
    for row in records:
        out = {key: value for key, value in row.items() if key != "logprobs"}
        compact.append({**out, **logit_store.to_compact(row["logprobs"], "logprobs")})
    tokens = sum(len(row["logprobs"]) for row in records)
    pairs = sum(len(e.get("top_logprobs") or []) for row in records for e in row["logprobs"])
    text_bytes = sum(len(row["completion"].encode()) for row in records)
    goal = 8 * pairs + 4 * tokens
    layouts = {
        "records": measure(records, ["logprobs"], narrow=False),
        "compact": measure(compact, logit_store.columns("logprobs"), narrow=False),
        "compact_narrow": measure(compact, logit_store.columns("logprobs"), narrow=True),
    }
    for figures in layouts.values():
        for kind in ("file", "memory"):
            size = figures[f"{kind}_bytes_store"]
            figures[f"{kind}_bytes_per_row"] = round(size / len(records), 1)
            figures[f"{kind}_bytes_per_pair"] = round(size / pairs, 2)
            figures[f"{kind}_meets_goal"] = size <= goal
    return {"k": k, "rows": len(records), "tokens": tokens, "pairs": pairs,
            "completion_text_bytes_per_row": round(text_bytes / len(records), 1),
            "goal_bytes": goal, "goal_bytes_per_pair": round(goal / pairs, 2), "layouts": layouts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", default="3,5")
    args = parser.parse_args()
    results = [run_k(args.rows, int(k), args.max_tokens) for k in args.k.split(",")]
    for result in results:
        print(f"K={result['k']}: {result['rows']} rows, {result['tokens']} tokens, "
              f"{result['pairs']} pairs, text {result['completion_text_bytes_per_row']} B/row; "
              f"goal {result['goal_bytes_per_pair']} B/pair (8 per pair + 4 per token)")
        for name, f in result["layouts"].items():
            print(f"  {name:15s} file {f['file_bytes_per_row']:>9} B/row "
                  f"{f['file_bytes_per_pair']:>7} B/pair {'ok' if f['file_meets_goal'] else '--'}"
                  f" | memory {f['memory_bytes_per_row']:>9} B/row "
                  f"{f['memory_bytes_per_pair']:>7} B/pair "
                  f"{'ok' if f['memory_meets_goal'] else '--'}"
                  f" | whole rows file {f['file_bytes_rows'] / result['rows']:.0f} B/row")
    out = Path(__file__).parent / "results" / "logit_store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
