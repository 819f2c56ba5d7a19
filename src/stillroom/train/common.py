"""What the training recipes (SFT, KD, DPO) share: the config file's common keys and how a file
is checked, reading the data, loading the student, LoRA, checkpoints and the saved record.

Each recipe subclasses :class:`RunConfig` with its own keys and calls :func:`load_run_config`
with its class; errors name ``file:line`` and the key, before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError

TRAIN_FILE = "stillroom_train.json"
"""Written into ``output_dir/final``: config, rows, steps, losses (the curve), seconds."""

Format = Literal["auto", "prompt_completion", "messages"]


class InitStudent(BaseModel):
    """``{teacher, keep_every}``: a layer-pruned copy of the teacher (see train.student)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = "embedded"
    keep_every: int = Field(default=2, ge=1)
    keep: list[int] | None = None


class InitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init: InitStudent


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)


class RunConfig(BaseModel):
    """Keys every recipe has. Paths are resolved against ``base_dir`` (the file's folder)."""

    model_config = ConfigDict(extra="forbid")

    student: str | InitSpec = "embedded"
    data: str
    output_dir: str = "out/student"
    epochs: float = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=8)
    seed: int = 0
    save_steps: int = Field(default=200, ge=1)
    lora: LoraSpec | None = None
    resume: bool = True
    base_dir: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _student_not_empty(self) -> RunConfig:
        if isinstance(self.student, str) and not self.student.strip():
            raise ValueError("`student` is empty; use `embedded`, a path, or {init: {...}}")
        return self

    def path(self, value: str) -> Path:
        resolved = Path(value).expanduser()
        if not resolved.is_absolute() and self.base_dir is not None:
            resolved = Path(self.base_dir) / resolved
        return resolved


C = TypeVar("C", bound=RunConfig)


# -- config file ---------------------------------------------------------------------------------


def parse_run_config(
    text: str, cls: type[C], path: str = "<config>", base_dir: Path | None = None
) -> C:
    """Validate a config's YAML text as ``cls``; errors are ConfigError naming file:line and key."""
    from stillroom.pipeline.config import _line_of, read_yaml_mapping

    root, data = read_yaml_mapping(text, path, "a training config must be a mapping with at least `data:`")
    if "base_dir" in data:
        raise ConfigError("unknown key 'base_dir'", path=path, key="base_dir",
                          line=_line_of(root, ("base_dir",)))
    try:
        config = cls.model_validate(data)
    except ValidationError as validation:
        raise _config_error(validation, root, path) from None
    config.base_dir = str(base_dir) if base_dir is not None else None
    return config


def _config_error(validation: ValidationError, root: yaml.Node, path: str) -> ConfigError:
    from stillroom.pipeline.config import _line_of

    # For a union (``student``) pydantic reports each branch; the deepest location is the branch
    # the user meant (a mapping's bad key rather than "not a string").
    first = max(validation.errors(), key=lambda error: len(error["loc"]))
    # Union branches add their class name to the location (student.str / student.InitSpec).
    loc = tuple(p for p in first["loc"] if p not in ("str", "InitSpec"))
    key = ".".join(str(p) for p in loc) or None
    if first["type"] == "extra_forbidden":
        message = f"unknown key {str(loc[-1])!r}"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"]
    others = {tuple(e["loc"])[:1] for e in validation.errors()} - {tuple(first["loc"])[:1]}
    if others:
        message += f" (and problems with {', '.join(str(o[0]) for o in sorted(others, key=str))})"
    return ConfigError(message, path=path, line=_line_of(root, loc), key=key)


def load_run_config(path: str | Path, cls: type[C]) -> C:
    file = Path(path)
    if not file.exists():
        raise ConfigError("no such config file", path=str(file))
    return parse_run_config(file.read_text(encoding="utf-8"), cls, str(file),
                            file.resolve().parent)


# -- data ----------------------------------------------------------------------------------------


def read_rows(config: RunConfig) -> list[Row]:
    """The data rows; a stillroom output folder is read from its ``data/`` folder."""
    from stillroom.data.readers import iter_rows

    source = config.path(config.data)
    if source.is_dir() and (source / "data").is_dir():
        source = source / "data"
    rows = [row for _, row in iter_rows(source)]
    if not rows:
        raise InputError("no rows to train on", path=str(source))
    return rows


def render_prompt(turns: list[dict[str, str]], tokenizer: Any) -> str:
    """The prompt turns as the text a model is given: the chat template with the assistant
    header after it (what the transformers backend sends at inference), or the plain text."""
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return text
    return "\n".join(turn["content"] for turn in turns)


# -- student -------------------------------------------------------------------------------------


def load_student(config: RunConfig) -> tuple[Any, Any]:
    """The student model and tokenizer: the embedded model, a path, or a pruned teacher copy
    (made once into ``output_dir/student-init``)."""
    from stillroom.train.student import init_student, load_model

    spec = config.student
    if isinstance(spec, InitSpec):
        folder = config.path(config.output_dir) / "student-init"
        if not (folder / "config.json").exists():
            teacher = spec.init.teacher
            init_student(teacher if teacher == "embedded" else config.path(teacher), folder,
                         keep_every=spec.init.keep_every, keep=spec.init.keep, overwrite=True)
        return load_model(folder)
    return load_named_model(config, spec)


def load_named_model(config: RunConfig, name: str) -> tuple[Any, Any]:
    """``embedded`` or a path (relative to the config file) as a float32 model and tokenizer."""
    from stillroom.train.student import load_model

    return load_model(None if name == "embedded" else config.path(name))


def bf16_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def peft_config(config: RunConfig) -> Any:
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def trainer_arguments(config: RunConfig) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords every recipe passes the same way."""
    return dict(
        output_dir=str(config.path(config.output_dir)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        # A small float32 student on a CPU needs no mixed precision (bf16 fails there); a GPU
        # with bf16 gets it.
        bf16=bf16_available(),
    )


def latest_checkpoint(output_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    return Path(found) if found else None


def run_training(trainer: Any, checkpoint: Path | None) -> None:
    """``trainer.train`` (resuming from ``checkpoint``) with one short line per logged step in
    place of transformers' printed dictionaries: ``step 5/32  loss 0.3717  2.1 s/step``."""
    import time as clock

    from transformers import PrinterCallback, TrainerCallback

    class StepLines(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
        def __init__(self) -> None:
            self.mark = clock.perf_counter()
            self.step = 0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now = clock.perf_counter()
            per_step = (now - self.mark) / max(state.global_step - self.step, 1)
            self.mark, self.step = now, state.global_step
            parts = [f"step {state.global_step}/{state.max_steps}", f"loss {float(logs['loss']):.4f}"]
            for key in ("kd_loss", "ce_loss", "rewards/margins", "reward"):
                if key in logs:
                    parts.append(f"{key.split('/')[-1]} {float(logs[key]):.4f}")
            parts.append(f"{per_step:.1f} s/step")
            print("  ".join(parts), flush=True)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepLines())
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def loss_curve(trainer: Any, key: str = "loss") -> list[list[float]]:
    """``[[step, value], ...]`` for one logged quantity, for the record and the report's plot."""
    return [[int(entry["step"]), float(entry[key])]
            for entry in trainer.state.log_history if key in entry and "step" in entry]


def last_value(curve: list[list[float]]) -> float | None:
    """The last value of a :func:`loss_curve`, or None when nothing was logged."""
    return curve[-1][1] if curve else None


def record_head(recipe: str, config: RunConfig, trainer: Any, checkpoint: Path | None,
                **facts: Any) -> dict[str, Any]:
    """The part of every recipe's ``TRAIN_FILE`` record that means the same for all of them:
    the recipe, its config, ``facts`` (what the recipe read: rows, format...), the steps done,
    the checkpoint it resumed from, and the loss curve with its first and last value. Each
    recipe adds its own figures after it."""
    losses = loss_curve(trainer)
    return {
        "recipe": recipe,
        **facts,
        "config": config.model_dump(mode="json"),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": last_value(losses),
        "losses": losses,
    }


def save_final(trainer: Any, final: Path, record: dict[str, Any]) -> Path:
    """The trained model (LoRA merged into plain weights), its tokenizer and ``TRAIN_FILE``."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into plain weights
        model = model.merge_and_unload()
    final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(final)
    trainer.processing_class.save_pretrained(final)
    (final / TRAIN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return final



def row_where(index: int, row: Row) -> str:
    """How an error names a data row: its position, and its ``id`` when it has one."""
    return f"row {index} (id {row['id']!r})" if row.get("id") is not None else f"row {index}"


def checked_turns(value: Any) -> list[dict[str, str]]:
    """A prompt given as chat turns, each reduced to ``{role, content}``, or a ValueError saying
    what is wrong with it (not a non-empty list, a turn without text, all turns blank)."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"`prompt` must be a non-empty list of {{role, content}} turns, got "
                         f"{type(value).__name__}")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                or not isinstance(turn.get("content"), str):
            raise ValueError("`prompt` turns must be {role, content} objects with text content")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(turn["content"].strip() for turn in turns):
        raise ValueError("`prompt` is empty")
    return turns

__all__ = [
    "TRAIN_FILE",
    "Format",
    "InitSpec",
    "InitStudent",
    "LoraSpec",
    "RunConfig",
    "bf16_available",
    "latest_checkpoint",
    "load_named_model",
    "load_run_config",
    "load_student",
    "loss_curve",
    "parse_run_config",
    "peft_config",
    "read_rows",
    "render_prompt",
    "run_training",
    "save_final",
    "trainer_arguments",
]
