"""Logit knowledge distillation (KD): the student learns the teacher's next-token distributions,
online (the teacher runs in the loop) or offline (from the top-k logprobs stored at generation).
``mode: on_policy`` (the student samples, any scoring backend, a server included, scores its
tokens) has its own config and run: :mod:`stillroom.train.on_policy`.

Usage::

    # stillroom train kd kd.yaml
    mode: offline                    # offline | online (required)
    student: embedded                # as for SFT: embedded | path | {init: {teacher: embedded, keep_every: 2}}
    data: out/teacher-logprobs       # a stillroom output whose rows have `logprobs` (offline)
    format: auto                     # auto | prompt_completion | messages
    output_dir: out/student-kd
    alpha: 0.5                       # loss = (1 - alpha) * CE + alpha * KD
    temperature: 1.0                 # the loss's T: both distributions are softened by T and
                                     # the KD term is multiplied by T**2 (Hinton et al. 2015)
    logprobs_column: logprobs        # offline: the column the `complete` stage wrote
    teacher_tokenizer: null          # offline, optional: a tokenizer folder or GGUF whose vocabulary
                                     # must equal the student's (checked before training)
    # online only:
    teacher: embedded                # embedded | path/to/folder-or.gguf (float32, eval, no gradient)
    beta: 0.0                        # GKD's generalized JSD: 0 forward KL, 1 reverse KL, between JSD
    lambda_on_policy: 0.0            # GKD's lmbda: probability that a batch is sampled by the student
    sampling_temperature: 0.9        # on-policy samples only (GKD/TRL: 0.9); the loss uses `temperature`
    max_new_tokens: 64               # length of those on-policy samples
    # and the common keys: epochs, max_steps, learning_rate, batch_size, gradient_accumulation,
    # max_length, seed, save_steps, lora, resume (see train.sft)

Python: ``train_kd(load_kd_config("kd.yaml"))`` returns ``output_dir/final``. Needs the ``train``
extra. The offline data comes from a ``complete`` stage with ``top_logprobs: K`` (llama.cpp,
transformers and OpenAI-compatible backends return them)::

    stages:
      - type: complete
        backend: teacher
        top_logprobs: 5

Which settings give which method (the loss is always ``(1 - alpha) * CE + alpha * KD``):

* **Word-level KD** (Hinton et al. 2015; "word-level KD" of Kim & Rush 2016), the defaults
  ``mode: online, beta: 0, lambda_on_policy: 0``: *supervised* distillation on the fixed data.
  The student reads the data's own completions and KD is the forward KL(teacher || student) at
  every completion token, mixed with CE by ``alpha``. "online" means only that the teacher runs in
  the loop; nothing is sampled. ``mode: offline`` is the same method from the stored top-k.
* **GKD** (Agarwal et al. 2024, "On-Policy Distillation of Language Models"): ``mode: online,
  alpha: 1, lambda_on_policy: 0.5, beta: 0.5, temperature: 1, sampling_temperature: 0.9,
  max_new_tokens: 128`` are TRL's ``GKDConfig`` defaults (``lmbda`` = ``lambda_on_policy``, the
  fraction of batches the student samples itself; ``beta`` the generalized JSD's weight, 0
  forward KL, 1 reverse KL). The other batches are the data's completions, scored the same way.
* **On-policy reverse KL**: ``mode: online, alpha: 1, lambda_on_policy: 1, beta: 1``: every batch
  is the student's own samples and KD is KL(student || teacher) on them (GKD's lambda = 1,
  beta = 1 corner).

Temperatures. ``temperature`` is the *loss's*: teacher and student are both softened by T and the
divergence is multiplied by ``T**2`` (Hinton et al. 2015; :func:`stillroom.train.kd_trainer.
scaled_kd`), on every path (forward KL, reverse KL, JSD, offline top-k), so that raising T does not
shrink the KD gradients by ``1/T**2`` against the CE term. The logged ``kd_losses`` include the
factor (so ``loss = (1 - alpha) * ce + alpha * kd``). ``sampling_temperature`` is the on-policy
*samples'* only; TRL's GKD samples at 0.9 and computes the loss at T = 1, and so do the GKD
settings above. (Before the two were split, samples were drawn at the loss's ``temperature``.)

Deliberate differences from TRL's ``GKDTrainer``: the on-policy draw is per micro-batch from
``(seed, step, micro-batch)`` rather than ``random.random()``, so a resumed run repeats it; with
``alpha < 1`` the data's batches also get CE (TRL's GKD has none: ``alpha: 1`` is GKD); TRL's
``seq_kd`` (batches sampled from the teacher) is not offered.

The method. Rows become a rendered prompt and a completion exactly as in SFT
(:func:`stillroom.train.sft.to_prompt_completion`); the student sees ``prompt + completion + EOS``
and only the completion tokens and that EOS carry labels (the prompt's labels are -100). On every
labelled position ``i`` the loss is::

    loss = (1 - alpha) * CE(student, token i) + alpha * KD(teacher_i || student_i)

each term averaged over its own positions (CE over every labelled token, KD over the labelled
tokens that have teacher data). ``alpha = 1`` is pure distillation, ``alpha = 0`` is plain SFT.

* ``online``: the teacher (same tokenizer: the two vocabularies are compared and a difference is
  refused) runs a forward pass on the same padded batch and KD is
  :func:`~stillroom.train.losses.kd_loss`, GKD's generalized JSD with ``beta`` on full
  distributions at ``temperature`` (times ``T**2``). With ``lambda_on_policy`` > 0, a batch is
  *on-policy* with that probability (GKD, Agarwal et al. 2024): the student samples its own
  completion for the batch's prompts (at ``sampling_temperature``, no top-k/top-p, up to
  ``max_new_tokens``, up to and including its EOS) and the loss is ``alpha * KD`` on the student's
  own tokens with the teacher's logits there.
  No CE is used on such a batch: a sampled completion is not a label, and training the student to
  imitate its own samples would only sharpen it. The choice is drawn per micro-batch from
  ``(seed, step, micro-batch)``, so a resumed run makes the same choices.
* ``offline``: KD is :func:`~stillroom.train.losses.topk_kd_loss`, the forward KL over the
  teacher's stored top-k plus a tail bucket for the rest of its mass (reverse KL and JSD need the
  teacher's full distribution, so ``beta`` and ``lambda_on_policy`` are refused here). The stored
  distribution is at T = 1; a ``temperature`` tempers the K + 1 buckets (see ``topk_kd_loss``),
  and the term is multiplied by ``T**2`` as online.

How stored logprobs are matched to the student's tokens. Each row's ``logprobs`` is a list with
one entry per generated token, ``{token, logprob, [id], top_logprobs: [{token, logprob, [id]}]}``,
where ``token`` is the decoded text of the token (llama.cpp and the transformers backend also
store ``id``; OpenAI-style servers give only text). Token strings name student token ids only when
teacher and student share a tokenizer, so every row is checked before training:

* with ``id``: each generated token's id must decode, with the student's tokenizer, to the
  stored ``token`` text (a different tokenizer fails here), and all the ids together must decode
  to the row's completion (an edited completion fails here). The student is then trained on
  *those* ids, the very tokens the teacher scored; when the teacher sampled a non-canonical split
  ("\\n" + "\\n" where the tokenizer would write "\\n\\n"), re-tokenizing the text would shift
  every later position, and using the ids cannot;
* without ``id``: the student's tokenization of the completion must produce the stored token
  texts one for one; failing that, each stored text is looked up among the student's token
  texts (texts that several ids share, like a lone UTF-8 fragment, cannot be looked up);
* alternatives in ``top_logprobs`` are placed by ``id``, or by text when it names exactly one
  student token; an alternative that cannot be placed (llama.cpp writes special tokens as "") is
  left out, so its probability stays in the teacher's tail bucket, which is what the tail means;
* the generated token itself joins the top-k when it is not there (a sampled token may fall
  outside it), so every position's teacher data includes the token actually trained on.

The compact layout (``logprobs_format: compact`` on the stage that wrote the data, see
:mod:`stillroom.data.logit_store`) stores ids and quantized logprobs in ``<logprobs_column>_ids``,
``_q``, ``_top_ids`` and ``_top_q`` columns and no strings; a row is read from it when it has no
``logprobs_column`` but has ``<logprobs_column>_ids``, and goes through the same checks as a
records row with ``id`` (each token's text being the student's decoding of its id, so the
tokenizers are compared by the ids decoding to the completion). Logprobs come back to within
2**-11 nats.

A row that fails is refused with an :class:`~stillroom.errors.InputError` naming the row (index
and ``id``), the position, and the first token that does not match; nothing is silently
misaligned. ``teacher_tokenizer`` additionally compares the two vocabularies (``get_vocab()``)
before anything else. One tolerance: the stored tokens may stop one token short of the text (a
backend may not report the last sampled token of a run cut by ``max_tokens``); that final token,
when the remaining text is exactly one student token, is trained with CE only.

The end of the completion. The student is taught to stop: EOS (``<|im_end|>`` for SmolLM2) is
appended and labelled, as in SFT. Backends do not report the EOS they stopped on (llama.cpp and
the transformers backend leave it out), so that position has no teacher data and gets CE only;
when a backend does report it (a last entry whose id or text is the EOS), it is used as the EOS
position's teacher data. So with ``alpha = 1`` the stopping decision is learnt only from the
teacher's probability of EOS at earlier positions. The same holds for any position the teacher
did not score.

Outputs, in ``output_dir``: ``checkpoint-N/`` (resume as in SFT) and ``final/`` with the model,
tokenizer and ``stillroom_train.json``: the config, ``recipe: kd``, ``mode``, rows, steps, the
loss curve (``losses``) and its two parts (``kd_losses``, ``ce_losses``: [[step, value], ...];
a step made only of on-policy batches has no CE), the share of on-policy batches, how many
labelled tokens had teacher data (offline), the training seconds and the checkpoint resumed from.

This module holds the config, the examples built from the rows, and the run; the matching of
stored logprobs is in :mod:`stillroom.train.kd_alignment`, the collator and the trainer (the
loss, on-policy batches) in :mod:`stillroom.train.kd_trainer`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from stillroom.data.rows import Row
from stillroom.errors import ConfigError
from stillroom.train.common import (
    TRAIN_FILE,
    Format,
    RunConfig,
    latest_checkpoint,
    load_named_model,
    load_run_config,
    load_student,
    loss_curve,
    parse_run_config,
    peft_config,
    read_rows,
    record_head,
    run_training,
    save_final,
    trainer_arguments,
)
from stillroom.train.kd_alignment import (
    Pieces,
    TopK,
    align_logprobs,
    check_same_vocabulary,
    row_entries,
    row_name,
)
from stillroom.train.kd_trainer import (
    IGNORE_INDEX,
    Example,
    KDCollator,
    KDSettings,
    trainer_class,
)
from stillroom.train.sft import detect_format, to_prompt_completion


class KDRunConfig(RunConfig):
    """The KD config file: the common keys (see train.common.RunConfig) and the KD keys."""

    mode: Literal["online", "offline"]  # on_policy: train.on_policy_config.OnPolicyRunConfig
    teacher: str | None = Field(default=None, validate_default=True)
    teacher_tokenizer: str | None = None
    alpha: float = Field(default=0.5, ge=0, le=1)
    beta: float = Field(default=0.0, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    lambda_on_policy: float = Field(default=0.0, ge=0, le=1)
    sampling_temperature: float = Field(default=0.9, gt=0)
    max_new_tokens: int = Field(default=64, ge=1)
    logprobs_column: str = Field(default="logprobs", min_length=1)
    format: Format = "auto"
    output_dir: str = "out/student-kd"

    # Fields are validated in order, so each check below sees `mode` (and `alpha`) in info.data;
    # a check on a field names that field's key and line in the error.

    @field_validator("teacher")
    @classmethod
    def _teacher_for_online(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode == "online" and (value is None or not value.strip()):
            raise ValueError("online KD needs a teacher: `embedded` or a path to a model or GGUF")
        if mode == "offline" and value is not None:
            raise ValueError("offline KD reads the teacher from the logprobs column; remove "
                             "`teacher` or use `mode: online`")
        return value

    @field_validator("teacher_tokenizer")
    @classmethod
    def _tokenizer_for_offline(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("mode") == "online":
            raise ValueError("online KD always compares the teacher's own tokenizer; "
                             "`teacher_tokenizer` is for offline mode")
        return value

    @field_validator("beta")
    @classmethod
    def _beta_online(cls, value: float, info: ValidationInfo) -> float:
        if value != 0 and info.data.get("mode") == "offline":
            raise ValueError("beta (reverse KL / JSD) needs the teacher's full distribution; "
                             "offline top-k logprobs give only the forward KL: use `mode: online`")
        return value

    @field_validator("lambda_on_policy")
    @classmethod
    def _lambda_online(cls, value: float, info: ValidationInfo) -> float:
        if value != 0 and info.data.get("mode") == "offline":
            raise ValueError("on-policy batches need the teacher in the loop to score the "
                             "student's samples: use `mode: online`")
        if value != 0 and info.data.get("alpha") == 0:
            raise ValueError("on-policy batches are trained by the KD term only, and alpha is 0")
        return value

    @field_validator("sampling_temperature")
    @classmethod
    def _sampling_on_policy(cls, value: float, info: ValidationInfo) -> float:
        # Runs only when the key is written: it would be silently unused without on-policy batches.
        if not info.data.get("lambda_on_policy"):
            raise ValueError("sampling_temperature is the temperature of the student's on-policy "
                             "samples, and there are none: set `lambda_on_policy` > 0 (online "
                             "mode), or remove it (the loss's temperature is `temperature`)")
        return value


def _config_class(text: str) -> type[RunConfig]:
    """``mode: on_policy`` has its own keys (:mod:`stillroom.train.on_policy_config`); a file
    that does not parse is left to the validation that reports it with its line."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return KDRunConfig
    if isinstance(data, dict) and data.get("mode") == "on_policy":
        from stillroom.train.on_policy_config import OnPolicyRunConfig

        return OnPolicyRunConfig
    return KDRunConfig


def parse_kd_config(text: str, path: str = "<kd config>", base_dir: Path | None = None) -> Any:
    """Validate a config's YAML text (a KDRunConfig, or an OnPolicyRunConfig for
    ``mode: on_policy``); errors are ConfigError naming ``file:line`` and the key."""
    return parse_run_config(text, _config_class(text), path, base_dir)


def load_kd_config(path: str | Path) -> Any:
    file = Path(path)
    text = file.read_text(encoding="utf-8") if file.is_file() else ""
    return load_run_config(path, _config_class(text))


# -- tokenizers ----------------------------------------------------------------------------------


def load_tokenizer(config: KDRunConfig, name: str) -> Any:
    """A tokenizer alone (no weights): ``embedded``, a folder holding one, or a GGUF file."""
    from transformers import AutoTokenizer

    from stillroom.llm.gguf_dense import tokenizer_folder
    from stillroom.llm.llamacpp import embedded_model_path

    path = embedded_model_path() if name == "embedded" else config.path(name)
    if path.is_file() and path.suffix == ".gguf":
        # The model cache's copy when there is one (the same tokenizer, saved): a GGUF's
        # tokenizer is converted on every load, which takes seconds.
        cached = tokenizer_folder(path)
        if cached is not None:
            return AutoTokenizer.from_pretrained(cached)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not path.is_dir():
        raise ConfigError(f"no tokenizer folder or .gguf file at {path}", key="teacher_tokenizer")
    return AutoTokenizer.from_pretrained(path)


# -- examples --------------------------------------------------------------------------------------


def _prompt_ids(prompt: str, tokenizer: Any) -> list[int]:
    # A chat template that writes the BOS text itself must not get a second one.
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=special).input_ids)


def build_examples(config: KDRunConfig, rows: list[Row], fmt: str,
                   tokenizer: Any) -> tuple[list[Example], dict[str, int]]:
    """Rows to examples (offline: with the aligned teacher data) and token counts for the record."""
    # The answer wherever the row keeps it (stillroom.data.rows.row_answer), as SFT reads it.
    texts = to_prompt_completion(rows, fmt, tokenizer)
    pieces = Pieces(tokenizer)
    eos = tokenizer.eos_token_id
    examples, counts = [], {"label_tokens": 0, "teacher_tokens": 0}
    for index, (row, text) in enumerate(zip(rows, texts, strict=True)):
        prompt = _prompt_ids(text["prompt"], tokenizer)
        if config.mode == "offline":
            where = row_name(index, row)
            entries = row_entries(row, config.logprobs_column, where, pieces)
            completion, topk, eos_topk = align_logprobs(entries, text["completion"], pieces, where)
            teacher: list[TopK] = [[] for _ in prompt] + topk + [eos_topk]
        else:
            completion = list(tokenizer(text["completion"], add_special_tokens=False).input_ids)
            teacher = []
        sequence = [*prompt, *completion, eos][: config.max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + [*completion, eos])[: config.max_length]
        example = Example(sequence, labels, min(len(prompt), len(sequence)),
                          teacher[: config.max_length])
        counts["label_tokens"] += sum(label != IGNORE_INDEX for label in labels)
        counts["teacher_tokens"] += sum(bool(t) for t in example.teacher)
        examples.append(example)
    return examples, counts


# -- training ------------------------------------------------------------------------------------


def load_teacher(config: KDRunConfig, tokenizer: Any) -> Any:
    """The online teacher (float32, eval, no gradient) after checking its tokenizer."""
    assert config.teacher is not None
    teacher, teacher_tokenizer = load_named_model(config, config.teacher)
    check_same_vocabulary(tokenizer, teacher_tokenizer, "teacher")
    return teacher.eval().requires_grad_(False)


def build_trainer(config: KDRunConfig) -> tuple[Any, dict[str, Any]]:
    """The KD trainer for ``config`` and facts for the record (rows, format, token counts)."""
    from transformers import TrainingArguments

    rows = read_rows(config)
    fmt = detect_format(rows, config.format)
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.teacher_tokenizer is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(config, config.teacher_tokenizer),
                              "teacher_tokenizer")
    examples, counts = build_examples(config, rows, fmt, tokenizer)
    teacher = load_teacher(config, tokenizer) if config.mode == "online" else None
    lora = peft_config(config)
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    settings = KDSettings(mode=config.mode, alpha=config.alpha, beta=config.beta,
                          temperature=config.temperature, lambda_on_policy=config.lambda_on_policy,
                          sampling_temperature=config.sampling_temperature,
                          max_new_tokens=config.max_new_tokens, seed=config.seed)
    args = TrainingArguments(**trainer_arguments(config), remove_unused_columns=False)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=_Examples(examples),
        data_collator=KDCollator(tokenizer.pad_token_id, offline=config.mode == "offline"),
        processing_class=tokenizer, kd=settings, teacher=teacher,
    )
    return trainer, {"rows": len(rows), "format": fmt, **counts}


class _Examples:
    """A map-style dataset over the examples (the Trainer's DataLoader needs len and indexing)."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def train_kd(config: Any) -> Path:
    """Distil into the student; save ``output_dir/final`` and return its path."""
    if not isinstance(config, KDRunConfig):  # mode: on_policy
        from stillroom.train.on_policy import train_on_policy

        return train_on_policy(config)
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started = time.perf_counter()
    run_training(trainer, checkpoint)
    seconds = time.perf_counter() - started
    on_policy = loss_curve(trainer, "on_policy")
    record = {
        **record_head("kd", config, trainer, checkpoint, mode=config.mode),
        "format": facts["format"],
        "rows": facts["rows"],
        "label_tokens": facts["label_tokens"],
        "teacher_tokens": facts["teacher_tokens"] if config.mode == "offline" else None,
        "kd_losses": loss_curve(trainer, "kd_loss"),
        "ce_losses": loss_curve(trainer, "ce_loss"),
        "on_policy_share": (sum(v for _, v in on_policy) / len(on_policy)) if on_policy else 0.0,
        "train_seconds": round(seconds, 3),
    }
    return save_final(trainer, output_dir / "final", record)


__all__ = [
    "TRAIN_FILE",
    "KDRunConfig",
    "build_examples",
    "build_trainer",
    "load_kd_config",
    "parse_kd_config",
    "train_kd",
]
