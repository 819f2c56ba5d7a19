"""Readers for every input format, and the check pass that names the bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.errors import InputError
from stillroom.pipeline.inputs import InputSource
from stillroom.stages import Complete

ROWS = [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}]


def test_jsonl_parquet_csv_and_datasets_folders_read_the_same_rows(tmp_path: Path) -> None:
    import datasets

    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "r.parquet")
    (tmp_path / "r.csv").write_text("id,prompt\n1,a\n2,b\n")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    for name in ("r.jsonl", "r.parquet", "ds"):
        assert [row for _, row in iter_rows(tmp_path / name)] == ROWS, name
    assert [row for _, row in iter_rows(tmp_path / "r.csv")] == [{"id": "1", "prompt": "a"}, {"id": "2", "prompt": "b"}]
    wheres = [where for where, _ in iter_rows(tmp_path / "r.jsonl")]
    assert wheres == [f"{tmp_path / 'r.jsonl'}:1", f"{tmp_path / 'r.jsonl'}:2"]


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(InputError) as error:
        list(iter_rows(path))
    assert error.value.line == 2 and str(path) in str(error.value)
    path.write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(InputError, match=":2: each line must be a JSON object"):
        list(iter_rows(path))


def test_csv_with_a_short_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,prompt\n1,a\n2\n")
    with pytest.raises(InputError, match=":3:"):
        list(iter_rows(path))


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown input format"):
        list(iter_rows(tmp_path / "x.txt"))
    with pytest.raises(InputError, match="no such file"):
        list(iter_rows(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        (['{"prompt": "a"}', '{"text": "b"}'], 2, "needs a `prompt` or `messages`"),
        (['{"prompt": "a"}', '{"prompt": 5}'], 2, "holds number here but text"),
        (['{"prompt": ""}'], 1, "`prompt` is empty"),
        (['{"messages": [{"role": "user"}]}'], 1, "role` and `content`"),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], 1, "robot"),
        (['{"id": 1, "prompt": "a"}', '{"id": "two", "prompt": "b"}'], 2, "column 'id'"),
    ],
)
def test_check_pass_names_the_bad_row(tmp_path: Path, lines: list[str], line: int, needle: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as error:
        InputSource(str(path), tmp_path).check(Complete().check_row)
    assert f"in.jsonl:{line}" in str(error.value) and needle in str(error.value)


def test_builtin_seed_tasks_ship_with_the_package() -> None:
    path = resolve_input_path("builtin:self_instruct_seed_tasks")
    rows = [row for _, row in iter_rows(path)]
    assert len(rows) == 175 and sum(r["is_classification"] for r in rows) == 26
    with pytest.raises(InputError, match="unknown built-in"):
        resolve_input_path("builtin:nope")
