"""Pipeline files: every mistake names its line and key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.errors import ConfigError
from stillroom.pipeline.config import parse_pipeline_text
from stillroom.stages import Complete

GOOD = """\
seed: 3
input: prompts.jsonl
backends:
  teacher:
    kind: openai
    model: m
    base_url: http://127.0.0.1:9/v1
stages:
  - type: complete
    backend: teacher
    n: 2
"""


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        parse_pipeline_text(text, "p.yaml")
    return error.value


def test_a_good_file_builds_the_same_pipeline_as_python(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    pipeline = Pipeline.from_file(path)
    assert isinstance(pipeline.stages[0], Complete) and pipeline.stages[0].n == 2
    assert pipeline.stages[0].output_column == "completions"
    assert pipeline.seed == 3
    assert pipeline.backends["teacher"].model == "m"
    assert pipeline.base_dir == tmp_path


def test_unknown_key_names_line_and_suggests() -> None:
    error = error_for(GOOD.replace("    n: 2", "    n: 2\n    temperture: 0.5"))
    assert error.line == 12 and error.key == "stages[0].temperture"
    assert "did you mean 'temperature'" in str(error)


def test_bad_value_names_line_and_key() -> None:
    error = error_for(GOOD.replace("n: 2", "n: zero"))
    assert error.line == 11 and error.key == "stages[0].n"
    assert "p.yaml:11" in str(error)


def test_out_of_range_value() -> None:
    error = error_for(GOOD.replace("n: 2", "n: 2\n    temperature: 9"))
    assert error.key == "stages[0].temperature" and error.line == 12


def test_unknown_stage_type() -> None:
    error = error_for(GOOD.replace("type: complete", "type: compleet"))
    assert error.line == 9 and "complete" in str(error)


def test_backend_key_error_in_backends_section() -> None:
    error = error_for(GOOD.replace("    model: m\n", "    model: m\n    concurency: 4\n"))
    assert error.key == "backends.teacher.concurency" and error.line == 7
    assert "did you mean 'concurrency'" in str(error)


def test_yaml_syntax_error_names_line() -> None:
    error = error_for("stages:\n  - type: complete\n    n: [1\n")
    assert error.line is not None and "not valid YAML" in str(error)


def test_duplicate_keys_are_errors() -> None:
    error = error_for("seed: 1\nseed: 2\nstages:\n  - type: complete\n")
    assert error.line == 2 and "twice" in str(error)


def test_missing_stages_and_wrong_top_level() -> None:
    assert "stages" in str(error_for("seed: 1\n"))
    assert "mapping" in str(error_for("- 1\n- 2\n"))
    assert "empty" in str(error_for(""))


def test_undefined_backend_is_an_error_but_default_is_the_embedded_model() -> None:
    with pytest.raises(ConfigError, match="not defined"):
        Pipeline([Complete(backend="teacher")])
    pipeline = Pipeline([Complete()])
    assert pipeline.backends["default"].kind == "llamacpp"


def test_logprobs_from_a_backend_without_them_is_refused_early() -> None:
    from stillroom.llm.backend import BackendConfig, backends

    anthropic = backends.items().get("anthropic")
    if anthropic is None:
        pytest.skip("anthropic backend not registered")
    config: BackendConfig = anthropic(model="claude-x", base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="logprobs"):
        Pipeline([Complete(backend="c", top_logprobs=3)], backends={"c": config})


def test_unknown_top_level_key_suggests() -> None:
    error = error_for("sed: 1\n" + GOOD)
    assert error.line == 1 and "did you mean 'seed'" in str(error)


def test_a_pipeline_without_input_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("input: prompts.jsonl\n", ""))
    with pytest.raises(ConfigError) as error:
        Pipeline.from_file(path)
    assert error.value.key == "input" and error.value.path == str(path)
    assert "{rows: N}" in str(error.value)
    # Built in Python, the same: found when the run starts, before the output folder is made.
    with pytest.raises(ConfigError, match="no input") as python:
        Pipeline([Complete()]).run(tmp_path / "out", progress=False)
    assert python.value.key == "input" and not (tmp_path / "out").exists()
    # Stages that generate from nothing take {rows: N}.
    path.write_text(GOOD.replace("input: prompts.jsonl", "input: {rows: 3}"))
    assert Pipeline.from_file(path).input is not None


def test_a_workflow_pipeline_step_without_input_names_the_key(tmp_path: Path) -> None:
    from stillroom.workflow import Workflow

    path = tmp_path / "flow.yaml"
    path.write_text("steps:\n  - name: gen\n    pipeline:\n      stages: [{type: complete}]\n")
    with pytest.raises(ConfigError) as error:
        Workflow.from_file(path)
    assert error.value.key == "steps[0].pipeline.input" and error.value.line == 3


@pytest.mark.parametrize(("content", "needle"), [
    (None, "this is a folder"),
    (b"# caf\xe9\nstages: []\n", "not UTF-8"),
])
def test_a_pipeline_file_that_is_a_folder_or_not_utf8(tmp_path: Path, content: bytes | None,
                                                      needle: str) -> None:
    path = tmp_path / "p.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as error:
        Pipeline.from_file(path)
    assert error.value.path == str(path)


def test_a_validator_message_is_not_prefixed_with_pydantics_wording() -> None:
    error = error_for(GOOD.replace("base_url: http://127.0.0.1:9/v1", "base_url: 127.0.0.1:9/v1"))
    assert error.key == "backends.teacher.base_url" and "Value error" not in str(error)


@pytest.mark.parametrize(("value", "says"), [
    ("!!binary aGVsbG8=", "binary data"),
    ("!!set {a, b}", "a set"),
    ("&loop {again: *loop}", "contains itself"),
    ("{? [1, 2] : 3}", "a key must be a plain value"),
])
def test_values_a_config_cannot_hold_are_named_at_their_line(value: str, says: str) -> None:
    text = ("input: x.jsonl\nbackends:\n  t:\n    kind: openai\n    model: m\n"
            f"    base_url: http://127.0.0.1:1/v1\n    extra_body: {value}\n"
            "stages:\n  - type: complete\n    backend: t\n")
    with pytest.raises(ConfigError, match=rf"p\.yaml:7: .*{says}"):
        parse_pipeline_text(text, "p.yaml")
