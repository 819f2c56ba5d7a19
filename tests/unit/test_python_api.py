"""The Python API as a user writes it: ``Complete(json_schema=Model)``, ``Pipeline(input=rows or a
Dataset)``, ``result.dataset``; against the scripted backend (tests/fakes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from pydantic import BaseModel

from stillroom import Pipeline
from stillroom.api import build_stage, run_stage
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, InputError, OutputFolderError
from stillroom.pipeline.stage import Drop, Row
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows


class Step(BaseModel):
    explanation: str
    output: str


class Solution(BaseModel):
    """A worked answer."""

    steps: list[Step]
    final_answer: str
    confidence: float | None = None


@pytest.fixture(autouse=True)
def fresh_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend()
    fakes.CURRENT["default"] = backend
    return backend


def pipeline(stages: list[Any], data: Any) -> Pipeline:
    return Pipeline(stages, input=data, backends={"default": ScriptedConfig()})


def read(out: Path, kind: str = "data") -> list[Row]:
    return OutputFolder(out).read_rows(kind)


# -- Complete(json_schema=Model) --------------------------------------------------------------------


def test_a_model_class_becomes_its_strict_schema_and_the_config_stays_json() -> None:
    stage = Complete(json_schema=Solution)
    schema = stage.json_schema
    assert schema is not None
    assert schema["title"] == "Solution"  # where the class's name goes
    # OpenAI's strict mode: every object closed, every property required (nullable if optional).
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["confidence", "final_answer", "steps"]
    assert schema["$defs"]["Step"]["additionalProperties"] is False
    assert schema["properties"]["steps"]["items"] == {"$ref": "#/$defs/Step"}
    # The identity (fingerprint) and the card's config are plain JSON, the same as for the dict.
    identity = json.loads(json.dumps(stage.identity()))
    assert identity == Complete(json_schema=schema).identity()


def test_the_complete_verb_takes_a_model_and_a_dataset(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    from stillroom.api import complete

    fresh_backend.script = lambda request, attempt: json.dumps(
        {"steps": [], "final_answer": "4", "confidence": 1.0})
    result = complete(datasets.Dataset.from_list(rows(2)), tmp_path / "out",
                      backend=ScriptedConfig(), json_schema=Solution, progress=False)
    assert result.dataset["completion_json"] == [
        {"steps": [], "final_answer": "4", "confidence": 1.0}] * 2
    assert fresh_backend.calls[0].params.json_schema["title"] == "Solution"


def test_a_model_instance_is_a_config_error_naming_json_schema() -> None:
    with pytest.raises(ConfigError, match="json_schema.*pass the class itself"):
        build_stage(Complete, json_schema=Solution(steps=[], final_answer="4"))
    with pytest.raises(ConfigError, match="json_schema"):  # a class, but not a pydantic model
        build_stage(Complete, json_schema=Path)


async def test_the_schema_sent_is_the_strict_one_and_the_answer_is_parsed(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    answer = {"steps": [{"explanation": "2+2", "output": "4"}], "final_answer": "4",
              "confidence": None}
    fresh_backend.script = lambda request, attempt: json.dumps(answer)
    result = await pipeline([Complete(json_schema=Solution)], rows(2)).arun(
        tmp_path / "out", progress=False)
    assert fresh_backend.calls[0].params.json_schema == Complete(json_schema=Solution).json_schema
    assert [row["completion_json"] for row in read(result.out)] == [answer, answer]
    assert Solution.model_validate(read(result.out)[0]["completion_json"]).steps[0].output == "4"


async def test_an_answer_off_the_schema_of_a_nested_model_goes_to_failed(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    def script(request: Any, attempt: int) -> str:
        step = {"explanation": "e"} if request.messages[0]["content"] == "p1" else \
            {"explanation": "e", "output": "o"}
        return json.dumps({"steps": [step], "final_answer": "4", "confidence": 0.5})

    fresh_backend.script = script
    result = await pipeline([Complete(json_schema=Solution)], rows(2)).arun(
        tmp_path / "out", progress=False, max_failure_rate=1.0)
    assert [row["id"] for row in read(result.out)] == ["r0"]
    (failed,) = read(result.out, "failed")
    assert failed["id"] == "r1" and failed["error_type"] == "InvalidStructuredOutput"
    assert "'output' is a required property" in failed["error"]


# -- rows in memory ---------------------------------------------------------------------------------


def test_a_dataset_runs_like_the_same_list_and_resumes_it(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    source = rows(6)
    dataset = datasets.Dataset.from_list(source).with_format("numpy")  # reset to plain rows
    out = tmp_path / "out"
    result = pipeline([Complete()], dataset).run(out, progress=False, limit=4)
    assert result.counts["data"] == 4 and len(fresh_backend.calls) == 4
    # The same rows as a list are the same run: a resume, no new request.
    pipeline([Complete()], source).run(out, progress=False, limit=4)
    assert len(fresh_backend.calls) == 4
    assert [row["completion"] for row in read(out)] == [f"answer to p{i} #0" for i in range(4)]


def test_a_shuffled_selection_of_a_dataset_runs_in_its_own_order(tmp_path: Path) -> None:
    data = datasets.Dataset.from_list(rows(2500)).shuffle(seed=3).select(range(1200, 2300))
    fed: list[str] = []

    def note(row: Row) -> Row:
        fed.append(row["id"])
        return row

    result = run_stage(note, data, tmp_path / "out", progress=False)
    assert fed == data["id"]  # read in batches, across batch borders, in the Dataset's order
    assert sorted(result.dataset["id"]) == sorted(data["id"])


def test_other_rows_are_a_different_run_unless_overwrite(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    out = tmp_path / "out"
    pipeline([Complete()], rows(3)).run(out, progress=False)
    changed = rows(3)
    changed[2]["prompt"] = "another question"
    with pytest.raises(OutputFolderError):
        pipeline([Complete()], changed).run(out, progress=False)
    pipeline([Complete()], changed).run(out, progress=False, overwrite=True)
    assert read(out)[2]["completion"] == "answer to another question #0"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["not a row"], "input: row 1: a row must be a mapping, got str"),
        ([{"question": "no prompt"}], "input: row 1: "),
        ([{"messages": "hi"}], "input: row 1: "),
    ],
)
def test_a_bad_row_is_a_config_error_naming_its_index(
    tmp_path: Path, fresh_backend: ScriptedBackend, bad: list[Any], message: str
) -> None:
    data = [{"prompt": "fine"}, *bad]
    with pytest.raises(ConfigError) as caught:
        pipeline([Complete()], data).run(tmp_path / "out", progress=False)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, InputError)  # what a bad line of a file raises, too
    assert fresh_backend.calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": "one row"}, "got one row"),
        (iter([{"prompt": "a"}]), "got generator|got list_iterator"),
        (42, "got int"),
        (datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(1))}),
         r"input=dataset\['train'\]"),
    ],
)
def test_an_input_of_another_kind_is_refused_when_the_pipeline_is_built(
    data: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        pipeline([Complete()], data)
    assert caught.value.key == "input"


def test_an_empty_list_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input: no rows"):
        pipeline([Complete()], []).run(tmp_path / "out", progress=False)


def test_a_stage_changing_its_row_in_place_leaves_the_callers_rows_as_they_were(
    tmp_path: Path,
) -> None:
    def tag(row: Row) -> Row:
        row["prompt"] += " (tagged)"
        row.setdefault("metadata", {})["seen"] = True
        return row

    data = [{"id": "a", "prompt": "q", "metadata": {"source": "x"}}]
    out = tmp_path / "out"
    Pipeline([tag], input=data).run(out, progress=False)
    assert data == [{"id": "a", "prompt": "q", "metadata": {"source": "x"}}]
    Pipeline([tag], input=data).run(out, progress=False)  # still the same run: it resumes
    assert read(out)[0]["prompt"] == "q (tagged)"


def test_run_stage_takes_a_dataset(tmp_path: Path) -> None:
    result = run_stage(lambda row: {**row, "n": len(row["prompt"])},
                       datasets.Dataset.from_list(rows(3)), tmp_path / "out", progress=False)
    assert result.dataset["n"] == [2, 2, 2]


# -- result.dataset ---------------------------------------------------------------------------------


def test_result_datasets_read_every_shard_in_row_order(tmp_path: Path) -> None:
    def sort_out(row: Row) -> Row | Drop:
        i = int(row["id"][1:])
        if i % 4 == 3:
            return Drop("fourth")
        if i % 5 == 4:
            raise ValueError("fifth")
        return {**row, "i": i}

    # flush_rows=7: several shards in each folder.
    result = Pipeline([sort_out], input=rows(40)).run(
        tmp_path / "out", progress=False, flush_rows=7, max_failure_rate=1.0)
    assert len(OutputFolder(result.out).shard_paths("data")) > 1
    data = result.dataset
    assert isinstance(data, datasets.Dataset)
    assert data.to_list() == read(result.out)
    assert len(data) == result.counts["data"] == 24
    assert result.dropped["drop_reason"] == ["fourth"] * 10
    assert [row["id"] for row in result.failed] == [row["id"] for row in read(result.out, "failed")]
    assert len(result.failed) == 6


def test_an_empty_data_folder_is_an_empty_dataset(tmp_path: Path) -> None:
    result = Pipeline([lambda row: Drop("none kept")], input=rows(2)).run(
        tmp_path / "out", progress=False)
    assert len(result.dataset) == 0 and len(result.dropped) == 2


def test_rows_in_memory_do_not_travel_to_every_ray_worker_in_its_spec() -> None:
    """Ray's workers get rows in batches; the spec each actor gets holds the stages, not the
    input (20 MB of rows would otherwise be copied to every actor)."""
    import pickle

    from stillroom.pipeline.ray_executor import WorkerSpec, pickle_spec

    data = datasets.Dataset.from_list([{"prompt": f"{i} " * 500} for i in range(2000)])
    built = pipeline([Complete(json_schema=Solution)], data)
    blob = pickle_spec(WorkerSpec(built, 0, True, "/tmp/cache", 4))
    assert len(blob) < 100_000
    spec = pickle.loads(blob)
    assert spec.pipeline.input is None and built.input is data
    assert spec.pipeline.stages[0].json_schema["title"] == "Solution"


# -- rows in memory: the fingerprint -----------------------------------------------------------------


def _digest_in_a_process(hash_seed: str) -> str:
    import os
    import subprocess
    import sys

    code = ("from stillroom.pipeline.inputs import _rows_digest; "
            "print(_rows_digest([{'prompt': 'p', 'tags': {'alpha', 'beta', 'gamma', 'delta'}}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": hash_seed})
    return done.stdout.strip()


def test_a_set_has_one_digest_in_every_process_and_is_written_sorted(tmp_path: Path) -> None:
    # A set's order follows PYTHONHASHSEED: its str() made a resume of the same rows refused.
    assert len({_digest_in_a_process(seed) for seed in ("1", "2", "3", "4")}) == 1
    out = tmp_path / "out"
    pipeline([Complete()], [{"prompt": "p", "tags": {"c", "a", "b"}}]).run(out, progress=False)
    assert read(out)[0]["tags"] == ["a", "b", "c"]  # what the digest encodes


def test_numpy_arrays_are_fingerprinted_and_written_whole(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    import numpy as np

    first, second = np.zeros(2000), np.zeros(2000)
    second[1000] = 7.0  # str() elides the middle: both printed the same
    out = tmp_path / "out"
    pipeline([Complete()], [{"prompt": "p", "emb": first}]).run(out, progress=False)
    with pytest.raises(OutputFolderError):
        pipeline([Complete()], [{"prompt": "p", "emb": second}]).run(out, progress=False)
    grid = np.arange(4, dtype=np.int32).reshape(2, 2)
    pipeline([Complete()], [{"prompt": "p", "emb": second, "grid": grid, "n": np.int64(3)}]).run(
        out, progress=False, overwrite=True)
    row = read(out)[0]
    assert row["emb"][1000] == 7.0 and row["grid"] == [[0, 1], [2, 3]] and row["n"] == 3


def test_nan_and_none_are_different_rows_and_json_rows_keep_their_digest() -> None:
    import hashlib

    import orjson

    from stillroom.pipeline.inputs import _rows_digest

    assert _rows_digest([{"x": float("nan")}]) != _rows_digest([{"x": None}])
    assert _rows_digest([{"x": [float("inf")]}]) != _rows_digest([{"x": [float("-inf")]}])
    plain = [{"prompt": "p", "n": 1, "f": 0.5, "l": [None, True], "m": {"b": "x", "a": {}}}]
    expected = hashlib.sha256(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert _rows_digest(plain) == expected  # a resume of a run made before keeps working
    assert _rows_digest(plain) == _rows_digest(datasets.Dataset.from_list(plain))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "got object in row 1 (at 'v')"),
        ({1: "x"}, "got a dict key of type int (1) in row 1 (at 'v'); a dict's keys must be text"),
        ([{"ok": 1}, {"deep": {object()}}], "got object in row 1 (at 'v[1].deep{}')"),
    ],
)
def test_a_value_that_is_not_json_like_is_a_config_error_naming_its_row(
    tmp_path: Path, fresh_backend: ScriptedBackend, value: Any, message: str
) -> None:
    data = [{"prompt": "fine"}, {"prompt": "a", "v": value}]
    with pytest.raises(ConfigError) as caught:
        pipeline([Complete()], data).run(tmp_path / "out", progress=False)
    assert "rows given in memory must hold JSON-like values" in str(caught.value)
    assert message in str(caught.value)
    assert fresh_backend.calls == [] and not (tmp_path / "out").exists()


# -- api.select with the inputs a Pipeline takes -----------------------------------------------------


def test_select_takes_an_input_config_and_a_tuple(tmp_path: Path) -> None:
    from stillroom.api import select
    from stillroom.pipeline.inputs import InputConfig

    data = [{"prompt": f"p{i}", "completion": f"c{i}", "score": float(i)} for i in range(6)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    quality = {"column": "score", "min": 2}
    options: dict[str, Any] = {"progress": False, "overwrite": True}
    result = select(InputConfig(path=str(path), limit=4), tmp_path / "a", quality=quality,
                    **options)
    assert result.counts == {"data": 2, "failed": 0, "dropped": 2}
    assert select(tuple(data), tmp_path / "b", quality=quality, **options).counts["data"] == 4
    with pytest.raises(ConfigError, match="'nope' is not in"):
        select(InputConfig(path=str(path), limit=4), tmp_path / "c",
               quality={"column": "nope", "min": 2}, **options)
