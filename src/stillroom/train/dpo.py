"""Direct Preference Optimization (DPO) of a student on preference pairs, with TRL's DPOTrainer.

Usage::

    # stillroom train dpo dpo.yaml
    student: out/student-sft/final   # embedded | path/to/folder-or.gguf | {init: {...}}
    data: out/pairs                  # a preference_pairs output (or its data/ folder), JSONL or Parquet
    format: auto                     # auto | prompt_chosen_rejected | conversational
    reference: null                  # null: a frozen copy of the starting student;
                                     # or embedded | path/to/folder-or.gguf (same tokenizer)
    beta: 0.1                        # strength of the pull towards the reference (Zephyr, TRL)
    loss_type: sigmoid               # sigmoid (DPO) | ipo | hinge | robust | ... (TRL's names)
    max_prompt_length: null          # tokens; a longer rendered prompt keeps its last N tokens
    soft_labels: true                # pairs that carry a soft label train with cDPO (see below);
                                     # false (or --no-soft-labels): every pair is a hard label
    soft_label_column: null          # null: principle_preference's `p_chosen`; or a
                                     # column holding P(chosen is better) (never score_chosen)
    output_dir: out/student-dpo
    learning_rate: 1e-6              # TRL's default for DPO; LoRA usually wants ~10x more
    max_steps: null                  # a number overrides epochs
    epochs: 1
    batch_size: 4                    # pairs per device step (each is two sequences)
    gradient_accumulation: 1
    max_length: 512                  # tokens of prompt + answer; longer ones lose their end
    seed: 0
    save_steps: 200
    lora: null                       # {r: 8, alpha: 16, dropout: 0.05}
    resume: true

Python: ``train_dpo(load_dpo_config("dpo.yaml"))`` returns ``output_dir/final``. Relative paths are
relative to the file's folder. Needs the ``train`` extra (torch, transformers, TRL, peft).

The method (Rafailov et al. 2023). For a prompt x with a preferred answer y_w and a rejected one
y_l, and log pi(y|x) the sum of the answer tokens' log-probabilities, the loss is::

    -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

The reference is the student as it was before DPO (usually the SFT model): it is what keeps the
policy from drifting far, and beta sets how hard. ``beta * (log pi - log ref)`` is the answer's
implicit *reward*; the run logs the mean reward margin (chosen minus rejected) and the share of
pairs whose chosen answer wins (accuracy). Zephyr (Tunstall et al. 2023, "distilled DPO") trains
this way on UltraFeedback pairs binarized like ``preference_pairs`` does.

The reference: by default a frozen in-memory copy of the student as loaded (so a resumed run
still compares against the starting weights, not the checkpoint's). With ``lora`` and no
``reference`` no copy is made: the reference is the same model with its adapters disabled, as
TRL does. ``reference: PATH`` (or ``embedded``) loads another model; its tokenizer must be the
student's, since both score the same token ids.

The data: stillroom's ``preference_pairs`` rows (``prompt``, ``chosen``, ``rejected``), either
text (``prompt_chosen_rejected``) or TRL's conversational format (``prompt`` a list of
``{role, content}`` turns, ``chosen``/``rejected`` one-message assistant lists). Every row is
checked before any model is loaded: a missing or empty ``prompt``/``chosen``/``rejected``, or a
pair whose chosen and rejected texts are the same (it teaches nothing), is an InputError naming
the row's index and id.

How pairs become training text, the same way SFT does it (see train.sft): the prompt turns (a
text prompt is one user turn) are rendered with the chat template and the assistant header
after it (``render_prompt``), which is what the transformers backend sends at inference; chosen
and rejected are plain answer text. We pass TRL *text*, not conversations, on purpose: given
conversations TRL 1.16 renders prompt + answer with the template, so the answer ends in
``<|im_end|>\\n`` and the newline after the end of turn is trained too; given text it appends
the tokenizer's EOS (``<|im_end|>`` for SmolLM2) to each answer, so the student learns to stop
exactly as SFT teaches it. TRL tokenizes prompt and prompt + answer and masks the prompt: only
answer tokens (and the EOS) enter the log-probabilities.

Soft labels (:mod:`stillroom.train.dpo_soft`). Constitutional AI's ``principle_preference``
stage labels each pair with the probability ``p`` that its chosen answer is better. When the pairs
carry such labels, DPO uses them by default: the loss per pair is conservative DPO's (cDPO,
Mitchell 2023) with a per-pair label smoothing of ``1 - p``::

    -p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)

where ``h`` is the margin inside the DPO loss above; ``p = 1`` is the DPO loss exactly. Why cDPO
and not robust DPO, and why not TRL's ``label_smoothing`` (its sigmoid loss ignores it in TRL
1.16, and it is one number): see that module. ``soft_labels: false`` (or ``stillroom train dpo
--no-soft-labels``) trains every pair as a hard label, as before. A row without a label counts as
``p = 1``; a label that is not a number in [0, 1] is an InputError naming the row. Ratings in
``score_chosen``/``score_rejected`` (``preference_pairs``, UltraFeedback's 1-10 scale) are never
read as probabilities: such files train exactly as before. Soft labels need ``loss_type:
sigmoid`` (another loss with soft-labelled pairs is refused; set ``soft_labels: false``).

Lengths: TRL 1.16 has no prompt limit of its own. ``max_prompt_length`` keeps the *end* of a
longer rendered prompt (the question's end and the assistant header the answer follows).
``max_length`` then cuts prompt + answer at the end, so an answer can lose its last tokens and
EOS; TRL drops a pair whose prompt alone fills ``max_length`` (we count those in the record and
refuse to train when none is left).

Outputs, in ``output_dir``: ``checkpoint-N/`` every ``save_steps`` steps (resumed with ``resume:
true``), and ``final/`` with the model (LoRA merged), the tokenizer and ``stillroom_train.json``:
config, format, rows, pairs trained, prompts clipped, the reference used, the loss (``sigmoid``,
``cdpo`` with soft labels, or the ``loss_type``), the pairs with a soft label, steps, first/final
loss, the curves ``losses``, ``margins`` (mean reward margin) and ``accuracies`` as
[[step, value], ...], and the training seconds.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError
from stillroom.train.common import (
    TRAIN_FILE,
    RunConfig,
    checked_turns,
    last_value,
    latest_checkpoint,
    load_named_model,
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
from stillroom.train.dpo_soft import RATING_COLUMNS, SOFT_LABEL, soft_dpo_trainer_class, soft_label

PairFormat = Literal["auto", "prompt_chosen_rejected", "conversational"]
# TRL 1.16's loss names that need no option beyond beta (exo_pair needs label smoothing > 0).
LossType = Literal[
    "sigmoid", "hinge", "ipo", "robust", "nca_pair", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]


class DPORunConfig(RunConfig):
    """The DPO config file: the common keys (see train.common.RunConfig) and DPO's own."""

    format: PairFormat = "auto"
    output_dir: str = "out/student-dpo"
    learning_rate: float = Field(default=1e-6, gt=0)
    beta: float = Field(default=0.1, gt=0)
    loss_type: LossType = "sigmoid"
    reference: str | None = None
    max_prompt_length: int | None = Field(default=None, ge=1)
    soft_labels: bool = True
    soft_label_column: str | None = Field(default=None, min_length=1)

    @field_validator("soft_label_column")
    @classmethod
    def _not_ratings(cls, value: str | None) -> str | None:
        if value is not None and value.lower() in RATING_COLUMNS:
            raise ValueError(f"`{value}` holds ratings in preference_pairs output (e.g. "
                             "UltraFeedback's 1-10), not the probability that chosen is better; "
                             "name a column holding that probability, or leave the key out to "
                             "read principle_preference's `p_chosen`")
        return value

    @model_validator(mode="after")
    def _check_dpo(self) -> DPORunConfig:
        if not self.soft_labels and self.soft_label_column is not None:
            raise ValueError("`soft_label_column` is set but `soft_labels` is false: the column "
                             "would not be read; leave one of them out")
        if self.reference is not None and not self.reference.strip():
            raise ValueError("`reference` is empty; leave it out (a copy of the student), or "
                             "use `embedded` or a path")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(f"`max_prompt_length` ({self.max_prompt_length}) must be less than "
                             f"`max_length` ({self.max_length}), or no answer token fits")
        return self


def parse_dpo_config(text: str, path: str = "<dpo config>", base_dir: Path | None = None) -> DPORunConfig:
    """Validate a config's YAML text; errors are ConfigError naming ``file:line`` and the key."""
    return parse_run_config(text, DPORunConfig, path, base_dir)


def load_dpo_config(path: str | Path) -> DPORunConfig:
    return load_run_config(path, DPORunConfig)


# -- data ----------------------------------------------------------------------------------------


def detect_format(rows: list[Row], wanted: str = "auto") -> str:
    """``conversational`` when the first row's prompt is a list of turns, else text."""
    if wanted != "auto":
        return wanted
    prompt = rows[0].get("prompt")
    if isinstance(prompt, list | tuple):
        return "conversational"
    if isinstance(prompt, str) or prompt is None:  # a missing prompt: check_pairs names the row
        return "prompt_chosen_rejected"
    raise ConfigError(
        f"cannot tell the data format from the first row: `prompt` is "
        f"{type(prompt).__name__}; a DPO row needs `prompt`, `chosen` and `rejected` (what the "
        "preference_pairs stage writes)", key="format",
    )


def _prompt_turns(value: Any, fmt: str) -> list[dict[str, str]]:
    """The prompt as chat turns, or a ValueError saying what is wrong with it."""
    if fmt == "prompt_chosen_rejected":
        if not isinstance(value, str):
            raise ValueError(f"`prompt` must be text, got {type(value).__name__}")
        if not value.strip():
            raise ValueError("`prompt` is empty")
        return [{"role": "user", "content": value}]
    turns = checked_turns(value)
    if turns[-1]["role"] == "assistant":
        raise ValueError("`prompt` ends with an assistant turn; the answers must follow a user turn")
    return turns


def _answer(value: Any, key: str, fmt: str) -> str:
    """The chosen or rejected answer as text, or a ValueError."""
    if value is None:
        raise ValueError(f"`{key}` is missing")
    if fmt == "prompt_chosen_rejected":
        if not isinstance(value, str):
            raise ValueError(f"`{key}` must be text, got {type(value).__name__}")
        text = value
    else:
        if not isinstance(value, list | tuple) or len(value) != 1 or not isinstance(value[0], dict) \
                or value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
            raise ValueError(f"`{key}` must be a list of one {{role: assistant, content}} message")
        text = value[0]["content"]
    if not text.strip():
        raise ValueError(f"`{key}` is empty")
    return text


def check_pairs(
    rows: list[Row], fmt: str, source: Path | None = None
) -> list[dict[str, Any]]:
    """Each row as ``{turns, chosen, rejected}``; the first bad row is an InputError naming it."""
    pairs = []
    for index, row in enumerate(rows):
        try:
            for key in ("prompt", "chosen", "rejected"):
                if row.get(key) is None:
                    raise ValueError(f"`{key}` is missing; a DPO row needs `prompt`, `chosen` and "
                                     f"`rejected`, it has {sorted(row)}")
            turns = _prompt_turns(row["prompt"], fmt)
            chosen = _answer(row["chosen"], "chosen", fmt)
            rejected = _answer(row["rejected"], "rejected", fmt)
            if chosen.strip() == rejected.strip():
                raise ValueError("`chosen` and `rejected` are the same text, so the pair prefers "
                                 "nothing")
        except ValueError as problem:
            raise InputError(f"{row_where(index, row)}: {problem} (format {fmt})",
                             path=str(source) if source else None) from None
        pairs.append({"turns": turns, "chosen": chosen, "rejected": rejected})
    return pairs


def soft_labels_of(rows: list[Row], config: DPORunConfig,
                   source: Path | None = None) -> list[float | None]:
    """Each row's soft label (None: none) when ``soft_labels`` is on; all None when it is off.
    A label that is not a probability is an InputError naming the row."""
    if not config.soft_labels:
        return [None] * len(rows)
    labels = []
    for index, row in enumerate(rows):
        try:
            labels.append(soft_label(row, config.soft_label_column))
        except ValueError as problem:
            raise InputError(f"{row_where(index, row)}: {problem} (set `soft_labels: false` to "
                             "train hard labels)", path=str(source) if source else None) from None
    column = config.soft_label_column
    if column is not None and rows and not any(column in row for row in rows):
        # A column named on purpose that no pair has is a typo, not "every pair is a hard label".
        raise InputError(f"`soft_label_column: {column}`: no pair has that column",
                         path=str(source) if source else None)
    return labels


def clip_prompt(text: str, tokenizer: Any, limit: int | None) -> tuple[str, bool]:
    """``text`` keeping its last ``limit`` tokens, cut at a token's first character, and whether
    it was cut."""
    if limit is None:
        return text, False
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded["input_ids"]) <= limit:
        return text, False
    start = encoded["offset_mapping"][-limit][0]
    return text[start:], True


def to_text_pairs(
    pairs: list[dict[str, Any]], tokenizer: Any, max_prompt_length: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """TRL's text preference rows (rendered prompt, chosen, rejected) and how many prompts were
    clipped to ``max_prompt_length``."""
    out, clipped = [], 0
    for pair in pairs:
        prompt, cut = clip_prompt(render_prompt(pair["turns"], tokenizer), tokenizer,
                                  max_prompt_length)
        clipped += cut
        out.append({"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]})
    return out, clipped


# -- models --------------------------------------------------------------------------------------


def load_reference(config: DPORunConfig, model: Any, tokenizer: Any) -> tuple[Any, str]:
    """The reference model (None: TRL disables the LoRA adapters) and how the record names it."""
    if config.reference is None:
        if config.lora is not None:
            return None, "student with LoRA adapters disabled"
        # A copy made before training: a resumed run still compares against the starting weights.
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
        return reference, "frozen copy of the starting student"
    reference, reference_tokenizer = load_named_model(config, config.reference)
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"the reference {config.reference!r} has a different tokenizer from the student; DPO "
            "scores the same token ids with both", key="reference",
        )
    reference.requires_grad_(False)
    return reference, config.reference


# -- training ------------------------------------------------------------------------------------


def build_trainer(config: DPORunConfig) -> tuple[Any, dict[str, Any]]:
    """The TRL ``DPOTrainer`` for ``config`` and facts for the record. The data is checked
    before any model is loaded."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = read_rows(config)
    fmt = detect_format(rows, config.format)
    pairs = check_pairs(rows, fmt, config.path(config.data))
    labels = soft_labels_of(rows, config, config.path(config.data))
    soft = sum(label is not None for label in labels)
    if soft and config.loss_type != "sigmoid":
        raise ConfigError(
            f"{soft} pairs carry soft labels, which train with cDPO, the soft-label form of "
            f"`loss_type: sigmoid`; set `soft_labels: false` to train `{config.loss_type}` on "
            "hard labels", key="loss_type",
        )
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    reference, reference_name = load_reference(config, model, tokenizer)
    texts, clipped = to_text_pairs(pairs, tokenizer, config.max_prompt_length)
    if soft:
        for text, label in zip(texts, labels, strict=True):
            text[SOFT_LABEL] = 1.0 if label is None else label  # no label: a hard one
    args = DPOConfig(
        **trainer_arguments(config),
        max_length=config.max_length,
        beta=config.beta,
        loss_type=[config.loss_type],
        # TRL defaults to activation checkpointing; a small student needs none. The old name is
        # set to None so the new one decides (transformers 5 deprecates gradient_checkpointing).
        gradient_checkpointing=None,  # type: ignore[arg-type]  # TRL's default is True
        activation_checkpointing=False,
    )
    trainer_type = soft_dpo_trainer_class() if soft else DPOTrainer
    trainer = trainer_type(model=model, ref_model=reference, args=args,
                           train_dataset=Dataset.from_list(texts), processing_class=tokenizer,
                           peft_config=peft_config(config))
    trained = len(trainer.train_dataset)  # type: ignore[arg-type]  # a Dataset: TRL maps it
    if trained == 0:
        raise InputError(f"every prompt is at least max_length ({config.max_length}) tokens, so "
                         "no answer token is left; raise max_length or set max_prompt_length",
                         path=str(config.path(config.data)))
    return trainer, {"rows": len(rows), "format": fmt, "pairs_trained": trained,
                     "prompts_clipped": clipped, "reference": reference_name,
                     "loss": "cdpo" if soft else config.loss_type, "soft_labelled_pairs": soft}



def train_dpo(config: DPORunConfig) -> Path:
    """Train the student on the preference pairs; save ``output_dir/final`` and return its path."""
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started = time.perf_counter()
    run_training(trainer, checkpoint)
    seconds = time.perf_counter() - started
    margins = loss_curve(trainer, "rewards/margins")
    accuracies = loss_curve(trainer, "rewards/accuracies")
    record = {
        **record_head("dpo", config, trainer, checkpoint, **facts),
        "beta": config.beta,
        "loss_type": config.loss_type,
        "final_margin": last_value(margins),
        "final_accuracy": last_value(accuracies),
        "margins": margins,
        "accuracies": accuracies,
        "train_seconds": round(seconds, 3),
    }
    return save_final(trainer, output_dir / "final", record)


__all__ = [
    "TRAIN_FILE",
    "DPORunConfig",
    "build_trainer",
    "check_pairs",
    "clip_prompt",
    "detect_format",
    "latest_checkpoint",
    "load_dpo_config",
    "load_reference",
    "parse_dpo_config",
    "soft_labels_of",
    "to_text_pairs",
    "train_dpo",
]
