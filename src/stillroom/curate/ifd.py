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
      backend: null            # or the name of a pipeline backend that can score (transformers,
                               # vllm) instead of model/batch_size/batch_tokens/device/dtype

From the command line: ``stillroom filter INPUT -o OUT --ifd [--ifd-model PATH]
[--ifd-top-fraction 0.1 | --ifd-top-k N] [--ifd-max-length 1024]``; from Python:
:func:`stillroom.api.ifd_filter`, or :class:`IFDScorer` for the scores alone. What the stage
decided (rows kept, dropped and why, the cutoff) is in the run's ``summary["stage_results"]``.

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

A loss that is not a finite number sends the row to ``failed/`` (``NonFiniteScore``), as does
a scoring request that failed after its retries (its error kind).

How it runs. IFD needs every score before the cut, so this is an all-rows stage. Each row gives
two scoring requests (``Backend.score``, teacher forcing) sent through an
:class:`~stillroom.llm.client.LLMClient`, so the run's request cache answers a rerun and any
backend that can score serves them: the answer after the prompt, cut to ``max_length``; then the
answer tokens kept, read alone. By default the backend is a transformers one of the stage's own
on ``model`` (freed when the stage is done), with the request cache the run's backends share
(none when the pipeline has no backend); ``backend:`` names one of the pipeline's instead (a
vllm engine scores with prompt logprobs). Like every all-rows stage it runs in the driving
process, also under the Ray executor. The transformers backend
pools the requests waiting together, sorts them by length and scores them in batches (at most
``batch_size`` sequences and ``batch_tokens`` padded tokens), left-padded with an attention mask
and position ids counted from each row's first real token, so a padded row computes what it
computes alone (SmolLM2's pad token is its end-of-turn token, which the mask hides). Only the
logits of the answer positions are made (``logits_to_keep``). Batched scores equal one-at-a-time
scores up to float rounding (tested to 1e-4 relative). torch, transformers and (for a GGUF) gguf
are imported on first use; the ``train`` extra installs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stillroom.curate.ifd_scoring import (
    DEFAULT_TOP_FRACTION,
    REASON_EMPTY,
    REASON_ONE_TOKEN,
    REASON_PROMPT_TOO_LONG,
    Dtype,
    Example,
    Format,
    IFDScore,
    IFDScorer,
    Selection,
    _finite,
    _usable,
    check_installed,
    example_of,
    resolve_model,
    select_top,
)
from stillroom.data.rows import row_id, seed_id_of, with_lineage
from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig
from stillroom.llm.cache import RequestCache
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    Row,
    RowFailure,
    Rows,
    StageContext,
    pipeline_dir,
    register_stage,
)

METHOD = "ifd"
REASON_NOT_HELPFUL = "ifd >= 1 (the instruction does not help predict the answer)"
UNSCORED_REASONS = (REASON_EMPTY, REASON_ONE_TOKEN, REASON_PROMPT_TOO_LONG)

COLUMNS = ("ifd", "ifd_ppl_conditioned", "ifd_ppl_direct", "ifd_answer_tokens", "ifd_truncated")
# The options that say how the stage's own transformers backend runs (not with `backend`).
_LOCAL_MODEL_OPTIONS = ("model", "batch_size", "batch_tokens", "device", "dtype")


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class IFDFilter(AllRowsStage):
    """Score every row's IFD and keep the top fraction (or count) of those with IFD < 1."""

    type: Literal["ifd_filter"] = "ifd_filter"
    path_options: ClassVar[tuple[str, ...]] = ("model",)
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
    backend: str | None = Field(
        default=None,
        description="Score with this backend of the pipeline (`backends:`; one that can score: "
        "transformers, vllm) instead of a model of the stage's own; its model, device and "
        "batching then apply.",
    )

    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        from stillroom.llm.torch_device import device_problem

        problem = device_problem(value)
        if problem:
            raise ValueError(problem)
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
        local = [name for name in _LOCAL_MODEL_OPTIONS if name in self.model_fields_set]
        if self.backend is not None and local:
            raise PydanticCustomError(
                "ifd_backend",
                "set `backend` or the stage's own model options ({options}), not both: the "
                "backend's own settings apply",
                {"options": ", ".join(local)},
            )
        self._base_dir = _base_dir_of(info)
        return self

    def backend_names(self) -> set[str]:
        return {self.backend} if self.backend is not None else set()

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        if self.backend is None:
            return
        backend_class = configs[self.backend].backend_class()
        if not backend_class.supports_scoring:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) cannot score a given completion "
                "(teacher forcing); IFD needs a `transformers` or `vllm` backend",
                key="backend",
            )

    def identity(self) -> dict[str, Any]:
        # Batching and the device decide how the scores are computed, not what they are.
        out = self.model_dump(
            mode="json", exclude={"name", "batch_size", "batch_tokens", "device", "backend"}
        )
        if self.backend is None:
            out["model"] = _model_identity(self.model, self._base_dir)
        else:  # the pipeline's identity holds the backend's (model, dtype...)
            del out["model"], out["dtype"]
            out["backend"] = self.backend
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

    def scorer(self, ctx: StageContext | None = None) -> IFDScorer:
        """The scorer of a run: through the pipeline's ``backend`` when one is named, else
        through a transformers backend of its own on ``model``, with the run's request cache
        (when ``ctx`` reaches one)."""
        if self.backend is not None:
            if ctx is None:
                raise ValueError(f"backend {self.backend!r} is a pipeline's: score in a run")
            return IFDScorer.from_client(ctx.client(self.backend), max_length=self.max_length)
        return IFDScorer(
            self.model,
            max_length=self.max_length,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            device=self.device,
            dtype=self.dtype,
            base_dir=self._base_dir,
            cache=_run_cache(ctx),
        )

    def summary_columns(self) -> list[str]:
        # drop_reason tells a row in data/ (none) from one this stage dropped (by its reason).
        return ["ifd", "ifd_truncated", "drop_reason"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """What the stage decided: rows it kept and dropped (with IFD >= max_ifd, below the cut,
        or not scored), the cutoff (the lowest IFD kept); and over every scored row, kept or
        dropped, how many were scored, the median IFD and how many answers were truncated."""
        not_helpful, below_cut = self.not_helpful_reason(), f"ifd below the {self.selection_label} cutoff"
        kept: list[float] = []
        dropped = {"not_helpful": 0, "below_cut": 0, "unscored": 0}
        for row in rows:
            reason = row.get("drop_reason")
            if reason is None:
                if isinstance(row.get("ifd"), (int, float)):
                    kept.append(float(row["ifd"]))
            elif reason == not_helpful:
                dropped["not_helpful"] += 1
            elif reason in UNSCORED_REASONS:
                dropped["unscored"] += 1
            elif str(reason).startswith(below_cut):
                dropped["below_cut"] += 1
        scores = sorted(float(r["ifd"]) for r in rows if isinstance(r.get("ifd"), (int, float)))
        if not kept and not any(dropped.values()) and not scores:
            return {}
        figures: dict[str, Any] = {
            "selection": self.selection_label,
            "rows": len(kept) + sum(dropped.values()),
            "kept": len(kept),
        }
        if kept:
            figures["cutoff"] = min(kept)
        figures[f"ifd >= {self.max_ifd:g}"] = dropped["not_helpful"]
        figures["below the cutoff"] = dropped["below_cut"]
        figures["not scored"] = dropped["unscored"]
        figures["rows scored"] = len(scores)
        if scores:
            middle = len(scores) // 2
            figures["median ifd"] = (scores[middle] if len(scores) % 2
                                     else (scores[middle - 1] + scores[middle]) / 2)
        figures["answers truncated"] = sum(1 for r in rows if r.get("ifd_truncated") is True)
        return figures

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """"ifd: kept 20 of 200 rows (top 10%, cutoff 0.7312); 31 had ifd >= 1"."""
        if "kept" not in figures:
            return None
        cutoff = "" if figures.get("cutoff") is None else f", cutoff {figures['cutoff']:.4g}"
        line = (
            f"ifd: kept {figures['kept']:,} of {figures['rows']:,} rows ({self.selection_label}"
            f"{cutoff}); {figures[f'ifd >= {self.max_ifd:g}']:,} had ifd >= {self.max_ifd:g}"
        )
        if figures.get("not scored"):
            line += f", {figures['not scored']:,} could not be scored"
        return line

    async def run(self, rows: Rows, ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:
        # Two passes over the rows (read, then decide); only the pairs and scores are held.
        examples: list[Example | None] = []
        for row in rows:
            try:
                examples.append(example_of(row, self.format))
            except ValueError as error:
                examples.append(None)
                yield Failed(row, RowFailure(str(error), kind="BadInput"))
        pairs = [(ex.prompt, ex.answer) for ex in examples if ex is not None]
        scorer = self.scorer(ctx)
        # The backend loads and runs its model in its worker thread: the event loop (progress,
        # flushes) goes on.
        try:
            results = await scorer.ascore(pairs) if pairs else []
        finally:
            await scorer.aclose()
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
            elif score.failure is not None:
                yield Failed(out, RowFailure(score.failure, kind=score.failure_kind or "RequestFailed"))
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


def _run_cache(ctx: StageContext | None) -> RequestCache | None:
    """The run's request cache (None without one: --no-cache), as the pipeline's clients share
    it."""
    if ctx is None:
        return None
    cache: RequestCache | None = getattr(ctx, "cache", None)
    if cache is None:
        cache = next((c.cache for c in ctx.clients.values() if c.cache is not None), None)
    return cache


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
