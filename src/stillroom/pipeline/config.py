"""Pipeline files: YAML validated by pydantic, with errors that name the line and the key.

    # stillroom run my_pipeline.yaml -o out/
    seed: 0
    input: prompts.jsonl            # relative to this file; or {path: ..., limit: 100}
    backends:
      teacher: {kind: openai, model: my-model, base_url: "http://127.0.0.1:8000/v1"}
    stages:
      - type: complete
        backend: teacher
        n: 2
    card: {license: cc-by-4.0, language: en}   # optional: the dataset card's header

The accepted stage ``type``s and backend ``kind``s are whatever is registered (built-ins and
plugins), so the schema is assembled from the registries when a file is read.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig, backends
from stillroom.pipeline.inputs import InputConfig
from stillroom.pipeline.stage import Stage, stages


class CardConfig(BaseModel):
    """``card:``: what the dataset card's YAML header says that a run cannot know. Every key is
    optional; one left out is left out of the header (the card says it is not set) rather than
    guessed. Values are the Hub's (https://huggingface.co/docs/hub/datasets-cards)."""

    model_config = ConfigDict(extra="forbid")

    license: str | None = Field(
        default=None, description="The data's licence as a Hub licence id, e.g. apache-2.0, cc-by-4.0, other."
    )
    license_name: str | None = Field(default=None, description="With `license: other`: its name.")
    license_link: str | None = Field(default=None, description="With `license: other`: where it is.")
    language: str | list[str] | None = Field(
        default=None, description="ISO 639-1 code(s) of the text, e.g. en."
    )
    task_categories: str | list[str] | None = Field(
        default=None, description="Hub task categories; default text-generation for answer data."
    )
    source_datasets: list[str] | None = Field(
        default=None, description="Hub ids of the datasets the input came from."
    )
    pretty_name: str | None = Field(default=None, description="Display name; default `name:`.")
    tags: list[str] | None = Field(
        default=None, description="Tags added to synthetic and stillroom."
    )


def card_config(card: CardConfig | dict[str, Any] | None) -> CardConfig | None:
    """``Pipeline(card=...)``: a CardConfig, or a dict of its keys (a ConfigError naming the key
    when one is wrong)."""
    if card is None or isinstance(card, CardConfig):
        return card
    try:
        return CardConfig.model_validate(card)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(["card", *(str(part) for part in first["loc"])])
        message = ("unknown key" if first["type"] == "extra_forbidden"
                   else pydantic_message(first["msg"]))
        raise ConfigError(message, key=key) from None


def _union(classes: Sequence[type[BaseModel]], discriminator: str) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator=discriminator)]  # noqa: UP007


_model_cache: dict[tuple[frozenset[str] | None, int, int], type[BaseModel]] = {}


def pipeline_file_model(stage_types: frozenset[str] | None = None) -> type[BaseModel]:
    """The model of a pipeline file whose stages are of ``stage_types`` (None: any known type).

    Built-in stages are imported on first use (stillroom.stages): a file naming two stage types
    imports those two, not every stage (and a stage whose dependencies are broken does not stop a
    pipeline that does not use it)."""
    if stage_types is None:
        stage_classes = list(stages.items().values())
    else:
        stage_classes = [stages.get(name) for name in sorted(stage_types)]
    backend_classes = list(backends.items().values())
    key = (stage_types, stages.version, backends.version)
    if key not in _model_cache:
        backend_type: Any = _union(backend_classes, "kind")
        stage_type: Any = _union(stage_classes, "type")
        fields: dict[str, Any] = {
            "name": (str | None, None),
            "description": (str | None, None),
            "seed": (int, 0),
            "input": (str | InputConfig | None, None),
            "backends": (dict[str, backend_type], {}),
            "stages": (list[stage_type], Field(min_length=1)),
            "card": (CardConfig | None, None),
        }
        _model_cache[key] = create_model(
            "PipelineFile", __config__=ConfigDict(extra="forbid"), **fields
        )
    return _model_cache[key]


# Values a config holds as JSON does: YAML's binary, set and ordered-pair types have no place in
# one, and fail late and unclearly (a fingerprint, a request body) when let through.
_REFUSED_TAGS = {
    "tag:yaml.org,2002:binary": "binary data (!!binary)",
    "tag:yaml.org,2002:set": "a set (!!set)",
    "tag:yaml.org,2002:omap": "an ordered map (!!omap)",
    "tag:yaml.org,2002:pairs": "pairs (!!pairs)",
}


def _check_duplicate_keys(
    node: yaml.Node, path: str, ancestors: frozenset[int] = frozenset()
) -> None:
    """Duplicate keys, and what a config cannot hold: a key that is not a plain value, a value
    that contains itself (a recursive alias), binary data, sets. Each a ConfigError at its line."""
    line = node.start_mark.line + 1
    if id(node) in ancestors:
        raise ConfigError("a value contains itself (a recursive YAML alias)", path=path, line=line)
    if node.tag in _REFUSED_TAGS:
        raise ConfigError(f"{_REFUSED_TAGS[node.tag]} is not a config value; use text, numbers, "
                          "lists and mappings", path=path, line=line)
    inside = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("a key must be a plain value (text or a number), not a list or "
                                  "a mapping", path=path, line=key_node.start_mark.line + 1)
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice (first on line {seen[key]})",
                    path=path,
                    line=key_node.start_mark.line + 1,
                    key=str(key),
                )
            seen[key] = key_node.start_mark.line + 1
            _check_duplicate_keys(value_node, path, inside)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, path, inside)


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the YAML node at pydantic's error location ``loc`` (or its nearest parent)."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                tags = {v.value for k, v in node.value if k.value in ("type", "kind")}
                if part in tags:
                    continue  # pydantic puts the union tag in the path; YAML has no node for it
                break
            key_node, node = match
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _dotted(loc: tuple[Any, ...], data: Any) -> tuple[str, type[BaseModel] | None]:
    """``stages[0].temperature`` for ``("stages", 0, "complete", "temperature")``, and the model
    class that owns the last key (to suggest the key that was meant)."""
    text = ""
    parent: Any = data
    section = None
    depth = 0
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            data = data[part] if isinstance(data, list) and part < len(data) else None
            continue
        if isinstance(data, dict) and part not in data and part in (data.get("type"), data.get("kind")):
            continue  # a union tag pydantic put in the path
        if not text:
            section = part
        depth += 1
        text += f".{part}" if text else str(part)
        parent = data
        data = data.get(part) if isinstance(data, dict) else None
    if depth == 1:
        return text, pipeline_file_model()
    return text, _owner(section, parent)


def _owner(section: Any, parent: Any) -> type[BaseModel] | None:
    if not isinstance(parent, dict):
        return None
    try:
        if section == "stages" and isinstance(parent.get("type"), str):
            return stages.get(parent["type"])
        if section == "backends" and isinstance(parent.get("kind"), str):
            return backends.get(parent["kind"])
        if section == "card":
            return CardConfig
    except ConfigError:
        return None
    return None


def pydantic_message(message: str) -> str:
    """A pydantic error's ``msg`` without the words pydantic puts before ours."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _explain(error: dict[str, Any], data: Any) -> tuple[str, str]:
    loc = tuple(error["loc"])
    key, owner = _dotted(loc, data)
    message = pydantic_message(error["msg"])
    if error["type"] == "extra_forbidden":
        allowed = sorted(owner.model_fields) if owner is not None else []
        name = str(loc[-1])
        message = f"unknown key {name!r}"
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif allowed:
            message += f"; allowed: {', '.join(allowed)}"
    elif error["type"] == "missing":
        message = "required key is missing"
    return key, message


def read_yaml_mapping(text: str, path: str, needs: str) -> tuple[yaml.MappingNode, dict[str, Any]]:
    """A config file's YAML as its node tree (for line numbers) and its data, for the config
    files that are one mapping (training recipes, evaluations, workflows). Syntax errors, a file
    that is not a mapping (``needs`` says what it should hold) and duplicate keys are
    ConfigErrors naming the file and line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(error, 'problem', None) or error}",
                          path=path, line=mark.line + 1 if mark else None) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError(needs, path=path, line=1)
    _check_duplicate_keys(root, path)
    return root, yaml.safe_load(text)


def _named_types(data: dict[str, Any]) -> frozenset[str] | None:
    """The stage types a file names, when each stage names a known one; else None (the model of
    every type then explains what is wrong, as pydantic's union does)."""
    listed = data.get("stages")
    if not isinstance(listed, list) or not listed:
        return None
    types = [s.get("type") if isinstance(s, dict) else None for s in listed]
    known = stages.names()
    if not all(isinstance(t, str) and t in known for t in types):
        return None
    return frozenset(t for t in types if isinstance(t, str))


def parse_pipeline_text(
    text: str, path: str = "<pipeline>", base_dir: Path | None = None
) -> tuple[BaseModel, Any]:
    """Validate a pipeline file's text; return the validated model and the raw data.

    Stages that read files of their own (a principles file, say) find ``base_dir`` (the pipeline
    file's folder) in the validation context, so relative paths mean what ``input:`` means.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(
            f"not valid YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from None
    if root is None:
        raise ConfigError("the file is empty; a pipeline needs at least `stages:`", path=path)
    _check_duplicate_keys(root, path)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError("a pipeline file must be a mapping with a `stages:` list", path=path, line=1)
    try:
        context = {"base_dir": base_dir} if base_dir is not None else None
        return pipeline_file_model(_named_types(data)).model_validate(data, context=context), data
    except ValidationError as validation:
        problems = []
        first_line, first_key = None, None
        errors: list[dict[str, Any]] = [dict(e) for e in validation.errors()]
        for problem in errors[:10]:
            key, message = _explain(problem, data)
            line = _line_of(root, tuple(problem["loc"]))
            if first_line is None:
                first_line, first_key = line, key
            where = f"{path}:{line}: " if line else f"{path}: "
            problems.append(f"{where}{key}: {message}")
        if len(problems) == 1:
            _, message = _explain(errors[0], data)
            raise ConfigError(message, path=path, line=first_line, key=first_key) from None
        raise ConfigError(
            f"{len(validation.errors())} problems:\n  " + "\n  ".join(problems),
            path=path,
            line=first_line,
            key=first_key,
        ) from None


def read_config_file(path: str | os.PathLike[str], what: str) -> str:
    """The text of the config file ``path`` (``what``: "pipeline", "eval config", ...); a
    ConfigError naming the file when it is missing, a folder, unreadable or not UTF-8."""
    file = Path(path)
    try:
        if not file.exists():
            raise ConfigError(f"no such {what} file", path=str(file))
        if file.is_dir():
            raise ConfigError(f"this is a folder; give the {what} file (YAML)", path=str(file))
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(f"the {what} file is not UTF-8 text", path=str(file), line=line) from None
    except OSError as error:
        raise ConfigError(f"cannot read the {what} file: {error.strerror or error}",
                          path=str(file)) from None


def check_has_input(model: BaseModel, path: str) -> None:
    """A pipeline file without ``input:`` would run on nothing: a ConfigError naming the key.
    Stages that generate from nothing take ``input: {rows: N}`` (how many rows to make)."""
    if getattr(model, "input", None) is None:
        raise ConfigError(
            "required key is missing: give a file (input: prompts.jsonl), {rows: N} for stages "
            "that generate from nothing (e.g. magpie), or {mix: [...]}",
            path=path,
            key="input",
        )


def load_pipeline_file(path: str | os.PathLike[str]) -> tuple[BaseModel, Path]:
    file = Path(path)
    text = read_config_file(file, "pipeline")
    base_dir = file.resolve().parent
    model, _ = parse_pipeline_text(text, str(file), base_dir)
    check_has_input(model, str(file))
    return model, base_dir


__all__ = ["CardConfig", "InputConfig", "check_has_input", "load_pipeline_file", "parse_pipeline_text",
           "read_config_file", "BackendConfig", "Stage"]
