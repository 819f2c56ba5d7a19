"""The Python API against a real local server (stillroom's echo server, which answers "echo: <the
user message>"): a nested pydantic model as ``json_schema``, rows given as a list or a Dataset,
resumed without a new request, and read back with ``result.dataset``; on Ray too (a model
class from a module with postponed annotations, like this one, would not pickle to the workers
by value: the stage keeps only its schema)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
from pydantic import BaseModel

from stillroom import Pipeline
from stillroom.errors import OutputFolderError
from stillroom.llm import OpenAIConfig
from stillroom.stages import Complete

pytestmark = pytest.mark.integration


class Step(BaseModel):
    explanation: str
    output: str


class Solution(BaseModel):
    steps: list[Step]
    final_answer: str
    check: Step | None = None


GOOD = {"steps": [{"explanation": "add", "output": "4"}], "final_answer": "4",
        "check": {"explanation": "4-2", "output": "2"}}
NO_CHECK = {**GOOD, "check": None}
MISSING = {"steps": [{"explanation": "add"}], "final_answer": "4", "check": None}  # no `output`


def prompts() -> list[dict[str, Any]]:
    """Rows whose prompt is the JSON the echo server will send back (after "echo: ")."""
    return [{"id": name, "prompt": json.dumps(value)}
            for name, value in (("good", GOOD), ("no_check", NO_CHECK), ("missing", MISSING))]


def sent(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["body"] for line in log.read_text().splitlines()]


def run(data: Any, url: str, out: Path, **options: Any) -> Any:
    backend = OpenAIConfig(model="echo", base_url=url, max_retries=0)
    return Pipeline([Complete(backend="echo", json_schema=Solution)], input=data,
                    backends={"echo": backend}).run(out, progress=False, max_failure_rate=1.0,
                                                    **options)


def test_a_nested_model_a_list_of_rows_a_resume_and_the_dataset(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    url, log = echo_server()
    out = tmp_path / "out"
    result = run(prompts(), url, out)

    body = sent(log)[0]
    format_ = body["response_format"]
    assert format_["type"] == "json_schema" and format_["json_schema"]["strict"] is True
    schema = format_["json_schema"]["schema"]
    assert schema["$defs"]["Step"]["additionalProperties"] is False
    assert schema["properties"]["check"]["anyOf"] == [{"$ref": "#/$defs/Step"}, {"type": "null"}]

    data = result.dataset
    # A folder's rows are in the order their answers arrived (concurrent requests): compared by id.
    assert isinstance(data, datasets.Dataset) and sorted(data["id"]) == ["good", "no_check"]
    solutions = dict(zip(data["id"], data["completion_json"], strict=True))
    assert {name: Solution.model_validate(value) for name, value in solutions.items()} == {
        "good": Solution.model_validate(GOOD), "no_check": Solution.model_validate(NO_CHECK)}
    failed = {row["id"]: row for row in result.failed}
    assert list(failed) == ["missing"]
    # Off the schema: asked again (the echo server then answers the re-ask, no JSON), then failed.
    assert failed["missing"]["error_type"] == "InvalidStructuredOutput"

    # The run's config, as the card and the completion record keep it, is plain JSON.
    config = json.loads((out / ".stillroom" / "complete.json").read_text())["config"]
    assert config["stages"][0]["json_schema"] == Complete(json_schema=Solution).json_schema
    assert config["stages"][0]["json_schema"]["title"] == "Solution"

    # The same rows again (as a Dataset this time): a resume, not one request more.
    requests = len(sent(log))
    again = run(datasets.Dataset.from_list(prompts()), url, out)
    assert len(sent(log)) == requests
    assert again.dataset.to_list() == data.to_list()

    # Other rows: another run, refused unless overwrite.
    changed = prompts()[:2]  # without the row that failed
    with pytest.raises(OutputFolderError):
        run(changed, url, out)
    assert run(changed, url, out, overwrite=True).counts == {"data": 2, "failed": 0, "dropped": 0}


# -- the same on Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, _temp_dir=str(temp), include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
def test_on_ray_the_rows_of_a_dataset_reach_the_workers(
    local_ray: Any, echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    url, log = echo_server()
    rows = datasets.Dataset.from_list(prompts())
    local = run(rows, url, tmp_path / "local")
    on_ray = run(rows, url, tmp_path / "ray", executor="ray", workers=1)
    assert on_ray.dataset.to_list() == local.dataset.to_list()
    assert sorted(on_ray.failed["error"]) == sorted(local.failed["error"])
