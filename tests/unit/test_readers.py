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


# -- damaged, empty and unreadable inputs: an InputError naming the file (and line) ------------


def test_an_input_with_no_rows_is_an_error_naming_the_file(tmp_path: Path) -> None:
    from stillroom.errors import ConfigError

    for name, text in (("e.jsonl", ""), ("blank.jsonl", "\n \n"), ("h.csv", "prompt\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match="no rows") as error:
            InputSource(str(tmp_path / name), tmp_path).check(None)
        assert error.value.path == str(tmp_path / name)
    with pytest.raises(InputError, match="no rows"):
        InputSource([], tmp_path).check(None)
    with pytest.raises(ConfigError, match="no input") as missing:
        InputSource(None, tmp_path)
    assert missing.value.key == "input"


def test_a_csv_that_is_not_utf8_names_its_line_and_a_bom_is_not_a_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,prompt\n1,hello\n2,caf\xe9\n")
    with pytest.raises(InputError, match=r"latin1\.csv:3: not UTF-8 text \(byte 0xe9 at column 6\)"):
        list(iter_rows(path))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt\nhi\n")
    assert [row for _, row in iter_rows(tmp_path / "bom.csv")] == [{"prompt": "hi"}]


def test_a_truncated_or_damaged_gzip_names_the_file_and_the_last_good_line(tmp_path: Path) -> None:
    import gzip

    lines = b"".join(json.dumps({"prompt": f"row {i} " * 10}).encode() + b"\n" for i in range(300))
    packed = gzip.compress(lines)
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    seen: list[str] = []
    with pytest.raises(InputError, match="truncated or damaged") as error:
        seen.extend(where for where, _ in iter_rows(path))
    assert error.value.path == str(path)
    assert f"after line {len(seen)}, the last one read whole" in str(error.value) and seen
    path.write_bytes(packed[:10] + b"\xff" * 40 + packed[50:])  # damaged inside the stream
    with pytest.raises(InputError, match="truncated or damaged"):
        list(iter_rows(path))
    path.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(InputError, match="before its first line"):
        list(iter_rows(path))


def test_any_other_read_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a"}\n')

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(InputError, match="cannot read: Permission denied") as error:
        list(iter_rows(path))
    assert error.value.path == str(path)


def test_the_run_reads_only_the_rows_it_checked_and_notices_a_changed_input(tmp_path: Path) -> None:
    import json

    from stillroom.errors import InputError
    from stillroom.pipeline.inputs import InputSource

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(3)))
    source = InputSource(str(path), tmp_path)
    assert source.check(None) == 3
    with open(path, "a") as handle:  # appended while the run reads it
        handle.write(json.dumps({"prompt": "late"}) + "\n" + "not json\n")
    assert [row["prompt"] for _, row in source.rows()] == ["p0", "p1", "p2"]
    with pytest.raises(InputError, match="changed while the run read it"):
        source.verify_unchanged()


def test_a_metadata_column_that_is_not_an_object_is_refused_before_any_request(tmp_path: Path) -> None:
    import json

    from stillroom.errors import InputError
    from stillroom.pipeline.inputs import InputSource

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p", "metadata": "source=web"}) + "\n")
    with pytest.raises(InputError, match=r"in\.jsonl:1: column 'metadata' holds text"):
        InputSource(str(path), tmp_path).check(None)


def test_a_parquet_folder_is_fingerprinted_by_its_own_files_only(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stillroom.pipeline.inputs import InputSource

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"prompt": ["a", "b"]}), folder / "part-0.parquet")
    first = InputSource(str(folder), tmp_path)
    first.check(None)
    (folder / "out" / "data").mkdir(parents=True)  # an output folder made inside the input
    pq.write_table(pa.table({"x": [1]}), folder / "out" / "data" / "part-00000.parquet")
    second = InputSource(str(folder), tmp_path)
    second.check(None)
    assert first.identity() == second.identity()
