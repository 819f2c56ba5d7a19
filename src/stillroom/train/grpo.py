"""GRPO of a student against stillroom's verifiers, with TRL's GRPOTrainer.

Usage::

    # stillroom train grpo grpo.yaml
    student: embedded                # embedded | path/to/folder-or.gguf | {init: {...}}
    data: quickstart-out/heldout.jsonl   # prompts with their reference columns: a stillroom
                                     # output folder, JSONL or Parquet (or `stillroom export rl`)
    rewards:                         # null: each row's own `verifier`/`verifier_options`
      - verifier: exact              # a registered verifier: math, code, exact, regex, ...
        options: {reference_column: answer}
        weight: 1.0
    num_generations: 4               # completions sampled per prompt (the group)
    max_completion_length: 64        # tokens per completion
    temperature: 1.0
    beta: 0.0                        # KL to the starting model; 0 (TRL's default) loads none
    loss_type: dapo                  # dapo | grpo | dr_grpo | bnpo (TRL's names)
    scale_rewards: group             # group | batch | none
    think_start: <think>             # the tags of the policy's inline trace (matched without
    think_end: </think>              # regard to case or inner white space when grading)
    think_opened: auto               # auto | true | false: does the completion start inside the
                                     # trace? auto: the rendered prompt ends with think_start
    output_dir: out/student-grpo
    learning_rate: 1e-6              # TRL's default
    max_steps: null                  # a number overrides epochs
    epochs: 1
    batch_size: 8                    # completions per device step (a multiple of num_generations)
    gradient_accumulation: 1
    max_length: 512                  # tokens of a rendered prompt; longer ones keep their end
    seed: 0
    save_steps: 200
    lora: null                       # {r: 8, alpha: 16, dropout: 0.05}
    resume: true

Python: ``train_grpo(load_grpo_config("grpo.yaml"))`` returns ``output_dir/final``. Needs the
``train`` extra (torch, transformers, TRL, peft).

The method (Shao et al. 2024, DeepSeekMath). For each prompt the policy samples a group of
``num_generations`` completions; each gets a reward, here the weighted sum of the verifiers'
verdicts (1 passed, 0 not); a completion's advantage is its reward minus the group's mean
(divided by the group's standard deviation with ``scale_rewards: group``), so the policy is pushed
towards the completions that did better than their siblings, and a group whose completions all
pass or all fail teaches nothing. TRL's default loss (``dapo``) normalises by the tokens of the
whole batch; ``beta`` > 0 adds a KL penalty to the starting model (and keeps a copy of it).

Rewards are stillroom's verifiers (:mod:`stillroom.verify.rewards`): the same code that grades
``stillroom eval``, rejection sampling and the ``verify`` stage, with the final answer only (an
inline ``<think>`` trace is cut off, one that never ends earns 0) and the row's reference
columns passed through as TRL passes dataset columns. When the student's chat template opens the
trace itself (DeepSeek-R1 distills, QwQ: the rendered prompt ends with ``<think>``), every
completion starts inside it: ``think_opened: auto`` sees that in the prompt, so a completion that
never writes ``think_end`` (cut at ``max_completion_length`` mid-thought) earns 0 rather than
having its unfinished thought graded; ``true``/``false`` say so for every prompt. Every row is checked before any model is
loaded: a row without the column a verifier reads (``answer``, ``tests``) is a ConfigError naming
the column and the row, and so is a column with a list on one row and text on another (text on
some rows and numbers on others, ``"4"`` and ``6``, is made text, as the verifiers read it).

Prompts: a row's ``prompt`` (text, or a list of ``{role, content}`` turns) or, without one, its
``messages`` up to the last user turn. Like ``train sft`` and ``train dpo``, the prompt is
rendered here with the chat template and the assistant header after it (``render_prompt``),
what the transformers backend and ``stillroom eval`` send, and TRL is given that text, so the
policy is trained on exactly the prompt it is evaluated on. A dataset's own ``completion``
(e.g. a teacher's answer) is not used: GRPO learns from its own samples.

Outputs, in ``output_dir``: ``checkpoint-N/`` every ``save_steps`` steps (resumed with
``resume: true``), and ``final/`` with the model (LoRA merged), the tokenizer and
``stillroom_train.json``: config, rows, prompts clipped, the rewards (verifier, options,
weight), steps, the curves ``losses``, ``rewards_curve`` (mean total reward per step) and one per
reward
(``reward_curves``), first/final reward, and the training seconds (wall and process CPU).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError
from stillroom.export_rl import one_type_columns
from stillroom.llm.reasoning import THINK_END, THINK_START
from stillroom.train.common import (
    TRAIN_FILE,
    RunConfig,
    checked_turns,
    last_value,
    latest_checkpoint,
    load_run_config,
    load_student,
    loss_curve,
    parse_run_config,
    peft_config,
    read_rows,
    record_head,
    render_prompt,
    row_where,
    run_training,
    save_final,
    trainer_arguments,
)
from stillroom.verify.rewards import (
    OPTIONS_COLUMN,
    VERIFIER_COLUMN,
    RewardSpec,
    RowVerifierReward,
    ThinkTags,
    build,
)

GRPOLoss = Literal["dapo", "grpo", "dr_grpo", "bnpo"]


class GRPORunConfig(RunConfig):
    """The GRPO config file: the common keys (see train.common.RunConfig) and GRPO's own."""

    output_dir: str = "out/student-grpo"
    learning_rate: float = Field(default=1e-6, gt=0)
    batch_size: int = Field(default=8, ge=1)
    rewards: list[RewardSpec] | None = Field(default=None, min_length=1)
    num_generations: int = Field(default=4, ge=2)
    max_completion_length: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.0, ge=0)
    loss_type: GRPOLoss = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    think_start: str = Field(default=THINK_START, min_length=1)
    think_end: str = Field(default=THINK_END, min_length=1)
    think_opened: Literal["auto", True, False] = "auto"

    @model_validator(mode="after")
    def _check_grpo(self) -> GRPORunConfig:
        if self.think_start.strip() == self.think_end.strip():
            raise ValueError("think_start and think_end must differ")
        per_generation = self.batch_size * self.gradient_accumulation
        if per_generation % self.num_generations:
            # TRL samples whole groups: a step's completions are prompts x num_generations.
            raise ValueError(
                f"batch_size x gradient_accumulation ({per_generation}) must be a multiple of "
                f"num_generations ({self.num_generations}): each step trains whole groups")
        names = [spec.label() for spec in self.rewards or []]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"two rewards are named {repeated[0]!r}; give each a `name`")
        return self


def parse_grpo_config(text: str, path: str = "<grpo config>", base_dir: Path | None = None) -> GRPORunConfig:
    """Validate a config's YAML text; errors are ConfigError naming ``file:line`` and the key."""
    return parse_run_config(text, GRPORunConfig, path, base_dir)


def load_grpo_config(path: str | Path) -> GRPORunConfig:
    return load_run_config(path, GRPORunConfig)


# -- data ----------------------------------------------------------------------------------------


def prompt_turns(row: Row) -> list[dict[str, str]]:
    """The row's prompt as chat turns, or a ValueError saying what is wrong with it."""
    value = row.get("prompt")
    if value is None and isinstance(row.get("messages"), list | tuple):
        value = list(row["messages"])
        while value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
            value.pop()  # the answer the messages end with is not part of the prompt
    if value is None:
        raise ValueError(f"no `prompt` (or `messages`) column; it has {sorted(row)}")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("`prompt` is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple):
        raise ValueError(f"`prompt` must be text or a list of {{role, content}} turns, got "
                         f"{type(value).__name__}")
    return checked_turns(value)


def think_tags(config: GRPORunConfig) -> ThinkTags:
    """How the rewards find the trace: the tags, and ``opened`` (None: read from each prompt)."""
    opened = None if config.think_opened == "auto" else bool(config.think_opened)
    return ThinkTags(config.think_start, config.think_end, opened)


def reward_functions(config: GRPORunConfig) -> list[Any]:
    """The configured rewards, or the one that reads each row's verifier (exported data)."""
    tags = think_tags(config)
    if config.rewards is None:
        return [RowVerifierReward(tags)]
    functions = []
    for index, spec in enumerate(config.rewards):
        try:
            reward = build(spec)
        except ConfigError as error:
            option = f".{error.key}" if error.key and error.key in spec.options else ""
            raise ConfigError(error.reason, key=f"rewards.{index}.options{option}") from None
        reward.tags = tags
        functions.append(reward)
    return functions


def reward_columns(rewards: list[Any]) -> list[str]:
    """The dataset columns the rewards read (TRL passes them to every reward function)."""
    columns: list[str] = ["id"]
    for reward in rewards:
        if isinstance(reward, RowVerifierReward):
            return []  # every column: each row names its verifier, which may read any
        columns.extend(reward.verifier.required_columns)
    return list(dict.fromkeys(columns))


def check_rows(config: GRPORunConfig, rows: list[Row], rewards: list[Any]) -> list[list[dict[str, str]]]:
    """Every row's prompt turns; a row without a prompt is an InputError naming it, and one
    without a column a reward reads a ConfigError naming the column (before any model loads)."""
    source = str(config.path(config.data))
    turns = []
    for index, row in enumerate(rows):
        try:
            turns.append(prompt_turns(row))
        except ValueError as problem:
            raise InputError(f"{row_where(index, row)}: {problem}", path=source) from None
    if config.rewards is None and not any(VERIFIER_COLUMN in row for row in rows):
        raise ConfigError(
            f"no `rewards` and the data has no `{VERIFIER_COLUMN}` column; name the verifier(s) "
            "under `rewards:`, or train on `stillroom export rl` output", key="rewards")
    for position, reward in enumerate(rewards):
        try:
            reward.check_rows(rows, source)
        except ConfigError as error:
            # The message names the column and the row; the key, the reward that reads it.
            key = error.key if config.rewards is None else f"rewards.{position}"
            raise ConfigError(error.reason, key=key) from None
    return turns


def reward_records(rows: list[Row], columns: list[str], where: str) -> list[Row]:
    """The columns the rewards read, per row (all but the prompt, answer, trace and metadata
    columns for per-row verifiers), each of one type on every row, as TRL's dataset needs:
    checked here, before any model loads (see :func:`stillroom.export_rl.one_type_columns`)."""
    skip = {"prompt", "completion", "reasoning", "messages", "logprobs", "metadata", "lineage",
            "teacher_messages"}
    records = []
    for row in rows:
        keep = columns or [key for key in row if key not in skip]
        record = {key: row.get(key) for key in keep}
        if OPTIONS_COLUMN in record and not isinstance(record[OPTIONS_COLUMN], str | None):
            import json  # one type per column for Arrow: options as JSON text

            record[OPTIONS_COLUMN] = json.dumps(record[OPTIONS_COLUMN])
        records.append(record)
    return one_type_columns(records, where)


def dataset_rows(records: list[Row], turns: list[list[dict[str, str]]], tokenizer: Any,
                 max_length: int | None = None) -> tuple[list[Row], int]:
    """TRL's rows: the rendered prompt (keeping its last ``max_length`` tokens) and the reward
    columns (:func:`reward_records`); and how many prompts were clipped."""
    from stillroom.train.dpo import clip_prompt

    out, clipped = [], 0
    for record, prompt in zip(records, turns, strict=True):
        text, cut = clip_prompt(render_prompt(prompt, tokenizer), tokenizer, max_length)
        clipped += cut
        out.append({"prompt": text, **record})
    return out, clipped


# -- training ------------------------------------------------------------------------------------


def build_trainer(config: GRPORunConfig) -> tuple[Any, dict[str, Any]]:
    """The TRL ``GRPOTrainer`` for ``config`` and facts for the record. The data is checked
    against the rewards before any model is loaded."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = read_rows(config)
    rewards = reward_functions(config)
    turns = check_rows(config, rows, rewards)
    records = reward_records(rows, reward_columns(rewards), str(config.path(config.data)))
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts, clipped = dataset_rows(records, turns, tokenizer, config.max_length)
    tags = think_tags(config)
    opening = sum(tags.ends_prompt(text["prompt"]) for text in texts)
    dataset = Dataset.from_list(texts)
    weights = None if config.rewards is None else [spec.weight for spec in config.rewards]
    args = GRPOConfig(
        **trainer_arguments(config),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        reward_weights=weights,
        # TRL defaults to activation checkpointing; a small student needs none. The old name is
        # set to None so the new one decides (transformers 5 deprecates gradient_checkpointing).
        gradient_checkpointing=None,  # type: ignore[arg-type]  # TRL's default is True
        activation_checkpointing=False,
        # The reward columns reach the reward functions only if the trainer keeps them.
        remove_unused_columns=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config(config))
    return trainer, {"rows": len(rows), "prompts_clipped": clipped,
                     # How many rendered prompts open the trace (think_opened: auto reads it).
                     "prompts_opening_trace": opening,
                     "rewards": [spec.model_dump(mode="json") for spec in config.rewards]
                     if config.rewards is not None else "per row (verifier column)",
                     "reward_names": [f.__name__ for f in rewards]}



def train_grpo(config: GRPORunConfig, callbacks: list[Any] | None = None) -> Path:
    """Train the student against the verifiers; save ``output_dir/final`` and return its path.
    ``callbacks``: extra transformers ``TrainerCallback``s (e.g. a budget that stops training)."""
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started, cpu_started = time.perf_counter(), time.process_time()
    run_training(trainer, checkpoint)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rewards = loss_curve(trainer, "reward")
    per_reward = {name: loss_curve(trainer, f"rewards/{name}/mean") for name in facts["reward_names"]}
    record = {
        **record_head("grpo", config, trainer, checkpoint, **facts),
        "first_reward": rewards[0][1] if rewards else None,
        "final_reward": last_value(rewards),
        "rewards_curve": rewards,
        "reward_curves": per_reward,
        "train_seconds": round(seconds, 3),
        "train_cpu_seconds": round(cpu_seconds, 3),
    }
    return save_final(trainer, output_dir / "final", record)


__all__ = [
    "TRAIN_FILE",
    "GRPORunConfig",
    "build_trainer",
    "check_rows",
    "dataset_rows",
    "load_grpo_config",
    "parse_grpo_config",
    "prompt_turns",
    "reward_columns",
    "reward_functions",
    "reward_records",
    "think_tags",
    "train_grpo",
]
