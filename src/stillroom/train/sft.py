"""Supervised fine-tuning (SFT) of a student on a stillroom data folder, loss on completions only.

Usage::

    # stillroom train sft sft.yaml
    student: embedded                # embedded SmolLM2-135M | path/to/folder-or.gguf
                                     # | {init: {teacher: embedded, keep_every: 2}}
    data: out/quickstart/data        # a stillroom output (or its data/ folder), JSONL or Parquet
    format: auto                     # auto | prompt_completion | messages
    output_dir: out/student-sft
    epochs: 1
    max_steps: null                  # a number overrides epochs
    learning_rate: 5e-5
    batch_size: 4
    gradient_accumulation: 1
    max_length: 512                  # tokens; longer examples are cut at the end
    seed: 0
    save_steps: 200                  # a checkpoint every N optimizer steps
    lora: null                       # {r: 8, alpha: 16, dropout: 0.05} trains LoRA adapters (peft)
    resume: true                     # continue from the latest checkpoint in output_dir

Python: ``train_sft(load_sft_config("sft.yaml"))`` returns ``output_dir/final``. Relative paths
in the file are relative to the file's folder. Needs the ``train`` extra (torch, transformers,
TRL, peft).

The method. Training uses TRL's ``SFTTrainer`` on *prompt/completion* text with
``completion_only_loss``: the labels of the prompt tokens are -100, so the cross-entropy is the
student's negative log-likelihood of the teacher's answer given the prompt (sequence-level
distillation, Kim & Rush 2016: fine-tune the student on the teacher's outputs).

How rows become training text:

* ``prompt_completion`` rows (columns ``prompt`` and ``completion``, what stillroom stages
  write): when the tokenizer has a chat template, the prompt is rendered as one user turn with
  the assistant header after it (``add_generation_prompt``), so the student learns in the same
  format the transformers backend prompts it with at inference; without a template the prompt
  is used as it is.
* ``messages`` rows (a ``messages`` list of ``{role, content}``, ending with an assistant turn):
  every turn before the last assistant turn is rendered with the chat template as the prompt,
  and the last assistant turn is the completion. We do not use TRL's ``assistant_only_loss``:
  it needs ``{% generation %}`` markers in the chat template, which SmolLM2's template lacks.
  So in a multi-turn conversation only the final assistant turn is trained; earlier assistant
  turns are context.

The end of a completion: TRL appends the tokenizer's EOS token (``<|im_end|>`` for SmolLM2,
which also closes a chat turn) to every completion and labels it, so the student learns to
stop. SmolLM2's pad token is the same id; that is harmless because labels are built from the
completion mask before padding and the collator pads labels with -100, so padding never counts
while the real EOS at the end of each completion does.

Outputs, in ``output_dir``:

* ``checkpoint-N/``: every ``save_steps`` steps (model, optimizer, scheduler, RNG state);
  with ``resume: true`` a rerun continues from the latest one, keeping the step count;
* ``final/``: the trained model and tokenizer (``save_pretrained``; LoRA adapters are merged
  into the weights first, so it is a plain model for ``kind: transformers``), with
  ``stillroom_train.json``: the config, the number of data rows used, the steps, the first and
  final logged training loss, the training seconds and the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stillroom.errors import ConfigError, InputError

TRAIN_FILE = "stillroom_train.json"
"""Written into ``output_dir/final``: config, rows, steps, losses, seconds."""

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


class SFTRunConfig(BaseModel):
    """The SFT config file. Paths are resolved against ``base_dir`` (the file's folder)."""

    model_config = ConfigDict(extra="forbid")

    student: str | InitSpec = "embedded"
    data: str
    format: Format = "auto"
    output_dir: str = "out/student-sft"
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
    def _student_not_empty(self) -> SFTRunConfig:
        if isinstance(self.student, str) and not self.student.strip():
            raise ValueError("`student` is empty; use `embedded`, a path, or {init: {...}}")
        return self

    def path(self, value: str) -> Path:
        resolved = Path(value).expanduser()
        if not resolved.is_absolute() and self.base_dir is not None:
            resolved = Path(self.base_dir) / resolved
        return resolved


# -- config file ---------------------------------------------------------------------------------


def parse_sft_config(text: str, path: str = "<sft config>", base_dir: Path | None = None) -> SFTRunConfig:
    """Validate a config's YAML text; errors are ConfigError naming ``file:line`` and the key."""
    from stillroom.pipeline.config import _check_duplicate_keys, _line_of

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(error, 'problem', None) or error}",
                          path=path, line=mark.line + 1 if mark else None) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError("an SFT config must be a mapping with at least `data:`", path=path, line=1)
    _check_duplicate_keys(root, path)
    data = yaml.safe_load(text)
    if "base_dir" in data:
        raise ConfigError("unknown key 'base_dir'", path=path, key="base_dir",
                          line=_line_of(root, ("base_dir",)))
    try:
        config = SFTRunConfig.model_validate(data)
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


def load_sft_config(path: str | Path) -> SFTRunConfig:
    file = Path(path)
    if not file.exists():
        raise ConfigError("no such config file", path=str(file))
    return parse_sft_config(file.read_text(encoding="utf-8"), str(file), file.resolve().parent)


# -- data ----------------------------------------------------------------------------------------


def read_rows(config: SFTRunConfig) -> list[dict[str, Any]]:
    """The data rows; a stillroom output folder is read from its ``data/`` folder."""
    from stillroom.data.readers import iter_rows

    source = config.path(config.data)
    if source.is_dir() and (source / "data").is_dir():
        source = source / "data"
    rows = [row for _, row in iter_rows(source)]
    if not rows:
        raise InputError("no rows to train on", path=str(source))
    return rows


def detect_format(rows: list[dict[str, Any]], wanted: str = "auto") -> str:
    if wanted != "auto":
        return wanted
    first = rows[0]
    if "messages" in first:
        return "messages"
    if "prompt" in first and "completion" in first:
        return "prompt_completion"
    raise ConfigError(
        f"cannot tell the data format from columns {sorted(first)}: need `prompt` and "
        "`completion`, or `messages`", key="format",
    )


def to_prompt_completion(
    rows: list[dict[str, Any]], fmt: str, tokenizer: Any
) -> list[dict[str, str]]:
    """Plain-text ``{prompt, completion}`` pairs: the chat template applied to the prompt turns."""
    out = []
    for index, row in enumerate(rows):
        if fmt == "messages":
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                    or messages[-1].get("role") != "assistant":
                raise InputError(f"row {index}: `messages` must end with an assistant turn")
            turns = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
            completion = str(messages[-1].get("content") or "")
        else:
            prompt, answer = row.get("prompt"), row.get("completion")
            if not isinstance(prompt, str) or not isinstance(answer, str):
                raise InputError(f"row {index}: `prompt` and `completion` must be text")
            completion = answer
            turns = [{"role": "user", "content": prompt}]
        out.append({"prompt": _render_prompt(turns, tokenizer), "completion": completion})
    return out


def _render_prompt(turns: list[dict[str, str]], tokenizer: Any) -> str:
    if getattr(tokenizer, "chat_template", None):
        text: str = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return text
    # No template: the turns' text one after another, as the prompt the model would be given.
    return "\n".join(turn["content"] for turn in turns)


# -- student -------------------------------------------------------------------------------------


def load_student(config: SFTRunConfig) -> tuple[Any, Any]:
    from stillroom.train.student import init_student, load_model

    spec = config.student
    if isinstance(spec, InitSpec):
        folder = config.path(config.output_dir) / "student-init"
        if not (folder / "config.json").exists():
            teacher = spec.init.teacher
            init_student(teacher if teacher == "embedded" else config.path(teacher), folder,
                         keep_every=spec.init.keep_every, keep=spec.init.keep, overwrite=True)
        return load_model(folder)
    if spec == "embedded":
        return load_model(None)
    return load_model(config.path(spec))


# -- training ------------------------------------------------------------------------------------


def build_trainer(config: SFTRunConfig) -> tuple[Any, dict[str, Any]]:
    """The TRL ``SFTTrainer`` for ``config`` and facts for the record (rows, format)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = read_rows(config)
    fmt = detect_format(rows, config.format)
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = Dataset.from_list(to_prompt_completion(rows, fmt, tokenizer))
    args = SFTConfig(
        output_dir=str(config.path(config.output_dir)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        logging_steps=1,
        report_to="none",
        completion_only_loss=True,
        packing=False,
        disable_tqdm=True,
        # TRL defaults to bf16 and activation checkpointing; a small float32 student on a CPU
        # needs neither (and bf16 fails there), a GPU with bf16 gets mixed precision.
        bf16=_bf16_available(),
        gradient_checkpointing=None,  # type: ignore[arg-type]  # deprecated alias, TRL's default True
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=_peft_config(config))
    return trainer, {"rows": len(rows), "format": fmt}


def _bf16_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _peft_config(config: SFTRunConfig) -> Any:
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def latest_checkpoint(output_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    return Path(found) if found else None


def train_sft(config: SFTRunConfig) -> Path:
    """Train the student on the data; save ``output_dir/final`` and return its path."""
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    final = output_dir / "final"
    _save_final(trainer, final)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {
        "config": config.model_dump(mode="json"),
        "format": facts["format"],
        "rows": facts["rows"],
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(seconds, 3),
    }
    (final / TRAIN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return final


def _save_final(trainer: Any, final: Path) -> None:
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into plain weights
        model = model.merge_and_unload()
    final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(final)
    trainer.processing_class.save_pretrained(final)


__all__ = [
    "TRAIN_FILE",
    "SFTRunConfig",
    "build_trainer",
    "detect_format",
    "latest_checkpoint",
    "load_sft_config",
    "parse_sft_config",
    "to_prompt_completion",
    "train_sft",
]
