"""``completions``: several completions per prompt from several teachers, UltraFeedback style.

    - type: completions
      teachers:
        - {backend: big, n: 2}
        - {backend: small, n: 2, model: small-t1.2, temperature: 1.2}
      principles: {helpfulness: 0.6, truthfulness: 0.2, honesty: 0.18,
                   verbalized_calibration: 0.02}   # the default; `none` switches them off
      top_logprobs: 5          # keep each token's top-5 logprobs in `logprobs`
      min_completions: 3       # keep a row when at least 3 samples came back

UltraFeedback (Cui et al. 2023) asks several different models for completions of each prompt
(four per prompt), and steers each completion with a *principle* sampled for it: one of several
system prompts written for helpfulness, truthfulness, honesty or verbalized calibration (see
:mod:`stillroom.generate.principles`). A judge then rates the completions side by side. This stage
makes the completions: for each teacher ``n`` samples, each with its own principle and system
prompt, all of a row's requests in flight at once.

Output, aligned list by list (teacher order, then sample order):

* ``completions``: the texts;
* ``completion_sources``: ``{teacher, backend, model, principle, system_prompt_id, sample,
  finish_reason}`` per completion (``principle`` is null with ``principles: none``);
* ``logprobs``: per completion, only when ``top_logprobs`` is set;
* ``reasoning``: per completion, the teacher's reasoning trace (None for a completion without
  one), only when some completion has a trace; ``metadata[<stage>].reasoning_tokens`` counts
  their tokens.

A sample that fails after its retries, or comes back empty, fails the row (the samples that did
succeed stay in the request cache, so a rerun asks only for the rest). With ``min_completions: k``
the row is kept when at least ``k`` samples succeeded: the lists then hold only those, and the
failed samples with their reasons are in ``metadata[<stage>].failed_samples``. ``completions``
never holds an empty text. A sample whose reasoning trace never ended (cut at ``max_tokens``
while thinking) has no answer and is a failed sample the same way, of kind
``ReasoningTruncated``: it fails the row, or with ``min_completions`` is left out of the lists
and listed in ``failed_samples``; neither its partial trace nor an empty answer reaches
``data/``.

Every request of a row carries a distinct ``sample`` index (its position in the row), so two
teachers on one backend with the same settings still get separate cache entries and seeds; a
different system prompt is a different request anyway (the cache keys on the messages).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stillroom.data.rows import (
    Row,
    check_prompt,
    derived_id,
    has_trace,
    prompt_messages,
    row_id,
    seed_id_of,
    trace_columns,
    trace_usage,
    truncated_reason,
    with_lineage,
)
from stillroom.errors import ConfigError
from stillroom.generate.principles import (
    DEFAULT_WEIGHTS,
    PRINCIPLES_VERSION,
    PrincipleChoice,
    check_weights,
    sample_principle,
)
from stillroom.llm.reasoning import TRUNCATED_REASONING
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig


class Teacher(BaseModel):
    """One model asked for completions; its sampling settings override the stage's."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(default="default", description="Backend name under `backends:`.")
    n: int = Field(default=1, ge=1, le=64, description="Completions from this teacher per row.")
    model: str | None = Field(
        default=None, description="Label recorded in completion_sources; default: the model's name."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)


@register_stage
class Completions(RowStage):
    type: Literal["completions"] = "completions"
    teachers: list[Teacher] = Field(min_length=1, description="Who answers, and how many times.")
    principles: dict[str, float] | None = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Principle -> sampling weight (UltraFeedback's mix by default); "
        "`none` = no principle system prompt.",
    )
    # UltraFeedback sampled every completion at temperature 1, top_p 1, up to 1024 tokens.
    temperature: float | None = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=1024, ge=1)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    min_completions: int | None = Field(
        default=None,
        ge=1,
        description="Keep a row when at least this many samples succeed; default: all of them.",
    )

    @field_validator("principles", mode="before")
    @classmethod
    def _none_disables(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> Completions:
        if self.principles is not None:
            problem = check_weights(self.principles)
            if problem:
                raise ValueError(problem)
        total = sum(teacher.n for teacher in self.teachers)
        if self.min_completions is not None and self.min_completions > total:
            raise ValueError(
                f"min_completions is {self.min_completions} but the teachers give only {total} "
                "completions per row"
            )
        return self

    def backend_names(self) -> set[str]:
        return {teacher.backend for teacher in self.teachers}

    def generated_columns(self) -> list[str]:
        return ["completions"]

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        if self.top_logprobs is None:
            return
        for index, teacher in enumerate(self.teachers):
            backend_class = configs[teacher.backend].backend_class()
            if not backend_class.supports_logprobs:
                raise ConfigError(
                    f"teachers[{index}]: backend {teacher.backend!r} ({backend_class.kind}) does "
                    "not return logprobs; remove top_logprobs or use an OpenAI-compatible, "
                    "llama.cpp or transformers backend",
                    key="top_logprobs",
                )

    def check_row(self, row: Row) -> str | None:
        return check_prompt(row)

    # -- building requests -----------------------------------------------------------------------

    def row_key(self, row: Row) -> str:
        """The row's id, or a stable id from its prompt (randomness is seeded with it)."""
        given = row_id(row)
        if given is not None:
            return given
        return derived_id("prompt", row.get("messages") or row.get("prompt"))

    def messages_for(self, row: Row, choice: PrincipleChoice | None) -> list[dict[str, Any]]:
        # A conversation that already ends in an answer gets that answer regenerated.
        messages = prompt_messages(row) or []
        if choice is not None:
            if messages and messages[0]["role"] == "system":
                # As UltraFeedback does: the principle goes after the conversation's own system
                # prompt rather than replacing it.
                own = str(messages[0]["content"]).rstrip()
                messages[0]["content"] = f"{own}\n\n{choice.system_prompt}"
            else:
                messages.insert(0, {"role": "system", "content": choice.system_prompt})
        return messages

    def params_for(self, teacher: Teacher, ctx: StageContext) -> GenerationParams:
        def pick(own: Any, default: Any) -> Any:
            return own if own is not None else default

        return GenerationParams(
            temperature=pick(teacher.temperature, self.temperature),
            top_p=pick(teacher.top_p, self.top_p),
            max_tokens=pick(teacher.max_tokens, self.max_tokens),
            stop=tuple(self.stop) if self.stop else None,
            seed=self.seed if self.seed is not None else ctx.seed,
            top_logprobs=self.top_logprobs,
        )

    def plan(self, row: Row, ctx: StageContext) -> list[tuple[int, int, PrincipleChoice | None]]:
        """(teacher index, sample within the teacher, principle) for every completion of a row.

        The principle depends only on the row's id, the teacher and the sample, so it is the same
        on every run and in whatever order rows arrive.
        """
        key = self.row_key(row)
        out: list[tuple[int, int, PrincipleChoice | None]] = []
        for t_index, teacher in enumerate(self.teachers):
            for sample in range(teacher.n):
                choice = None
                if self.principles is not None:
                    choice = sample_principle(self.principles, ctx.rng(key, t_index, sample))
                out.append((t_index, sample, choice))
        return out

    # -- the stage -------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> Row:
        plan = self.plan(row, ctx)
        calls = []
        for position, (t_index, _, choice) in enumerate(plan):
            teacher = self.teachers[t_index]
            request = Request(
                messages=self.messages_for(row, choice),
                params=self.params_for(teacher, ctx),
                sample=position,  # distinct per row, so equal teachers never share a cache entry
            )
            calls.append(ctx.client(teacher.backend).generate(request))
        results = await asyncio.gather(*calls, return_exceptions=True)

        kept: list[tuple[int, Completion]] = []
        failures: list[tuple[int, BaseException]] = []
        for position, result in enumerate(results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                failures.append((position, result))
            elif not result.reasoning_ended:
                failures.append((position, RowFailure(
                    truncated_reason(result, can_flag=False), kind=TRUNCATED_REASONING)))
            elif not result.text.strip():
                failures.append((position, RowFailure(
                    f"came back empty (finish_reason={result.finish_reason})",
                    kind="EmptyCompletion",
                )))
            else:
                kept.append((position, result))
        for _, error in failures:
            if not isinstance(error, (RequestFailed, RowFailure)):
                raise error  # a bug, not a failed sample: let it show as such
        needed = self.min_completions if self.min_completions is not None else len(plan)
        if len(kept) < needed:
            self._fail(plan, failures, len(kept), needed)

        sources = []
        for position, completion in kept:
            t_index, sample, choice = plan[position]
            teacher = self.teachers[t_index]
            sources.append({
                "teacher": t_index,
                "backend": teacher.backend,
                "model": teacher.model or completion.model,
                "principle": choice.principle if choice else None,
                "system_prompt_id": choice.system_prompt_id if choice else None,
                "sample": sample,
                "finish_reason": completion.finish_reason,
            })
        out = dict(row)
        out["id"] = self.row_key(row)
        out["completions"] = [completion.text for _, completion in kept]
        out["completion_sources"] = sources
        if self.top_logprobs is not None:
            out["logprobs"] = [completion.logprobs for _, completion in kept]
        answered = [completion for _, completion in kept]
        if has_trace(answered):
            out.update(trace_columns("reasoning", answered, True, flag=False))
        models = list(dict.fromkeys(source["model"] for source in sources))
        extra: dict[str, Any] = {
            "teachers": [
                {"backend": t.backend, "model": t.model, "n": t.n} for t in self.teachers
            ],
            "principles": dict(self.principles) if self.principles is not None else None,
            "prompt_tokens": sum(c.prompt_tokens for _, c in kept),
            "completion_tokens": sum(c.completion_tokens for _, c in kept),
        }
        if has_trace(answered):
            extra.update(trace_usage(answered))
        if self.min_completions is not None:
            extra["failed_samples"] = [
                self._failure_record(plan, position, error) for position, error in failures
            ]
        out = with_lineage(
            out,
            ctx.stage_name,
            method="completions",
            step="teachers",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or out["id"],
            model=None,
            template=PRINCIPLES_VERSION if self.principles is not None else None,
            **extra,
        )
        out["metadata"][ctx.stage_name]["model"] = models  # several teachers: all their models
        return out

    def _failure_record(
        self, plan: list[tuple[int, int, PrincipleChoice | None]], position: int,
        error: BaseException,
    ) -> dict[str, Any]:
        t_index, sample, choice = plan[position]
        teacher = self.teachers[t_index]
        return {
            "teacher": t_index,
            "backend": teacher.backend,
            "model": teacher.model,
            "sample": sample,
            "principle": choice.principle if choice else None,
            "error_type": getattr(error, "kind", type(error).__name__),
            "error": str(error),
        }

    def _fail(
        self,
        plan: list[tuple[int, int, PrincipleChoice | None]],
        failures: list[tuple[int, BaseException]],
        succeeded: int,
        needed: int,
    ) -> None:
        def where(position: int) -> str:
            t_index, sample, _ = plan[position]
            return f"teacher {t_index} ({self.teachers[t_index].backend}) sample {sample}"

        if self.min_completions is None:
            # Like `complete`: the first failure is the row's reason, with its kind kept.
            position, error = failures[0]
            if isinstance(error, RequestFailed):
                error.args = (f"{where(position)}: {error.args[0]}",)
                raise error
            assert isinstance(error, RowFailure)
            raise RowFailure(f"{where(position)} {error}", kind=error.kind)
        reasons = "; ".join(f"{where(position)}: {error}" for position, error in failures)
        raise RowFailure(
            f"only {succeeded} of {len(plan)} completions succeeded, min_completions is "
            f"{needed} ({reasons})",
            kind="TooFewCompletions",
            attempts=max((getattr(error, "attempts", 1) for _, error in failures), default=1),
        )
