"""Workflows: one file whose ``steps`` run in order: pipelines, training recipes, evaluations.

``stillroom run WORKFLOW.yaml -o OUT`` runs a file with a top-level ``steps:`` list (a file
with ``stages:`` is a pipeline, run as before)::

    steps:
      - name: text                     # each step writes into OUT/<name>
        pipeline:                      # a pipeline, the keys of a pipeline file
          input: {path: builtin:self_instruct_seed_tasks}
          stages: [{type: complete, max_tokens: 128}]
      - name: kd
        train: kd                      # sft | kd | dpo | grpo: the recipe
        config:                        # that recipe's config file keys
          student: {init: {teacher: embedded, keep_every: 2}}
          teacher: embedded
          data: "{out}/text"           # {out}: the workflow's output folder
      - name: eval
        eval:                          # the keys of an eval config (stillroom eval)
          data: "{out}/text"
          models: {student: "{out}/kd/final", teacher: embedded}

Paths are relative to the workflow file's folder; ``{out}`` in any text is replaced by the
output folder, so a step can read what an earlier one wrote. A training step's ``output_dir``
defaults to ``OUT/<name>``; an evaluation writes ``OUT/<name>/eval.json``.

Every step is checked before the first one runs (errors name the file, the line and the key,
e.g. ``steps[1].config.learning_rate``), so a typo in the last step does not surface an hour
in. Rerunning the command resumes: a finished pipeline or training step (its completion marker
or ``final/stillroom_train.json``) is skipped, an unfinished one continues from its shards or
last checkpoint, and an evaluation is redone only when its ``eval.json`` is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stillroom.errors import ConfigError

RECIPES = ("sft", "kd", "dpo", "grpo")
STEP_KINDS = ("pipeline", "train", "eval")


@dataclass
class Step:
    name: str
    kind: str  # pipeline | train | eval
    recipe: str | None
    options: dict[str, Any]
    index: int


def is_workflow_text(text: str) -> bool:
    """Whether a YAML file is a workflow (a top-level ``steps``) rather than a pipeline."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "steps" in data and "stages" not in data


def _fill(value: Any, out: str) -> Any:
    """``{out}`` replaced in every text of ``value`` (other braces are left alone)."""
    if isinstance(value, str):
        return value.replace("{out}", out)
    if isinstance(value, list):
        return [_fill(item, out) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, out) for key, item in value.items()}
    return value


class Workflow:
    def __init__(self, steps: list[Step], path: str, base_dir: Path, root: yaml.Node):
        self.steps = steps
        self.path = path
        self.base_dir = base_dir
        self._root = root

    # -- reading and checking ----------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Workflow:
        from stillroom.pipeline.config import _line_of, read_config_file, read_yaml_mapping

        file = Path(path)
        root, data = read_yaml_mapping(read_config_file(file, "workflow"), str(file),
                                       "a workflow needs a non-empty `steps:` list")
        steps_data = data.get("steps")
        if not isinstance(steps_data, list) or not steps_data:
            raise ConfigError("a workflow needs a non-empty `steps:` list", path=str(file),
                              line=_line_of(root, ("steps",)) or 1, key="steps")
        extra = sorted(set(data) - {"steps", "name", "description"})
        if extra:
            raise ConfigError(f"unknown key {extra[0]!r}", path=str(file), key=extra[0],
                              line=_line_of(root, (extra[0],)))
        steps, names = [], set()
        for index, raw in enumerate(steps_data):
            where: dict[str, Any] = dict(path=str(file), line=_line_of(root, ("steps", index)))
            if not isinstance(raw, dict):
                raise ConfigError("a step must be a mapping", key=f"steps[{index}]", **where)
            kinds = [kind for kind in STEP_KINDS if kind in raw]
            if len(kinds) != 1:
                raise ConfigError(f"a step needs exactly one of {', '.join(STEP_KINDS)}; got "
                                  f"{kinds or 'none'}", key=f"steps[{index}]", **where)
            kind = kinds[0]
            allowed = {"name", kind} | ({"config"} if kind == "train" else set())
            unknown = sorted(set(raw) - allowed)
            if unknown:
                raise ConfigError(f"unknown key {unknown[0]!r}", key=f"steps[{index}].{unknown[0]}",
                                  path=str(file), line=_line_of(root, ("steps", index, unknown[0])))
            name = raw.get("name") or f"step{index + 1}"
            if not isinstance(name, str) or "/" in name or name in names:
                raise ConfigError(f"step name {name!r} must be a unique folder name",
                                  key=f"steps[{index}].name", **where)
            names.add(name)
            recipe = raw["train"] if kind == "train" else None
            if kind == "train" and recipe not in RECIPES:
                raise ConfigError(f"train must be one of {', '.join(RECIPES)}, not {recipe!r}",
                                  key=f"steps[{index}].train", path=str(file),
                                  line=_line_of(root, ("steps", index, "train")))
            options = raw.get("config") if kind == "train" else raw[kind]
            if not isinstance(options, dict):
                what = "config" if kind == "train" else kind
                raise ConfigError(f"`{what}` must be a mapping", key=f"steps[{index}].{what}",
                                  **where)
            steps.append(Step(name, kind, recipe, options, index))
        workflow = cls(steps, str(file), file.resolve().parent, root)
        workflow.check(Path("OUT").resolve())
        return workflow

    def check(self, out: Path) -> None:
        """Validate every step's own keys now, before anything runs."""
        for step in self.steps:
            self._build(step, out)

    def _build(self, step: Step, out: Path) -> Any:
        """The step's validated config object (pipeline, recipe config or eval config)."""
        options = _fill(step.options, str(out))
        if step.kind == "train" and "output_dir" not in options:
            options["output_dir"] = str(out / step.name)
        text = yaml.safe_dump(options, sort_keys=False)
        section = "config" if step.kind == "train" else step.kind
        try:
            if step.kind == "pipeline":
                from stillroom.pipeline.config import parse_pipeline_text

                model, _ = parse_pipeline_text(text, self.path, self.base_dir)
                if getattr(model, "input", None) is None:
                    raise ConfigError(
                        "required key is missing: give a file, {rows: N} for stages that "
                        "generate from nothing, or {mix: [...]}", key="input")
                return model
            if step.kind == "eval":
                from stillroom.evaluate.config import parse_eval_config

                return parse_eval_config(text, self.path, self.base_dir)
            if step.recipe == "kd":  # one verb, two config classes (mode: on_policy has its own)
                from stillroom.train.kd import parse_kd_config

                return parse_kd_config(text, self.path, self.base_dir)
            from stillroom.train.common import parse_run_config

            return parse_run_config(text, _recipe_config(step.recipe), self.path, self.base_dir)
        except ConfigError as error:
            raise self._located(error, step, section) from None

    def _located(self, error: ConfigError, step: Step, section: str) -> ConfigError:
        """The error re-pointed at the workflow file: its line there and the full key."""
        from stillroom.pipeline.config import _line_of

        parts: list[Any] = []
        for part in (error.key or "").replace("]", "").replace("[", ".").split("."):
            if part:
                parts.append(int(part) if part.isdigit() else part)
        loc = ("steps", step.index, section, *parts)
        line = _line_of(self._root, loc) or _line_of(self._root, ("steps", step.index, section))
        key = f"steps[{step.index}].{section}" + (f".{error.key}" if error.key else "")
        return ConfigError(error.reason, path=self.path, line=line, key=key)

    # -- running -------------------------------------------------------------------------------

    def run(
        self, out: str | os.PathLike[str], log: Callable[[str], None] = print, **run_options: Any
    ) -> dict[str, Any]:
        """Run the steps in order into ``out``; returns {step name: what it produced}."""
        root = Path(out).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.check(root)
        produced: dict[str, Any] = {}
        for step in self.steps:
            built = self._build(step, root)
            log(f"step {step.index + 1}/{len(self.steps)} {step.name} ({step.recipe or step.kind})")
            produced[step.name] = _RUNNERS[step.kind](self, step, built, root, log, run_options)
        return produced


def _recipe_config(recipe: str | None) -> Any:
    if recipe == "sft":
        from stillroom.train.sft import SFTRunConfig

        return SFTRunConfig
    if recipe == "kd":
        from stillroom.train.kd import KDRunConfig

        return KDRunConfig
    if recipe == "grpo":
        from stillroom.train.grpo import GRPORunConfig

        return GRPORunConfig
    from stillroom.train.dpo import DPORunConfig

    return DPORunConfig


def _run_pipeline(workflow: Workflow, step: Step, model: Any, root: Path,
                  log: Callable[[str], None], run_options: dict[str, Any]) -> Any:
    from stillroom.data.output import OutputFolder
    from stillroom.pipeline.pipeline import Pipeline

    folder = root / step.name
    pipeline = Pipeline(list(model.stages), input=model.input, backends=dict(model.backends),
                        seed=model.seed, name=model.name or step.name,
                        description=model.description, base_dir=workflow.base_dir,
                        card=getattr(model, "card", None))
    output = OutputFolder(folder)
    if output.is_complete() and not run_options.get("overwrite") \
            and output.holds_run(_fingerprint(pipeline, folder, run_options)):
        log(f"  {folder} is complete; skipped")
        return folder
    # Otherwise run: an unfinished folder resumes, one made by a different pipeline is refused.
    result = pipeline.run(folder, **run_options)
    log(f"  {result.counts}")
    if not result.ok:
        raise ConfigError(f"step {step.name!r}: {result.counts['failed']} rows failed; see "
                          f"{folder}/failed/ and rerun to resume", path=workflow.path)
    return folder


def _run_train(workflow: Workflow, step: Step, config: Any, root: Path,
               log: Callable[[str], None], run_options: dict[str, Any]) -> Any:
    from stillroom.train.common import TRAIN_FILE

    final = config.path(config.output_dir) / "final"
    if (final / TRAIN_FILE).exists() and not run_options.get("overwrite"):
        trained_with = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8")).get("config")
        if trained_with != _jsonable(config.model_dump(mode="json")):
            raise ConfigError(
                f"step {step.name!r}: {final} was trained with a different config; remove it or "
                "pass --overwrite to train again", path=workflow.path)
        log(f"  {final} is trained; skipped")
        return final
    import importlib

    module = importlib.import_module(f"stillroom.train.{step.recipe}")
    final = getattr(module, f"train_{step.recipe}")(config)
    log(f"  saved {final}")
    return final


def _fingerprint(pipeline: Any, folder: Path, run_options: dict[str, Any]) -> dict[str, Any]:
    """What the step's run would be (pipeline, input as it is now, --limit, seed): the input is
    read and checked for it, so a step whose input changed is run again, not skipped."""
    from stillroom.pipeline.executor import Executor
    from stillroom.pipeline.pipeline import RunOptions

    executor = Executor(pipeline, folder, RunOptions(**run_options))
    executor.source.check(pipeline.stages[0].check_row)
    return executor.fingerprint()


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def _run_eval(workflow: Workflow, step: Step, config: Any, root: Path,
              log: Callable[[str], None], run_options: dict[str, Any]) -> Any:
    from stillroom.evaluate import evaluate
    from stillroom.report.distillation import headline

    target = root / step.name / "eval.json"
    if target.exists() and not run_options.get("overwrite"):
        previous = json.loads(target.read_text(encoding="utf-8"))
        if previous.get("config") == _jsonable(config.model_dump(mode="json")):
            log(f"  {target} exists; skipped")
            return previous
        log(f"  {target} was made with a different config; evaluating again")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = evaluate(config, out=target, log=lambda line: log(f"  {line}"))
    log(f"  {headline(result)}")
    return result


_RUNNERS: dict[str, Callable[..., Any]] = {
    "pipeline": _run_pipeline,
    "train": _run_train,
    "eval": _run_eval,
}
