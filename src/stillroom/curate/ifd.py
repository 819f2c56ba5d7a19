"""``ifd_filter``: keep the instruction-answer pairs a small model finds hardest to follow
(Superfiltering: Li et al. 2024, "Superfiltering: Weak-to-Strong Data Filtering for Fast
Instruction-Tuning"; the score is the Instruction-Following Difficulty of Li et al. 2023,
"From Quantity to Quality", the Cherry LLM paper).

    - type: ifd_filter
      model: null              # a .gguf file or a transformers model folder; null = the embedded
                               # SmolLM2-135M-Instruct (the paper uses GPT-2: a small model is
                               # enough to rank pairs for a much larger one)
      top_fraction: 0.1        # keep the top 10% of the rows this stage receives (the paper's
                               # 10% of Alpaca); or top_k: 1000 (not both); default 0.1
      max_ifd: 1.0             # a row with ifd >= this is dropped (the reference's threshold 1)
      max_length: 1024         # tokens of prompt + answer scored (the reference's default)
      format: auto             # auto | alpaca | prompt_completion | messages (below)
      batch_size: 16           # sequences per forward pass
      batch_tokens: 4096       # ... and at most this many (padded) tokens in one pass
      device: auto             # auto | cpu | cuda | cuda:N | mps
      dtype: float32           # float32 | bfloat16 | float16

From the command line: ``stillroom filter INPUT -o OUT --ifd [--ifd-model PATH]
[--ifd-top-fraction 0.1 | --ifd-top-k N] [--ifd-max-length 1024]``; from Python:
:func:`ifd_filter`, or :class:`IFDScorer` for the scores alone.

The method. For an instruction-answer pair, with the loss averaged over the answer's tokens only::

    IFD = PPL(answer | prompt) / PPL(answer)     prompt = "{instruction}\\n{input}\\n"
                                                 (or "{instruction}\\n" when input is empty)

PPL(answer | prompt) is the perplexity of the answer's tokens when the model reads the prompt
first; PPL(answer) is their perplexity read alone. Both are computed with the same small causal
LM, loss on the answer tokens only (the prompt and the padding get label -100). An IFD near 1
says the instruction hardly helps predict the answer; above 1 it makes the answer *less*
likely: the pair is misaligned (the answer does not follow the instruction), so it is dropped.
Among the rest, a higher IFD means the answer is harder to produce from the instruction, which
is what makes a pair worth training on: the rows are ranked by IFD, highest first, and the top
``top_fraction`` of the rows this stage received (or the top ``top_k``) are kept. A fraction is
rounded up (the top 10% of 25 rows is 3 rows); fewer rows are kept when fewer have IFD < 1.
Ties at the cut go to the earlier row. Kept rows stay in input order.

Facts taken from the reference code (tianyi-lab/Superfiltering, ``code_ifd/``): the prompt
template above with no system text; GPT-2; ``max_length`` 1024 tokens with the conditioned text
truncated at the end, and the answer alone cut to about the length left to it there (we
use exactly the answer tokens that fit); perplexity =
exp(mean token loss); an empty answer is not scored, and a pair with no score or IFD >= 1 is
never selected; rows sorted by IFD descending and the top 10% taken. Where we differ, and why:

* The prompt and the answer are tokenized separately and their ids joined, so the answer's
  tokens are the same ids in both perplexities (the reference tokenizes the joined text, where a
  token may straddle the boundary).
* Plain text is tokenized as the tokenizer does by default, with the special tokens it puts in
  front (a Llama tokenizer's BOS; none for GPT-2 or SmolLM2). Without such a token nothing
  predicts the first token of the answer read alone, so PPL(answer) leaves that token out while
  PPL(answer | prompt) scores it, as in the reference. An answer of one token then has nothing to
  score alone, and the row is dropped (the reference gets NaN and never selects it).
* A fraction is of the rows this stage received (the reference multiplies by Alpaca's 52,002).

Input columns (``format: auto`` picks, per row, the first that is present):

* ``alpaca``: ``instruction``, ``output``, and ``input`` when present (missing, null or empty:
  the no-input prompt). Alpaca, Dolly-style and Self-Instruct rows.
* ``prompt_completion``: ``prompt`` is the instruction, ``completion`` the answer (TRL's
  format). A conversational ``prompt`` (a list of messages) gives its last user turn; a
  conversational ``completion`` gives its last assistant turn.
* ``messages``: the last assistant turn is the answer and the last user turn before it is the
  instruction; system turns and earlier turns are not shown to the model.

A row with none of these (or with text columns that are not text) stops the run before the model
is loaded when this is the pipeline's first stage, naming the file and line; from an earlier
stage it goes to ``failed/``.

Output columns, on every row (kept in ``data/`` and dropped in ``dropped/``):

* ``ifd``: the score (null when the row could not be scored);
* ``ifd_ppl_conditioned``: PPL(answer | prompt); ``ifd_ppl_direct``: PPL(answer);
* ``ifd_answer_tokens``: how many answer tokens were scored with the prompt;
* ``ifd_truncated``: true when the answer was cut to fit ``max_length``.

``metadata[<stage>]`` holds the lineage (``method: ifd``, the model, the prompt template's
version) and the decision: ``rank`` among the rows with IFD < ``max_ifd`` (1 = highest),
``kept``, ``cutoff`` (the lowest kept IFD), ``selection`` ("top 10%" or "top 1000").

Drop reasons (``dropped/``, each row with its scores):

* ``ifd >= 1 (the instruction does not help predict the answer)``;
* ``ifd below the top 10% cutoff (0.7312)`` (the lowest IFD kept; ``top 1000`` for ``top_k``);
* ``empty answer (nothing to score)``;
* ``answer too short to score without the instruction (one token, no BOS)``;
* ``the prompt fills max_length: no answer token left to score``.

A loss that is not a finite number sends the row to ``failed/`` (``NonFiniteScore``).

How it runs. IFD needs every score before the cut, so this is an all-rows stage. Each row gives
two sequences (prompt + answer, and answer alone); all of them are sorted by length and scored in
batches, left-padded with an attention mask and position ids counted from each row's first real
token, so a padded row computes what it computes alone (SmolLM2's pad token is its end-of-turn
token, which the mask hides). Only the logits of the answer positions are made
(``logits_to_keep``). Batched scores equal one-at-a-time scores up to float rounding (tested to
1e-4 relative). torch, transformers and (for a GGUF) gguf are imported on first use; the
``train`` extra installs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import re
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stillroom.data.output import OutputFolder
from stillroom.data.readers import resolve_input_path
from stillroom.errors import ConfigError, InputError
from stillroom.generate.lineage import PromptTemplate, row_id, seed_id_of, with_lineage
from stillroom.pipeline.pipeline import Pipeline, RunResult
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    Row,
    RowFailure,
    StageContext,
    pipeline_dir,
    register_stage,
)

Format = Literal["auto", "alpaca", "prompt_completion", "messages"]
Dtype = Literal["float32", "bfloat16", "float16"]

METHOD = "ifd"
PROMPT_WITH_INPUT = PromptTemplate("ifd.prompt_input", "{instruction}\n{input}\n")
PROMPT_NO_INPUT = PromptTemplate("ifd.prompt_no_input", "{instruction}\n")
DEFAULT_TOP_FRACTION = 0.1
INSTALL_HINT = "pip install 'stillroom[train]'"

REASON_NOT_HELPFUL = "ifd >= 1 (the instruction does not help predict the answer)"
REASON_EMPTY = "empty answer (nothing to score)"
REASON_ONE_TOKEN = "answer too short to score without the instruction (one token, no BOS)"
REASON_PROMPT_TOO_LONG = "the prompt fills max_length: no answer token left to score"
UNSCORED_REASONS = (REASON_EMPTY, REASON_ONE_TOKEN, REASON_PROMPT_TOO_LONG)

COLUMNS = ("ifd", "ifd_ppl_conditioned", "ifd_ppl_direct", "ifd_answer_tokens", "ifd_truncated")
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


# -- input columns ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Example:
    """One instruction-answer pair as IFD reads it."""

    instruction: str
    input: str
    answer: str
    format: str

    @property
    def template(self) -> PromptTemplate:
        return PROMPT_WITH_INPUT if self.input else PROMPT_NO_INPUT

    @property
    def prompt(self) -> str:
        """The conditioning text: the reference's template, no system prompt, no chat markup."""
        return self.template.format(instruction=self.instruction, input=self.input)


def _text_of(content: Any) -> str:
    """A message's content as text (a list of content blocks is joined)."""
    if isinstance(content, list):
        return "".join(
            block.get("text", "") if isinstance(block, dict) else str(block) for block in content
        )
    if not isinstance(content, str):
        raise ValueError(f"a message's content must be text, got {type(content).__name__}")
    return content


def _last_turn(messages: Any, role: str, column: str, before: int | None = None) -> tuple[int, str]:
    """Index and text of the last ``role`` message in ``messages`` (before index ``before``)."""
    if not isinstance(messages, list):
        raise ValueError(f"`{column}` must be a list of messages, got {type(messages).__name__}")
    end = len(messages) if before is None else before
    for index in range(end - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"`{column}` item {index} is not a message with a `role`")
        if message["role"] == role:
            return index, _text_of(message.get("content"))
    where = "" if before is None else " before the last assistant turn"
    raise ValueError(f"`{column}` has no {role} turn{where}")


def _text_column(row: Row, column: str, *, optional: bool = False) -> str:
    value = row.get(column)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"`{column}` must be text, got {type(value).__name__}")
    return value


def detect_format(row: Row) -> str | None:
    """Which input mapping a row fits (``auto``): alpaca, prompt_completion, messages or None."""
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "messages" in row:
        return "messages"
    return None


def example_of(row: Row, format: Format = "auto") -> Example:
    """The pair in ``row``; ValueError says what is missing or wrong."""
    chosen = detect_format(row) if format == "auto" else format
    if chosen is None:
        raise ValueError(
            "IFD needs `instruction` and `output` (Alpaca; `input` optional), `prompt` and "
            f"`completion`, or `messages`; the row has {sorted(row)}"
        )
    if chosen == "alpaca":
        return Example(
            _text_column(row, "instruction"),
            _text_column(row, "input", optional=True),
            _text_column(row, "output"),
            chosen,
        )
    if chosen == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if prompt is None or completion is None:
            raise ValueError(f"format prompt_completion needs `prompt` and `completion`; the row "
                             f"has {sorted(row)}")
        instruction = (_last_turn(prompt, "user", "prompt")[1] if isinstance(prompt, list)
                       else _text_column(row, "prompt"))
        answer = (_last_turn(completion, "assistant", "completion")[1]
                  if isinstance(completion, list) else _text_column(row, "completion"))
        return Example(instruction, "", answer, chosen)
    messages = row.get("messages")
    if messages is None:
        raise ValueError(f"format messages needs `messages`; the row has {sorted(row)}")
    at, answer = _last_turn(messages, "assistant", "messages")
    _, instruction = _last_turn(messages, "user", "messages", before=at)
    return Example(instruction, "", answer, chosen)


# -- the scorer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IFDScore:
    """One pair's result. ``ifd`` and the perplexities are None when ``unscored`` says why."""

    ifd: float | None
    ppl_conditioned: float | None
    ppl_direct: float | None
    loss_conditioned: float | None
    loss_direct: float | None
    answer_tokens: int
    truncated: bool
    unscored: str | None = None


@dataclass(frozen=True, slots=True)
class _Encoded:
    # Compact int arrays: every row's two sequences are held until the cut is known.
    conditioned: array[int]  # prefix + prompt + answer
    direct: array[int]  # prefix + answer
    answer_tokens: int  # scored in `conditioned` (its last tokens)
    direct_tokens: int  # scored in `direct` (its last tokens)
    truncated: bool


def check_installed(gguf: bool) -> None:
    needed = ["torch", "transformers", *(["gguf"] if gguf else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"IFD scoring needs {', '.join(missing)}: install them with `{INSTALL_HINT}`",
            key="model",
        )


def resolve_model(model: str | os.PathLike[str] | None, base_dir: Path | None = None
                  ) -> tuple[Path, str | None, str]:
    """(folder, GGUF file name or None, display name) for ``model``; None = the embedded model.

    Raises ConfigError (key ``model``) for a path that is not a GGUF file or a model folder.
    """
    from stillroom.llm.llamacpp import EMBEDDED_MODEL_NAME
    from stillroom.llm.transformers_backend import locate

    if model is None:
        folder, gguf_file = locate(None)
        return folder, gguf_file, EMBEDDED_MODEL_NAME
    try:
        path = resolve_input_path(model, base_dir)
    except InputError as error:
        raise ConfigError(error.reason, key="model") from None
    folder, gguf_file = locate(str(path))
    return folder, gguf_file, gguf_file or folder.name


class IFDScorer:
    """IFD of (prompt, answer) pairs with a local causal LM: ``score(pairs) -> [IFDScore]``.

    ``prompt`` is the conditioning text as the model reads it (:attr:`Example.prompt` gives the
    reference's template). The model loads on first use, or with :meth:`load`; or wrap a model
    and tokenizer already loaded with :meth:`from_model`. :meth:`score` blocks; it is not safe to
    call from two threads at once.
    """

    folder: Path | None  # where the model loads from (None: given in memory)
    gguf_file: str | None

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 1024,
        batch_size: int = 16,
        batch_tokens: int = 4096,
        device: str = "auto",
        dtype: Dtype = "float32",
        base_dir: Path | None = None,
    ):
        folder, gguf_file, name = resolve_model(model, base_dir)
        self._settings(max_length, batch_size, batch_tokens, device, dtype)
        self.folder, self.gguf_file, self.name = folder, gguf_file, name

    def _settings(
        self, max_length: int, batch_size: int, batch_tokens: int, device: str, dtype: str
    ) -> None:
        if max_length < 2 or batch_size < 1 or batch_tokens < 1:
            raise ValueError("max_length must be at least 2, batch_size and batch_tokens at least 1")
        if not _DEVICE.match(device):
            raise ValueError(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps")
        self.max_length = max_length
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.device = device
        self.dtype = dtype
        self.folder = None
        self.gguf_file = None
        self.name = "model"
        self.forward_calls = 0  # how the sequences were batched, for a look
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._prefix: list[int] = []
        self._pad_id = 0
        self._keeps_logits = False

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        max_length: int = 1024,
        batch_size: int = 16,
        batch_tokens: int = 4096,
    ) -> IFDScorer:
        """A scorer over a causal LM and tokenizer already in memory (a test, a notebook)."""
        scorer = cls.__new__(cls)
        parameter = next(model.parameters())
        scorer._settings(max_length, batch_size, batch_tokens, "auto",
                         str(parameter.dtype).removeprefix("torch."))
        scorer.device = str(parameter.device)
        scorer.name = name
        scorer._use(model.eval(), tokenizer)
        return scorer

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now rather than on the first :meth:`score` (blocks until loaded)."""
        if self._model is not None:
            return
        assert self.folder is not None
        check_installed(self.gguf_file is not None)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(self.folder, **kwargs)
        # Parsed once and handed on: given no config, from_pretrained parses a GGUF twice.
        config = AutoConfig.from_pretrained(self.folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            self.folder, config=config, dtype=getattr(torch, self.dtype), **kwargs
        )
        self._use(model.to(device).eval(), tokenizer)  # type: ignore[arg-type]

    def _use(self, model: Any, tokenizer: Any) -> None:
        import inspect

        import torch

        self._torch = torch
        self._tokenizer = tokenizer
        self._prefix = _leading_special_ids(tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        # Padding is masked out and never scored, so its id only has to be a valid one.
        self._pad_id = int(pad) if pad is not None else 0
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            self.max_length = min(self.max_length, positions)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._model = model

    # -- encoding --------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, prompt: str, answer: str) -> _Encoded | str:
        """The two sequences to score, or the reason the pair cannot be scored."""
        if not answer.strip():
            return REASON_EMPTY
        prompt_ids = self._ids(prompt)
        answer_ids = self._ids(answer)
        # The reference cuts the joined text at max_length: what goes is the answer's end.
        room = self.max_length - len(self._prefix) - len(prompt_ids)
        if room <= 0:
            return REASON_PROMPT_TOO_LONG
        kept = answer_ids[:room]
        # Without a leading special token nothing predicts the answer's first token read alone.
        direct_tokens = len(kept) if self._prefix else len(kept) - 1
        if direct_tokens < 1:
            return REASON_ONE_TOKEN
        return _Encoded(
            conditioned=array("i", [*self._prefix, *prompt_ids, *kept]),
            direct=array("i", [*self._prefix, *kept]),
            answer_tokens=len(kept),
            direct_tokens=direct_tokens,
            truncated=len(kept) < len(answer_ids),
        )

    # -- scoring ---------------------------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[IFDScore]:
        """One :class:`IFDScore` per ``(prompt, answer)``, in order. ``progress(done, total)`` is
        called after each batch with counts of sequences (two per scored pair)."""
        self.load()
        encoded = [self.encode(prompt, answer) for prompt, answer in pairs]
        sequences: list[tuple[Sequence[int], int]] = []
        for item in encoded:
            if isinstance(item, _Encoded):
                sequences.append((item.conditioned, item.answer_tokens))
                sequences.append((item.direct, item.direct_tokens))
        losses = iter(self.losses(sequences, progress))
        results = []
        for item in encoded:
            if isinstance(item, str):
                results.append(IFDScore(None, None, None, None, None, 0, False, unscored=item))
                continue
            conditioned, direct = next(losses), next(losses)
            results.append(
                IFDScore(
                    ifd=_exp(conditioned - direct),
                    ppl_conditioned=_exp(conditioned),
                    ppl_direct=_exp(direct),
                    loss_conditioned=conditioned,
                    loss_direct=direct,
                    answer_tokens=item.answer_tokens,
                    truncated=item.truncated,
                )
            )
        return results

    def losses(
        self,
        sequences: Sequence[tuple[Sequence[int], int]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[float]:
        """Mean token loss (natural log) over the last ``n`` tokens of each ``(ids, n)``, batched.

        Each sequence needs ``1 <= n < len(ids)`` (a token before the first scored one).
        """
        self.load()
        results = [math.nan] * len(sequences)
        done = 0
        with self._torch.inference_mode():
            for batch in self._batches(sequences):
                values = self._batch_losses([sequences[i] for i in batch])
                for index, value in zip(batch, values, strict=True):
                    results[index] = value
                done += len(batch)
                if progress is not None:
                    progress(done, len(sequences))
        return results

    def _batches(self, sequences: Sequence[tuple[Sequence[int], int]]) -> list[list[int]]:
        """Indices grouped longest first, so a batch holds sequences of similar length (little
        padding), at most batch_size of them and batch_tokens padded tokens."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        batches: list[list[int]] = []
        current: list[int] = []
        width = 0
        for index in order:
            length = len(sequences[index][0])
            if current and (
                len(current) >= self.batch_size or (len(current) + 1) * width > self.batch_tokens
            ):
                batches.append(current)
                current = []
            if not current:
                width = length  # the longest of the batch: they come longest first
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def _batch_losses(self, batch: list[tuple[Sequence[int], int]]) -> list[float]:
        torch = self._torch
        device = next(self._model.parameters()).device
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        # Left padding: each row's positions count from its own first token, as when alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # The scored tokens are every row's last ones; the logits of the `keep` last columns
        # predict them (a full row of logits is vocabulary-sized per token).
        keep = max(n for _, n in batch) + 1
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._keeps_logits else {}
        logits = self._model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            **kwargs,
        ).logits[:, -keep:, :]
        self.forward_calls += 1
        labels = input_ids[:, width - keep + 1:].clone()
        for row, (_, n) in enumerate(batch):
            labels[row, : keep - 1 - n] = -100  # prompt tokens and padding are not scored
        labels = labels.to(device)
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1, :].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(len(batch), keep - 1)
        counts = torch.tensor([n for _, n in batch], dtype=torch.float32, device=device)
        return [float(value) for value in (token_losses.sum(dim=1) / counts).tolist()]


def _usable(score: IFDScore | None) -> float | None:
    """The score to rank by; None for a row that was not scored or whose loss is not finite."""
    if score is None or score.unscored is not None:
        return None
    if not _finite(score.loss_conditioned, score.loss_direct):
        return None
    return score.ifd


def _finite(*values: float | None) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before plain text by default (a BOS token, or nothing)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


# -- selection -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which scored rows are kept: ``ranks`` (index -> rank among IFD < max_ifd, 1 = highest),
    ``kept`` (indices), ``cutoff`` (the lowest kept IFD, None when none is kept)."""

    ranks: dict[int, int]
    kept: frozenset[int]
    cutoff: float | None
    count: int  # how many the fraction or top_k asks for


def select_top(
    scores: Sequence[float | None],
    total: int,
    *,
    top_fraction: float | None,
    top_k: int | None,
    max_ifd: float = 1.0,
) -> Selection:
    """Rank the rows with IFD < ``max_ifd`` by IFD, highest first (ties: the earlier row), and
    keep the first ``top_k``, or ``ceil(top_fraction * total)`` (``total``: every row the stage
    received, scored or not)."""
    eligible = [i for i, s in enumerate(scores) if s is not None and not math.isnan(s) and s < max_ifd]
    ranked = sorted(eligible, key=lambda i: (-float(scores[i]), i))  # type: ignore[arg-type]
    if top_k is not None:
        count = top_k
    else:
        fraction = DEFAULT_TOP_FRACTION if top_fraction is None else top_fraction
        # The small epsilon: 0.1 * 30 is 3.0000000000000004 in floating point, and means 3.
        count = math.ceil(fraction * total - 1e-9)
    kept = ranked[:count]
    cutoff = float(scores[kept[-1]]) if kept else None  # type: ignore[arg-type]
    return Selection(
        ranks={index: rank for rank, index in enumerate(ranked, start=1)},
        kept=frozenset(kept),
        cutoff=cutoff,
        count=count,
    )


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class IFDFilter(AllRowsStage):
    """Score every row's IFD and keep the top fraction (or count) of those with IFD < 1."""

    type: Literal["ifd_filter"] = "ifd_filter"
    model: str | None = Field(
        default=None,
        description="A .gguf file or a transformers model folder (relative to the pipeline "
        "file); none = the embedded SmolLM2-135M-Instruct.",
    )
    top_fraction: float | None = Field(
        default=None, gt=0, le=1,
        description="Keep this share of the rows (rounded up); default 0.1 unless top_k is set.",
    )
    top_k: int | None = Field(default=None, ge=1, description="Keep this many rows instead.")
    max_ifd: float = Field(
        default=1.0, gt=0, description="Drop rows with IFD at or above this (reference: 1)."
    )
    max_length: int = Field(
        default=1024, ge=2, description="Tokens of prompt + answer scored (reference: 1024)."
    )
    format: Format = Field(
        default="auto", description="Input columns: auto, alpaca, prompt_completion, messages."
    )
    batch_size: int = Field(default=16, ge=1, description="Sequences per forward pass.")
    batch_tokens: int = Field(
        default=4096, ge=1, description="Most padded tokens per forward pass (bounds memory)."
    )
    device: str = Field(default="auto", description='"auto", "cpu", "cuda", "cuda:1", "mps".')
    dtype: Dtype = Field(default="float32", description="float32 (the default), bfloat16, float16.")

    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A wrong path or a missing package is reported now, before any row is read.
        try:
            _, gguf_file, _ = resolve_model(value, _base_dir_of(info))
            check_installed(gguf_file is not None)
        except ConfigError as error:
            raise PydanticCustomError("ifd_model", "{reason}", {"reason": error.reason}) from None
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> IFDFilter:
        if self.top_fraction is not None and self.top_k is not None:
            raise PydanticCustomError(
                "ifd_selection", "set top_fraction or top_k, not both", {}
            )
        if self.top_fraction is None and self.top_k is None:
            self.top_fraction = DEFAULT_TOP_FRACTION
        self._base_dir = _base_dir_of(info)
        return self

    def identity(self) -> dict[str, Any]:
        # Batching and the device decide how the scores are computed, not what they are.
        out = self.model_dump(
            mode="json", exclude={"name", "batch_size", "batch_tokens", "device"}
        )
        out["model"] = _model_identity(self.model, self._base_dir)
        return out

    @property
    def selection_label(self) -> str:
        if self.top_k is not None:
            return f"top {self.top_k}"
        return f"top {(self.top_fraction or DEFAULT_TOP_FRACTION) * 100:g}%"

    def not_helpful_reason(self) -> str:
        if self.max_ifd == 1.0:
            return REASON_NOT_HELPFUL
        return f"ifd >= {self.max_ifd:g}"

    def check_row(self, row: Row) -> str | None:
        try:
            example_of(row, self.format)
        except ValueError as error:
            return str(error)
        return None

    def scorer(self) -> IFDScorer:
        return IFDScorer(
            self.model,
            max_length=self.max_length,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            device=self.device,
            dtype=self.dtype,
            base_dir=self._base_dir,
        )

    def summary_columns(self) -> list[str]:
        return ["ifd", "ifd_truncated"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """How many rows were scored, the median IFD, how many had IFD >= max_ifd, and how many
        answers were truncated (over kept and dropped rows)."""
        scores = sorted(float(r["ifd"]) for r in rows if isinstance(r.get("ifd"), (int, float)))
        if not scores:
            return {}
        middle = len(scores) // 2
        median = scores[middle] if len(scores) % 2 else (scores[middle - 1] + scores[middle]) / 2
        return {
            "rows scored": len(scores),
            "median ifd": median,
            f"ifd >= {self.max_ifd:g}": sum(1 for s in scores if s >= self.max_ifd),
            "answers truncated": sum(1 for r in rows if r.get("ifd_truncated") is True),
        }

    async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:
        examples: list[Example | None] = []
        for row in rows:
            try:
                examples.append(example_of(row, self.format))
            except ValueError as error:
                examples.append(None)
                yield Failed(row, RowFailure(str(error), kind="BadInput"))
        pairs = [(ex.prompt, ex.answer) for ex in examples if ex is not None]
        scorer = self.scorer()
        # The model loads and runs in a worker thread: the event loop (progress, flushes) goes on.
        results = await asyncio.to_thread(scorer.score, pairs) if pairs else []
        scored = iter(results)
        scores: list[IFDScore | None] = [
            next(scored) if ex is not None else None for ex in examples
        ]
        selection = select_top(
            [_usable(score) for score in scores],
            len(rows),
            top_fraction=self.top_fraction,
            top_k=self.top_k,
            max_ifd=self.max_ifd,
        )
        for index, (row, example, score) in enumerate(zip(rows, examples, scores, strict=True)):
            if example is None or score is None:
                continue
            out = self._annotate(row, example, score, index, selection, ctx, scorer.name)
            if score.unscored is not None:
                yield Dropped(out, score.unscored)
            elif not _finite(score.loss_conditioned, score.loss_direct):
                yield Failed(out, RowFailure(
                    f"the model's loss is not a finite number (with the prompt: "
                    f"{score.loss_conditioned}, alone: {score.loss_direct})",
                    kind="NonFiniteScore",
                ))
            elif (score.ifd or 0.0) >= self.max_ifd:
                yield Dropped(out, self.not_helpful_reason())
            elif index in selection.kept:
                yield out
            else:
                yield Dropped(
                    out,
                    f"ifd below the {self.selection_label} cutoff ({selection.cutoff:.4g})",
                )

    def _annotate(
        self,
        row: Row,
        example: Example,
        score: IFDScore,
        index: int,
        selection: Selection,
        ctx: StageContext,
        model: str,
    ) -> Row:
        out = dict(row)
        out["ifd"] = score.ifd
        out["ifd_ppl_conditioned"] = score.ppl_conditioned
        out["ifd_ppl_direct"] = score.ppl_direct
        out["ifd_answer_tokens"] = score.answer_tokens
        out["ifd_truncated"] = score.truncated
        return with_lineage(
            out,
            ctx.stage_name,
            method=METHOD,
            step="filter",
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=model,
            template=example.template,
            format=example.format,
            rank=selection.ranks.get(index),
            kept=index in selection.kept,
            cutoff=selection.cutoff,
            selection=self.selection_label,
            max_length=self.max_length,
        )


def _base_dir_of(info: ValidationInfo) -> Path | None:
    """The pipeline file's folder, when the stage comes from a file (relative model paths)."""
    return pipeline_dir(info)


def _model_identity(model: str | None, base_dir: Path | None) -> dict[str, Any]:
    """A GGUF by name and size, a folder by name and config hash (not its path: a moved model is
    the same model)."""
    folder, gguf_file, name = resolve_model(model, base_dir)
    if gguf_file is not None:
        return {"name": name, "size": (folder / gguf_file).stat().st_size}
    config = (folder / "config.json").read_bytes()
    return {"name": name, "config": hashlib.sha256(config).hexdigest()[:16]}


# -- the library function --------------------------------------------------------------------------


def ifd_stage(**options: Any) -> IFDFilter:
    """An :class:`IFDFilter` from keyword options; a bad option is a ConfigError naming it."""
    try:
        return IFDFilter(**options)
    except ValidationError as validation:
        problem = validation.errors()[0]
        key = ".".join(str(part) for part in problem["loc"]) or None
        raise ConfigError(str(problem["msg"]), key=key) from None


def ifd_outcome(out: str | os.PathLike[str], stage: IFDFilter, stage_name: str = "ifd_filter"
                ) -> dict[str, Any]:
    """What an IFD stage did in the run written to ``out``: rows kept, dropped for IFD >= max,
    dropped below the cut, not scored, and the cutoff. Reads ``data/`` (rows with an ``ifd``)
    and this stage's rows in ``dropped/``."""
    folder = OutputFolder(Path(out))
    kept = [v for v in folder.read_column("data", "ifd") if v is not None]
    dropped = [
        r for r in folder.read_columns("dropped", ["stage", "ifd", "drop_reason"])
        if r.get("stage") == stage_name
    ]
    high = sum(1 for r in dropped if r["ifd"] is not None and r["ifd"] >= stage.max_ifd)
    unscored = sum(1 for r in dropped if r.get("drop_reason") in UNSCORED_REASONS)
    below = len(dropped) - high - unscored
    return {
        "selection": stage.selection_label,
        "rows": len(kept) + len(dropped),
        "kept": len(kept),
        "not_helpful": high,
        "below_cutoff": below,
        "unscored": unscored,
        "cutoff": min(kept) if kept else None,
    }


def outcome_line(outcome: dict[str, Any], max_ifd: float = 1.0) -> str:
    """One line for a terminal: ``ifd: kept 20 of 200 rows (top 10%, cutoff 0.7312); ...``."""
    cutoff = "" if outcome["cutoff"] is None else f", cutoff {outcome['cutoff']:.4g}"
    line = (
        f"ifd: kept {outcome['kept']:,} of {outcome['rows']:,} rows ({outcome['selection']}"
        f"{cutoff}); {outcome['not_helpful']:,} had ifd >= {max_ifd:g}"
    )
    if outcome["unscored"]:
        line += f", {outcome['unscored']:,} could not be scored"
    return line


def ifd_filter(
    input: str | os.PathLike[str] | list[Row],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    top_fraction: float | None = None,
    top_k: int | None = None,
    max_ifd: float = 1.0,
    max_length: int = 1024,
    format: Format = "auto",
    batch_size: int = 16,
    batch_tokens: int = 4096,
    device: str = "auto",
    dtype: Dtype = "float32",
    **run_options: Any,
) -> RunResult:
    """Keep the rows of ``input`` with the highest IFD (below ``max_ifd``): a pipeline of one
    ``ifd_filter`` stage, written to ``out``. ``result.summary["ifd"]`` holds what
    :func:`ifd_outcome` reports."""
    stage = ifd_stage(
        model=None if model is None else str(model),
        top_fraction=top_fraction,
        top_k=top_k,
        max_ifd=max_ifd,
        max_length=max_length,
        format=format,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        device=device,
        dtype=dtype,
    )
    pipeline = Pipeline([stage], input=input, name=f"stillroom filter --ifd ({stage.selection_label})")
    result = pipeline.run(out, **run_options)
    summary = dict(result.summary or {})
    summary["ifd"] = ifd_outcome(result.out, stage, pipeline.stage_names[0])
    result.summary = summary
    return result
