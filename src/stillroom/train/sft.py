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

How rows become training text (the row shapes ``complete`` writes; see ``stillroom.data.rows``
and the README's row formats):

* ``prompt_completion`` rows (columns ``prompt`` and ``completion``): the text ``prompt`` as
  one user turn, or a conversational ``prompt`` (a list of messages) as those turns, is rendered
  with the chat template and the assistant header after it (``add_generation_prompt``), so the
  student learns in the same format the transformers backend prompts it with at inference
  (without a template the turns' text is used as it is); the completion is the ``completion``
  text, or the assistant message's text when ``completion`` is a list
  (``[{"role": "assistant", "content": ...}]``, TRL's conversational completion).
* ``messages`` rows (a ``messages`` list of ``{role, content}``, ending with an assistant turn):
  every turn before the last assistant turn is rendered with the chat template as the prompt,
  and the last assistant turn is the completion. (A ``messages`` row as older stillroom
  versions wrote it, without the answer and with a text ``completion`` beside it, is read with
  that ``completion`` as the answer.) We do not use TRL's ``assistant_only_loss``: it needs
  ``{% generation %}`` markers in the chat template, which SmolLM2's template lacks. So in a
  multi-turn conversation only the final assistant turn is trained; earlier assistant turns are
  context.

Either way the loss is on the answer only: TRL gets text prompt/completion pairs and
``completion_only_loss``, so the prompt's labels are -100 and the answer's are its tokens.

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
  final logged training loss, the loss curve (``losses``: [[step, loss], ...]), the training
  seconds and the checkpoint it resumed from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stillroom.data.rows import Row, answer_text, is_conversation, prompt_messages, row_answer
from stillroom.errors import ConfigError, InputError
from stillroom.train.common import (
    TRAIN_FILE,
    Format,
    RunConfig,
    latest_checkpoint,
    load_run_config,
    load_student,
    loss_curve,
    parse_run_config,
    peft_config,
    read_rows,
    render_prompt,
    run_training,
    save_final,
    trainer_arguments,
)


class SFTRunConfig(RunConfig):
    """The SFT config file: the common keys (see train.common.RunConfig) and ``format``."""

    format: Format = "auto"
    output_dir: str = "out/student-sft"


def parse_sft_config(text: str, path: str = "<sft config>", base_dir: Path | None = None) -> SFTRunConfig:
    """Validate a config's YAML text; errors are ConfigError naming ``file:line`` and the key."""
    return parse_run_config(text, SFTRunConfig, path, base_dir)


def load_sft_config(path: str | Path) -> SFTRunConfig:
    return load_run_config(path, SFTRunConfig)


# -- data ----------------------------------------------------------------------------------------


def detect_format(rows: list[Row], wanted: str = "auto") -> str:
    if wanted != "auto":
        return wanted
    first = rows[0]
    # A Parquet output has every column in every row, null where a row has no value. A row with
    # a `prompt` is prompt + completion, as TRL's SFTTrainer reads it, even beside `messages`.
    if first.get("prompt") is not None and first.get("completion") is not None:
        return "prompt_completion"
    if first.get("messages") is not None:
        return "messages"
    raise ConfigError(
        f"cannot tell the data format from columns {sorted(first)}: need `prompt` and "
        "`completion`, or `messages`", key="format",
    )


def to_prompt_completion(
    rows: list[Row], fmt: str, tokenizer: Any
) -> list[dict[str, str]]:
    """Plain-text ``{prompt, completion}`` pairs: the chat template applied to the prompt turns,
    the answer text as the completion (read through :mod:`stillroom.data.rows`)."""
    out = []
    for index, row in enumerate(rows):
        if fmt == "messages":
            if not is_conversation(row.get("messages")):
                raise InputError(f"row {index}: `messages` must be a non-empty list of "
                                 "{role, content} messages")
            # The final assistant turn, or (as older stillroom versions wrote a `messages` row)
            # a text `completion` beside the conversation.
            completion = row_answer(row)
            if completion is None:
                raise InputError(f"row {index}: `messages` must end with an assistant turn")
            turns = prompt_messages(row)
            if not turns:
                raise InputError(f"row {index}: `messages` holds no turn before the answer")
        else:
            prompt, answer = row.get("prompt"), answer_text(row.get("completion"))
            if isinstance(prompt, str):
                turns = [{"role": "user", "content": prompt}]
            elif is_conversation(prompt):  # TRL's conversational prompt
                turns = list(prompt)
            else:
                raise InputError(f"row {index}: `prompt` must be text or a list of messages")
            if answer is None:
                raise InputError(f"row {index}: `completion` must be text or a list holding "
                                 "the assistant's message")
            completion = answer
        turns = [{"role": m["role"], "content": m["content"]} for m in turns]
        out.append({"prompt": render_prompt(turns, tokenizer), "completion": completion})
    return out


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
        **trainer_arguments(config),
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        # TRL defaults to activation checkpointing; a small student needs none.
        gradient_checkpointing=None,  # type: ignore[arg-type]  # deprecated alias, TRL's default True
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config(config))
    return trainer, {"rows": len(rows), "format": fmt}


def train_sft(config: SFTRunConfig) -> Path:
    """Train the student on the data; save ``output_dir/final`` and return its path."""
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started = time.perf_counter()
    run_training(trainer, checkpoint)
    seconds = time.perf_counter() - started
    losses = loss_curve(trainer)
    record = {
        "recipe": "sft",
        "config": config.model_dump(mode="json"),
        "format": facts["format"],
        "rows": facts["rows"],
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "losses": losses,
        "train_seconds": round(seconds, 3),
    }
    return save_final(trainer, output_dir / "final", record)


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
