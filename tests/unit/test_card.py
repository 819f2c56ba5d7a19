"""The dataset card: a Hub card header (huggingface_hub's DatasetCardData), a pipeline file that
reruns the run, and an upload that leaves the run's private state out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stillroom import Pipeline
from stillroom.errors import ConfigError
from stillroom.report.card import UPLOAD_IGNORE, pipeline_file, size_category, upload_files


def _pipeline_yaml(card: str) -> str:
    match = re.search(r"## Pipeline\n\n```yaml\n(.*?)```", card, re.S)
    assert match, card
    return match.group(1)


def _write_run(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "prompts.jsonl").write_text(
        "".join(f'{{"id": "p{i}", "prompt": "question {i}"}}\n' for i in range(7))
    )
    pipeline = tmp_path / "in" / "p.yaml"
    pipeline.write_text(
        "name: card test\n"
        "input: {path: prompts.jsonl, limit: 5}\n"
        "backends:\n  teacher: {kind: scripted}\n"
        "stages:\n  - {type: complete, backend: teacher}\n" + extra
    )
    return pipeline


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9_999, "1K<n<10K"),
     (10_000, "10K<n<100K"), (999_999, "100K<n<1M"), (1_000_000, "1M<n<10M"),
     (10**12 - 1, "100B<n<1T"), (10**12, "n>1T")],
)
def test_size_category_uses_the_hubs_buckets(rows: int, bucket: str) -> None:
    assert size_category(rows) == bucket


def test_card_header_is_hub_card_data_and_says_what_is_unknown(tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard, DatasetCardData

    from tests import fakes

    fakes.CURRENT.clear()
    pipeline = _write_run(
        tmp_path,
        "card:\n  license: cc-by-4.0\n  language: [en, de]\n  source_datasets: [org/seed]\n"
        "  tags: [math]\n",
    )
    Pipeline.from_file(pipeline).run(tmp_path / "out", progress=False)
    text = (tmp_path / "out" / "README.md").read_text()
    data = DatasetCard(text).data
    assert data.license == "cc-by-4.0" and data.language == ["en", "de"]
    assert data.size_categories == ["n<1K"] and data.task_categories == ["text-generation"]
    assert data.source_datasets == ["org/seed"] and data.pretty_name == "card test"
    assert data.tags == ["synthetic", "stillroom", "math"]
    assert data.configs == [{"config_name": "default",
                             "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    # Round trip: what the Hub reads back writes the same header again.
    again = DatasetCardData(**data.to_dict()).to_dict()
    assert again == data.to_dict() == DatasetCard(DatasetCard(text).content).data.to_dict()

    # Nothing set: no licence or language in the header, and the card says they are not set.
    fakes.CURRENT.clear()
    bare = tmp_path / "bare"
    bare.mkdir()
    Pipeline.from_file(_write_run(bare)).run(bare / "out", progress=False)
    text = (bare / "out" / "README.md").read_text()
    data = DatasetCard(text).data
    assert data.license is None and data.language is None and data.source_datasets is None
    assert "- License: not set (`card: {license: ...}` in the pipeline file)" in text
    assert "- Language: not set" in text and "- Written by: `scripted-model`" in text


def test_the_cards_pipeline_reruns_the_run(tmp_path: Path) -> None:
    """The embedded YAML holds only the pipeline's keys (before, `rows_read` made it fail) and
    the input as read (absolute path, the limit), so it runs from anywhere."""
    from stillroom.pipeline.config import parse_pipeline_text
    from tests import fakes

    fakes.CURRENT.clear()
    pipeline = _write_run(tmp_path, "card: {license: mit}\n")
    first = Pipeline.from_file(pipeline).run(tmp_path / "out", progress=False)
    text = _pipeline_yaml((tmp_path / "out" / "README.md").read_text())
    data = yaml.safe_load(text)
    assert set(data) == {"name", "seed", "input", "backends", "stages", "card"}
    assert data["input"] == {"path": str(tmp_path / "in" / "prompts.jsonl"), "limit": 5}
    parse_pipeline_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pipeline.yaml").write_text(text)
    fakes.CURRENT.clear()
    second = Pipeline.from_file(elsewhere / "pipeline.yaml").run(tmp_path / "out2", progress=False)
    assert first.counts["data"] == second.counts["data"] == 5


def test_pipeline_file_keeps_only_pipeline_keys() -> None:
    config = {"name": "n", "description": None, "input": "/data/x.jsonl (read)", "rows_read": 7,
              "rerun_input": {"path": "/data/x.jsonl", "limit": 7}, "mix": [], "seed": 3,
              "backends": {}, "stages": [{"type": "complete"}], "stage_backends": {"complete": []},
              "rerun_problem": None}
    assert pipeline_file(config) == {"name": "n", "seed": 3,
                                     "input": {"path": "/data/x.jsonl", "limit": 7},
                                     "backends": {}, "stages": [{"type": "complete"}]}
    # A config recorded before the input was kept for a rerun: its description is no input.
    del config["rerun_input"]
    assert "input" not in pipeline_file(config)


def test_rows_given_in_python_are_said_not_to_rerun(tmp_path: Path) -> None:
    def keep(row: dict) -> dict:
        return row

    Pipeline([keep], input=[{"id": 1, "prompt": "x"}]).run(tmp_path / "out", progress=False)
    text = (tmp_path / "out" / "README.md").read_text()
    assert "This file does not rerun the run as it stands: the input rows were given in Python" in text


def test_a_wrong_card_key_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from stillroom.pipeline.config import card_config
    from tests import fakes  # noqa: F401 - registers the `scripted` backend kind

    pipeline = _write_run(tmp_path, "card: {licence: mit}\n")
    with pytest.raises(ConfigError) as error:
        Pipeline.from_file(pipeline)
    assert "card.licence" in str(error.value) and "did you mean 'license'" in str(error.value)
    assert ":7" in str(error.value)  # the line of the key
    with pytest.raises(ConfigError, match="card.language"):
        card_config({"language": 3})


def test_the_documented_upload_leaves_stillroom_state_out(tmp_path: Path) -> None:
    """The patterns in the card and README, as huggingface_hub's upload_folder and `hf upload
    --exclude` apply them (filter_repo_objects; offline)."""
    from huggingface_hub.utils import filter_repo_objects

    out = tmp_path / "out"
    for name in ("README.md", "report.html", "data/part-00000.parquet",
                 "failed/part-00000.parquet", ".stillroom/commits.jsonl", ".stillroom/lock",
                 ".stillroom/nested/x.json", "README.md.tmp"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    sent = upload_files(out)
    assert sent == ["README.md", "data/part-00000.parquet", "failed/part-00000.parquet",
                    "report.html"]
    everything = sorted(p.relative_to(out).as_posix() for p in out.glob("**/*") if p.is_file())
    assert ".stillroom/lock" in list(filter_repo_objects(everything))  # without the patterns
    card = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"ignore_patterns={UPLOAD_IGNORE!r}" in card.replace('"', "'")


def test_a_relative_stage_path_is_written_absolute_and_reruns_elsewhere(tmp_path: Path) -> None:
    """A stage option read from the pipeline's folder (a benchmark here) is written absolute:
    before, the card kept `against: bench.jsonl`, said it reruns, and failed elsewhere."""
    from tests import fakes

    fakes.CURRENT.clear()
    pipeline = _write_run(tmp_path, "  - {type: decontaminate, against: bench.jsonl}\n")
    (tmp_path / "in" / "bench.jsonl").write_text('{"question": "nothing like the prompts"}\n')
    Pipeline.from_file(pipeline).run(tmp_path / "out", progress=False)
    card = (tmp_path / "out" / "README.md").read_text()
    data = yaml.safe_load(_pipeline_yaml(card))
    assert data["stages"][1]["against"] == [str(tmp_path / "in" / "bench.jsonl")]
    assert "Saved as `pipeline.yaml` anywhere" in card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pipeline.yaml").write_text(_pipeline_yaml(card))
    fakes.CURRENT.clear()
    again = Pipeline.from_file(elsewhere / "pipeline.yaml").run(tmp_path / "out2", progress=False)
    assert again.counts["data"] == 5


def test_the_rerun_check_reads_the_file_from_another_folder(tmp_path: Path) -> None:
    """A path still relative to the pipeline's folder is noticed (before, the check parsed with
    that folder and passed), and the card then says which folder to save the file in."""
    from stillroom.pipeline.finish import _rerun_problem
    from stillroom.report.card import _rerun

    (tmp_path / "bench.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    config = {"name": "n", "rerun_input": str(tmp_path / "in.jsonl"), "backends": {},
              "stages": [{"type": "decontaminate", "against": ["bench.jsonl"]}]}
    assert _rerun_problem(config, tmp_path) is None
    problem = _rerun_problem(config)
    assert problem and "no such benchmark file" in problem
    text = "".join(_rerun({**config, "rows_read": 1, "rerun_folder": str(tmp_path)}))
    assert f"Saved as `pipeline.yaml` in `{tmp_path}`" in text
    assert "anywhere" not in text


def test_only_declared_path_options_are_written_absolute(tmp_path: Path) -> None:
    from stillroom.pipeline.finish import _absolute_options

    (tmp_path / "text").write_text("")
    (tmp_path / "bench.jsonl").write_text("")
    # Only the options a stage declares as paths are touched: a template or stop string that
    # happens to name a file in the pipeline's folder stays what it is.
    options = {"type": "text", "column": "text", "text_column": "text", "backend": "text",
               "template": "text", "stop": ["bench.jsonl", ".", "./", "\n\n"],
               "against": ["bench.jsonl", "builtin:x", "~/b.jsonl", "/abs/b.jsonl"],
               "note": "not a file"}
    assert _absolute_options(options, ("against",), tmp_path) == {
        **options, "against": [str(tmp_path / "bench.jsonl"), "builtin:x", "~/b.jsonl",
                               "/abs/b.jsonl"]}


def test_rerun_input_keeps_builtin_names_and_expands_home(tmp_path: Path) -> None:
    """Before, a mix source `builtin:personas` or `~/x.jsonl` came out as FOLDER/builtin:personas
    and FOLDER/~/x.jsonl."""
    from stillroom.pipeline.finish import rerun_input
    from stillroom.pipeline.inputs import InputConfig, InputSource

    class Plan:
        base_dir = tmp_path
        input = None

    config = InputConfig(mix=[{"path": "builtin:personas", "kind": "real"},
                              {"path": "~/syn.jsonl", "kind": "synthetic", "share": 0.3},
                              {"path": "local.jsonl", "kind": "synthetic", "share": 0.2}])
    spec = rerun_input(Plan, InputSource(config, tmp_path))
    assert [item["path"] for item in spec["mix"]] == [
        "builtin:personas", str(Path("~/syn.jsonl").expanduser()), str(tmp_path / "local.jsonl")]


def test_every_stage_that_reads_files_from_the_pipeline_folder_declares_them() -> None:
    """A stage that resolves an option against the pipeline's folder (pipeline_dir) must list it
    in path_options, or the card's copy of the pipeline would not rerun elsewhere."""
    import inspect

    from stillroom.pipeline.stage import stages

    for name, cls in stages.items().items():
        source = inspect.getsource(inspect.getmodule(cls))
        if "pipeline_dir(" in source or "_base_dir" in source:
            assert cls.path_options, f"{name} reads files from the pipeline folder"
            for option in cls.path_options:  # a dotted one: a key inside the option's mapping
                assert option.split(".")[0] in cls.model_fields, (name, option)
