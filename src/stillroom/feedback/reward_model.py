"""``reward_model``: score completions with a local reward model (a sequence classifier).

    - type: reward_model
      model: models/my-reward-model   # a folder written by save_pretrained; a relative path is
                                      # read from the pipeline file's folder
      batch_size: 8                   # texts per forward pass
      max_length: 4096                # tokens; a longer (prompt + completion) fails the row
      device: auto                    # auto | cpu | cuda | cuda:1 | mps
      dtype: auto                     # auto | float32 | bfloat16 | float16
      completions_column: completions

A reward model is a language model with a one-number head (``AutoModelForSequenceClassification``
with ``num_labels: 1``, as TRL's ``RewardTrainer`` and Skywork-Reward write them): it reads a
whole conversation and returns one score for its last answer; higher is better. Scores are only
comparable between completions of the same prompt, which is how ``preference_pairs`` uses them.

Input: a row with ``prompt`` (text) or ``messages`` (a conversation; trailing assistant turns are
removed, as the completions answer what comes before them), and either ``completions`` (a list
of texts; the column is ``completions_column``) or, when the row has none, ``completion`` (one
text). Output:

* ``ratings``: one float per completion, aligned with ``completions``, so ``preference_pairs``
  binarizes them as they are (chosen = the highest score);
* ``reward``: one float, for a row with a single ``completion``.

How a (prompt, completion) is shown to the model: as reward models are trained, a conversation
``[user: prompt, assistant: completion]`` (or the row's messages plus the assistant turn)
rendered with the tokenizer's chat template, tokenized without adding special tokens (the
template holds them). A tokenizer with no chat template gets the plain text
``prompt + "\\n\\n" + completion`` (a conversation's contents joined by blank lines), tokenized
with the tokenizer's special tokens (a BERT-style model's [CLS] and [SEP]).

Conversations with tools: the assistant turns' ``tool_calls`` and the ``tool`` turns before the
answer are written as plain turns (:func:`stillroom.llm.tool_calls.as_plain_messages`: calls as
``<tool_call>`` blocks, results as ``<tool_response>`` user turns), since few reward models' chat
templates render them; an answer that only calls a tool is scored as its calls written out. This
stage has no ``conversation`` option, unlike the LLM judges: a reward model always reads the
whole conversation and scores its last turn, which is what both readings would give it.

Never a missing score: an empty completion fails the row (``EmptyCompletion``), as does a text
longer than ``max_length`` (or the model's position limit; ``TooLong``) and a score that is not a
finite number (``NonFiniteScore``); the row goes to ``failed/`` with the reason and which
completion it was. Nothing is truncated: a truncated answer would be scored on a text the model
never saw whole.

``metadata[<stage>]`` records ``method: reward_model``, the model (its folder name) and
``model_identity``: the folder name and a hash of its ``config.json``. As for the transformers
backend, weights retrained into the same folder with the same config are not told apart: save
each checkpoint under a new name.

Performance. Rows arrive one at a time, concurrently; their texts are batched *across* rows: each
row's texts wait in a queue on the event loop while one worker thread runs the model (one call at
a time, the model loaded once, on the first row, in that thread). Each round takes what is
waiting, sorts it by token length (less padding) and runs it ``batch_size`` texts at a time. A
batch is padded on the right, so each text's tokens see exactly what they see alone (attention is
causal) and the head reads the same token it reads for the text alone: the rightmost token that
is not the pad token, as transformers' sequence classifiers pool. Batched scores therefore equal
one-at-a-time scores up to float rounding, including for models such as SmolLM2 whose pad token is
also their end-of-turn token.

torch and transformers are imported on first use; the ``reward`` extra installs them
(``pip install 'stillroom[reward]'``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from stillroom.data.readers import resolve_input_path
from stillroom.data.rows import (
    Row,
    answer_turn_text,
    check_prompt,
    row_answer,
    row_id,
    seed_id_of,
    with_lineage,
)
from stillroom.errors import ConfigError, InputError
from stillroom.llm.batching import Job, MicroBatcher
from stillroom.llm.tool_calls import as_plain_messages
from stillroom.llm.torch_device import device_problem, resolve_device
from stillroom.pipeline.stage import (
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Prompt = str | list[dict[str, Any]]
"""A prompt text, or a conversation (the completion is its next assistant turn)."""

INSTALL_HINT = "pip install 'stillroom[reward]'"
# How many batches' worth of waiting texts one worker round takes and sorts by length: more
# means less padding, fewer means a row waits behind less work.
POOL_BATCHES = 8


class RewardError(ValueError):
    """A completion that cannot be scored; ``kind`` is EmptyCompletion, TooLong, NonFiniteScore,
    BadInput or ModelError, ``index`` its position in the call."""

    def __init__(self, message: str, *, kind: str, index: int | None = None):
        self.reason = message
        self.kind = kind
        self.index = index
        super().__init__(message if index is None else f"completion {index}: {message}")

    def at(self, index: int) -> RewardError:
        return RewardError(self.reason, kind=self.kind, index=index)


# -- the model folder ------------------------------------------------------------------------------


def check_model_folder(spec: str, base_dir: Path | None = None) -> Path:
    """The reward model's folder, checked: it exists, holds a config.json, and that config is a
    sequence classifier with one label. A relative ``spec`` is read from ``base_dir`` (the
    pipeline file's folder) when given, else the current folder.

    Raises ConfigError naming the key ``model``.
    """
    try:
        path = resolve_input_path(spec, base_dir)
    except InputError as error:
        raise ConfigError(error.reason, path=spec, key="model") from None
    if not path.exists():
        where = "" if Path(spec).expanduser().is_absolute() else (
            " (a relative path is read from the pipeline file's folder, or the current folder "
            f"for a stage built in Python: {path.resolve()})"
        )
        raise ConfigError(
            f"no reward model folder at {path}{where}; stillroom loads local folders only "
            "(download the model first, e.g. with `huggingface-cli download`)",
            key="model",
        )
    if not path.is_dir():
        raise ConfigError(
            f"{path} is a file; name the folder written by save_pretrained (it holds "
            "config.json, the weights and the tokenizer)",
            key="model",
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"{path} has no config.json, so it is not a transformers model folder; name a folder "
            "written by save_pretrained",
            key="model",
        )
    try:
        config = orjson.loads(config_file.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{config_file} is not valid JSON ({error})", key="model") from None
    problem = _not_a_reward_model(config if isinstance(config, dict) else {})
    if problem:
        raise ConfigError(f"{path} is not a reward model: {problem}", key="model")
    return path


def _not_a_reward_model(config: dict[str, Any]) -> str | None:
    """Why a config.json does not describe a one-score sequence classifier, if it does not."""
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not any(
        isinstance(name, str) and name.endswith("ForSequenceClassification")
        for name in architectures
    ):
        return (
            f"its architectures are {architectures or 'not given'}; a reward model is a "
            "...ForSequenceClassification model (AutoModelForSequenceClassification)"
        )
    # save_pretrained writes id2label when num_labels is not the default (2); num_labels itself
    # may be written by hand.
    id2label = config.get("id2label")
    if isinstance(id2label, dict):
        labels = len(id2label)
    elif isinstance(config.get("num_labels"), int):
        labels = config["num_labels"]
    else:
        labels = 2  # PretrainedConfig's default
    if labels != 1:
        return (
            f"it has {labels} labels; a reward model has one (num_labels=1), its score. A "
            "classifier over several labels (or a multi-objective head) is not supported"
        )
    return None


def model_identity(folder: Path) -> dict[str, str]:
    """What names the model in lineage and run identity: its folder name and config hash."""
    config = (folder / "config.json").read_bytes()
    return {"name": folder.name, "config": hashlib.sha256(config).hexdigest()[:16]}


def check_installed() -> None:
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the reward_model stage needs {' and '.join(missing)}: install them with "
            f"`{INSTALL_HINT}`",
            key="type",
        )


# -- formatting ------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """A message's content as text (a list of content blocks is joined; no content, as in an
    assistant turn that only calls a tool, is empty)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(
            block.get("text", "") if isinstance(block, dict) else str(block) for block in content
        )
    return str(content)


def conversation(prompt: Prompt, completion: str) -> list[dict[str, Any]]:
    """The chat a reward model reads: the prompt (as a user turn, or the conversation without its
    trailing answers) and the completion as the assistant's turn."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
            # Chat templates of reward models seldom render `tool_calls` or `tool` turns (most
            # drop the calls or reject the role): the calls and results are written as plain
            # turns, the one rendering students and tool-less models are given as well.
            messages = as_plain_messages(messages, None)
        messages = [{**m, "content": _text_of(m["content"])} for m in messages]
    return [*messages, {"role": "assistant", "content": completion}]


def plain_text(prompt: Prompt, completion: str) -> str:
    """The text shown to a model whose tokenizer has no chat template."""
    if isinstance(prompt, str):
        parts = [prompt]
    else:
        parts = [_text_of(m["content"]) for m in conversation(prompt, completion)[:-1]]
    return "\n\n".join([*parts, completion])


# -- the scorer ------------------------------------------------------------------------------------


class RewardScorer:
    """A reward model in this process: ``score(prompts, completions) -> scores``.

    The model loads on first use (or with :meth:`load`), in the one worker thread that runs it.
    :meth:`score` blocks; :meth:`score_async` (one prompt, its completions) lets concurrent calls
    share batches. Both raise :class:`RewardError` for the first completion that cannot be scored.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        batch_size: int = 8,
        max_length: int = 4096,
        device: str = "auto",
        dtype: Dtype = "auto",
        base_dir: Path | None = None,
    ):
        if batch_size < 1 or max_length < 1:
            raise ValueError("batch_size and max_length must be at least 1")
        problem = device_problem(device)
        if problem:
            raise ValueError(f"device {device!r}: {problem}")
        self.folder = check_model_folder(str(model_path), base_dir)
        check_installed()
        self.name = self.folder.name
        self.identity = model_identity(self.folder)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        # Filled in by the load: what the model actually runs with.
        self.uses_chat_template: bool | None = None
        self.loaded_dtype: str | None = None
        self.limit = max_length
        # Counters, for a look at how well texts were batched.
        self.forward_calls = 0
        self.texts_scored = 0
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._device: Any = None
        self._head_config: Any = None  # the config whose pad_token_id the head pools with
        self._vocab_size = 0
        # A job's payload: one prompt's (prompt, completion) pairs.
        self._batcher = MicroBatcher("reward-model", self._take, self._run_jobs)

    # -- loading (in the worker thread) ----------------------------------------------------------

    def _worker(self) -> ThreadPoolExecutor:
        # One thread: a torch model must not run on two threads at once, and one forward pass
        # already uses every core.
        return self._batcher.worker()

    def load(self) -> None:
        """Load the model now rather than on the first score (blocks until loaded)."""
        self._worker().submit(self._load_sync).result()

    def _load_sync(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = resolve_device(self.device)
        # auto: the checkpoint's own dtype on an accelerator; float32 on CPU, where half
        # precision is slow and loses the small differences between completions.
        dtype: Any = self.dtype
        if dtype == "auto" and device == "cpu":
            dtype = "float32"
        if dtype != "auto":
            dtype = getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        model = AutoModelForSequenceClassification.from_pretrained(self.folder, dtype=dtype)
        model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to oddly
        config = model.config
        head = config.get_text_config() if hasattr(config, "get_text_config") else config
        positions = getattr(head, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            self.limit = min(self.max_length, positions)
        self._vocab_size = int(getattr(head, "vocab_size", None) or len(tokenizer))
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.loaded_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._head_config = head
        self._torch = torch
        self._device = torch.device(device)
        self._tokenizer = tokenizer
        self._model = model

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, completion: str) -> list[int]:
        """The token ids the model reads for ``completion`` answering ``prompt`` (loads the
        model if needed). Raises RewardError for an empty or too long text."""
        return self._worker().submit(self._load_and_encode, prompt, completion).result()

    def _load_and_encode(self, prompt: Prompt, completion: str) -> list[int]:
        self._load_sync()
        return self._encode(prompt, completion)

    def _encode(self, prompt: Prompt, completion: Any) -> list[int]:
        if not isinstance(completion, str):
            raise RewardError(
                f"completion must be text, got {type(completion).__name__}", kind="BadInput"
            )
        if not completion.strip():
            raise RewardError("completion is empty; there is nothing to score", kind="EmptyCompletion")
        if not isinstance(prompt, (str, list)):
            raise RewardError(
                f"prompt must be text or a list of messages, got {type(prompt).__name__}",
                kind="BadInput",
            )
        tokenizer = self._tokenizer
        if self.uses_chat_template:
            try:
                text = tokenizer.apply_chat_template(
                    conversation(prompt, completion), tokenize=False
                )
            except Exception as error:  # the template rejects these messages (roles, order)
                raise RewardError(
                    f"{self.name}'s chat template cannot format this conversation "
                    f"({type(error).__name__}: {error})",
                    kind="BadInput",
                ) from error
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(plain_text(prompt, completion))["input_ids"]
        if len(ids) > self.limit:
            which = "max_length" if self.limit == self.max_length else f"{self.name}'s position limit"
            raise RewardError(
                f"prompt and completion are {len(ids)} tokens, more than {which} "
                f"({self.limit}); nothing is truncated, as a cut answer would be scored on a text "
                "the model never saw whole",
                kind="TooLong",
            )
        return list(ids)

    # -- scoring (in the worker thread) ----------------------------------------------------------

    def _score_jobs(self, jobs: list[list[tuple[Prompt, Any]]]) -> list[list[float] | RewardError]:
        """Scores for each job's items; a job with an item that cannot be scored gets its error.

        Every job's texts are pooled, sorted by length and run batch_size at a time.
        """
        try:
            self._load_sync()
        except Exception as error:
            failure = RewardError(
                f"could not load the reward model {self.folder} ({type(error).__name__}: {error})",
                kind="ModelError",
            )
            return [failure] * len(jobs)
        results: list[list[float] | RewardError] = [[math.nan] * len(items) for items in jobs]
        todo: list[tuple[int, int, list[int]]] = []
        for j, items in enumerate(jobs):
            encoded = []
            try:
                for i, (prompt, completion) in enumerate(items):
                    try:
                        encoded.append((j, i, self._encode(prompt, completion)))
                    except RewardError as error:
                        raise error.at(i) from None
            except RewardError as error:
                results[j] = error
                continue
            todo.extend(encoded)
        # Longest first: an out-of-memory error shows on the first batch, not the last.
        todo.sort(key=lambda item: len(item[2]), reverse=True)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for (j, i, _), value in zip(chunk, self._forward([ids for _, _, ids in chunk]), strict=True):
                scores = results[j]
                if isinstance(scores, list):
                    scores[i] = value
        for j, scores in enumerate(results):
            if isinstance(scores, list):
                bad = next((i for i, value in enumerate(scores) if not math.isfinite(value)), None)
                if bad is not None:
                    results[j] = RewardError(
                        f"the model's score is {scores[bad]}, not a finite number",
                        kind="NonFiniteScore",
                        index=bad,
                    )
        return results

    def _forward(self, sequences: list[list[int]]) -> list[float]:
        """One forward pass over right-padded ``sequences``: each one's score."""
        torch = self._torch
        head = self._head_config
        pad = head.pad_token_id
        borrowed = pad is None and len(sequences) > 1
        if borrowed:
            # transformers refuses a batch when the config names no pad token; alone, a text is
            # pooled at its last token. A pad id that none of these texts holds keeps that true.
            pad = _absent_token(sequences, self._vocab_size)
            head.pad_token_id = pad
        try:
            width = max(len(ids) for ids in sequences)
            input_ids = torch.full((len(sequences), width), int(pad or 0), dtype=torch.long)
            mask = torch.zeros((len(sequences), width), dtype=torch.long)
            for row, ids in enumerate(sequences):
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[row, : len(ids)] = 1
            with torch.inference_mode():
                logits = self._model(
                    input_ids=input_ids.to(self._device), attention_mask=mask.to(self._device)
                ).logits
            scores: list[float] = logits[:, 0].float().cpu().tolist()
        finally:
            if borrowed:
                head.pad_token_id = None
        self.forward_calls += 1
        self.texts_scored += len(sequences)
        return scores

    # -- calls -----------------------------------------------------------------------------------

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """One score per (prompt, completion), the two lists aligned. Blocks while it runs."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts but {len(completions)} completions; they must be aligned"
            )
        if not completions:
            return []
        (result,) = self._worker().submit(
            self._score_jobs, [list(zip(prompts, completions, strict=True))]
        ).result()
        if isinstance(result, RewardError):
            raise result
        return result

    async def score_async(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        """Scores of ``completions`` answering ``prompt``; concurrent calls share batches."""
        if not completions:
            return []
        result: list[float] = await self._batcher.submit(
            "score", [(prompt, completion) for completion in completions]
        )
        return result

    def _take(self, waiting: list[Job]) -> tuple[list[Job], list[Job]]:
        """The waiting jobs, oldest first, up to POOL_BATCHES batches' worth of texts."""
        texts = 0
        for count, job in enumerate(waiting):
            if count and texts + len(job.payload) > self.batch_size * POOL_BATCHES:
                return waiting[:count], waiting[count:]
            texts += len(job.payload)
        return waiting, []

    def _run_jobs(self, jobs: list[Job]) -> list[Any]:
        return self._score_jobs([job.payload for job in jobs])

    def close(self) -> None:
        """Stop the worker thread and let the model go."""
        self._batcher.close()
        self._model = None
        self._tokenizer = None


def _absent_token(sequences: list[list[int]], vocab_size: int) -> int:
    used = {token for ids in sequences for token in ids}
    return next(token for token in range(vocab_size - 1, -1, -1) if token not in used)


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class RewardModel(RowStage):
    type: Literal["reward_model"] = "reward_model"
    path_options: ClassVar[tuple[str, ...]] = ("model",)
    model: str = Field(
        description="Folder of a sequence-classification reward model (num_labels=1), written "
        "by save_pretrained; relative to the pipeline file."
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Texts per forward pass.")
    max_length: int = Field(
        default=4096, ge=1, description="Most tokens of prompt + completion; longer fails the row."
    )
    device: str = Field(default="auto", description='"auto", "cpu", "cuda", "cuda:1", "mps".')
    dtype: Dtype = Field(
        default="auto", description="auto: the checkpoint's dtype on a GPU, float32 on CPU."
    )
    completions_column: str = Field(
        default="completions",
        description="Column of texts to score -> `ratings`; a row with only `completion` -> "
        "`reward`.",
    )

    _base_dir: Path | None = PrivateAttr(default=None)
    _scorer: RewardScorer | None = PrivateAttr(default=None)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        problem = device_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_model(self, info: ValidationInfo) -> RewardModel:
        self._base_dir = pipeline_dir(info) or self._base_dir
        self.folder()  # a wrong folder is reported now, before any row is read
        check_installed()
        return self

    def folder(self) -> Path:
        if self._scorer is not None:
            return self._scorer.folder
        return check_model_folder(self.model, self._base_dir)

    def scorer(self) -> RewardScorer:
        """This stage's scorer, made once (its model loads on the first row)."""
        if self._scorer is None:
            self._scorer = RewardScorer(
                self.model,
                batch_size=self.batch_size,
                max_length=self.max_length,
                device=self.device,
                dtype=self.dtype,
                base_dir=self._base_dir,
            )
        return self._scorer

    def identity(self) -> dict[str, Any]:
        # batch_size and device decide how the scores are computed, not what they are.
        out = self.model_dump(mode="json", exclude={"name", "batch_size", "device"})
        out["model"] = model_identity(self.folder())  # not the path: a moved folder is the same
        return out

    # -- input -----------------------------------------------------------------------------------

    def check_row(self, row: Row) -> str | None:
        problem = check_prompt(row)
        if problem:
            return problem
        texts = row.get(self.completions_column)
        if texts is not None:
            if not isinstance(texts, list) or not texts:
                return f"`{self.completions_column}` must be a non-empty list of texts"
            kinds = {type(text).__name__ for text in texts if not isinstance(text, str)}
            if kinds:
                return f"`{self.completions_column}` must hold texts, not {sorted(kinds)}"
            return None
        if row_answer(row) is None:  # a text, an assistant message list, or messages' last turn
            value = row.get("completion")
            if value is not None:
                return (f"`completion` must be text or an assistant message list, got "
                        f"{type(value).__name__}")
            return (
                f"the row needs `{self.completions_column}` (a list of texts), `completion` (a "
                f"text) or `messages` ending with the answer to score; it has {sorted(row)}"
            )
        return None

    # -- the stage -------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> Row:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        many = row.get(self.completions_column) is not None
        # An answer that only calls a tool is scored as its calls written out (answer_turn_text).
        texts: list[str] = (row[self.completions_column] if many
                            else [str(answer_turn_text(row))])
        # `conversation` leaves out the answer a `messages` row ends with.
        prompt: Prompt = row["messages"] if row.get("messages") is not None else row["prompt"]
        scorer = self.scorer()
        try:
            scores = await scorer.score_async(prompt, texts)
        except RewardError as error:
            where = f"{self.completions_column}[{error.index}]" if many else "completion"
            message = error.reason if error.index is None else f"{where}: {error.reason}"
            raise RowFailure(message, kind=error.kind) from None
        out = dict(row)
        column = "ratings" if many else "reward"
        out[column] = scores if many else scores[0]
        return with_lineage(
            out,
            ctx.stage_name,
            method="reward_model",
            step="score",
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=scorer.name,
            template=None,
            model_identity=scorer.identity,
            format="chat_template" if scorer.uses_chat_template else "plain",
            column=column,
            dtype=scorer.loaded_dtype,
            max_length=scorer.limit,
        )
