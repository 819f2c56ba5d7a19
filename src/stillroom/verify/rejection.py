"""Rejection sampling, self-consistency voting and the unbiased pass@k estimator.

    - type: rejection_sample
      backend: teacher
      verifier: math           # a registered verifier (`stillroom verify --help` lists them)
      verifier_options: {timeout_seconds: 5}
      k: 1                     # completions wanted that pass the verifier
      max_samples: 8           # samples spent at most per prompt
      batch: 2                 # samples requested at once per step
      pass_at_k: [1, 4]        # optional: draw all max_samples and report pass@1, pass@4
      top_logprobs: 5          # optional: keep the kept samples' token logprobs (for KD)

``rejection_sample`` asks for samples in batches (sample indexes 0, 1, ... so a rerun is served
from the request cache) and verifies each, until ``k`` have passed or ``max_samples`` are spent.
A kept row gets ``completions`` (the passing samples, at most ``k``, in sample order),
``completion`` (the first of them; a ``messages`` row without a ``prompt`` gets it as its final
assistant turn instead, and a conversational ``prompt`` as an assistant message list, the shapes
``complete`` writes), ``samples_spent`` and ``passed_count``; with
``top_logprobs`` also ``logprobs`` (each token of ``completion`` with its top alternatives, the
layout the ``complete`` stage writes, for offline top-k distillation) and
``completions_logprobs`` (the same for each kept sample). A row none of whose
samples passes goes to ``dropped/`` with every sample's verdict in its metadata. An empty sample
is a sample that did not pass; a request that failed after its retries fails the row.

Reasoning traces: the verifier grades the final answer only (a trace the backend returned apart
is never shown to it; an inline ``<think>`` trace is cut off, see :mod:`stillroom.verify.base`),
and a sample whose trace never ended (cut at ``max_tokens`` while thinking) does not pass. When
a kept sample has a trace, the row gets ``reasoning`` (the trace of ``completion``) and
``completions_reasoning`` (one per kept sample, aligned with ``completions``), and the lineage
metadata ``reasoning_tokens`` over every sample drawn.

With ``pass_at_k`` every row draws all ``max_samples`` samples (no early stop) and gets
``pass_at_k`` = {"pass@1": ..., ...}, the unbiased estimator of Chen et al. (2021) from its
``n`` samples and ``c`` passes; :func:`pass_at_k_summary` averages it over data AND dropped rows
(a row with no pass has pass@k 0 and must count).

    - type: majority_vote
      backend: teacher
      n: 8                     # samples to vote with (or `completions_column: completions`)
      min_share: 0.5           # drop a row whose majority answer has under half the samples

``majority_vote`` (self-consistency, Wang et al. 2022) labels prompts that have no reference: it
extracts each sample's final answer with the math verifier's extraction (a GSM8K ``####`` line,
else math-verify's "final answer is" / ``\\boxed{}`` / "answer:" / last expression), groups
answers that math-verify finds equivalent (so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one
vote), and writes ``answer`` (the majority, as the first sample of its group wrote it),
``vote_share`` (its votes over ALL samples, those without an answer included), ``votes`` (a
list of {answer, count}, most votes first) and ``completion`` (the first sample that gave the majority answer). A tie for first
place, no answer in any sample, or a share under ``min_share`` drops the row with the reason.
Votes are read from the final answers: an inline ``<think>`` trace is cut off first, and a
sample whose trace never ended casts no vote. Sampled traces are kept as for
``rejection_sample``: ``reasoning`` for ``completion``, ``completions_reasoning`` per sample.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math as pymath
import threading
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from stillroom.data.rows import (
    PromptTemplate,
    Row,
    build_messages,
    check_prompt,
    has_trace,
    row_id,
    row_key,
    seed_id_of,
    trace_usage,
    with_answer,
    with_lineage,
)
from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig
from stillroom.llm.reasoning import final_answer
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage
from stillroom.verify import math as math_verifier
from stillroom.verify.base import Verdict, Verifier, VerifierInputError
from stillroom.verify.stage import build_verifier

# -- pass@k ---------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: 1 - C(n-c, k) / C(n, k).

    Chen et al. 2021 (Codex), eq. 1. Python's integers are exact and int / int is correctly
    rounded, so the binomials need no product form for stability.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a pass
        return 1.0
    return 1.0 - pymath.comb(n - c, k) / pymath.comb(n, k)


def pass_at_k_summary(rows: Iterable[Row], column: str = "pass_at_k") -> dict[str, Any]:
    """Mean of each row's pass@k, and the samples spent, over ``rows``.

    Pass data and dropped rows together: a dropped row (no sample passed) counts as pass@k 0.
    """
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    spent = 0
    prompts = 0
    for row in rows:
        if row.get("samples_spent") is not None:
            prompts += 1
            spent += int(row["samples_spent"])
        for key, value in (row.get(column) or {}).items():
            if value is None:
                continue
            totals[key] = totals.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {
        "prompts": prompts,
        "samples_spent": spent,
        **{key: totals[key] / counts[key] for key in sorted(totals, key=_k_of)},
    }


def _k_of(key: str) -> int:
    return int(key.split("@")[-1]) if key.split("@")[-1].isdigit() else 0


# -- shared sampling settings ---------------------------------------------------------------------


class _Sampler(RowStage):
    """What the two stages share: a backend, a prompt, sampling settings."""

    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    system: str | None = Field(default=None, description="System prompt put before the prompt.")
    prompt_template: str | None = Field(
        default=None,
        description="Build the user message from columns, e.g. '{question}\\n\\nAnswer: '.",
    )
    # Sampling must vary for rejection sampling and voting to mean anything; 0.8 is a common
    # setting for both (self-consistency used T=0.5-0.7 with top-k/top-p variations).
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=512, ge=1)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    def backend_names(self) -> set[str]:
        return {self.backend}

    def check_prompt_row(self, row: Row) -> str | None:
        return check_prompt(row, prompt_template=self.prompt_template)

    def answered(self, row: Row, text: str) -> Row:
        """The row with its chosen answer: in the row's TRL shape, as the ``complete`` stage
        writes it (``messages`` end with it; see data.rows), or text after a template."""
        if self.prompt_template is None:
            return with_answer(row, text)
        return {**row, "completion": text}

    def messages_for(self, row: Row) -> list[dict[str, Any]]:
        return build_messages(row, self.prompt_template, self.system)

    def params(self, ctx: StageContext) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop) if self.stop else None,
            seed=self.seed if self.seed is not None else ctx.seed,
        )

    def template(self) -> PromptTemplate | None:
        if self.prompt_template is None:
            return None
        return PromptTemplate(f"{self.type}.prompt", self.prompt_template)

    def row_key(self, row: Row) -> str:
        return row_key(row)

    async def sample(
        self, ctx: StageContext, messages: list[dict[str, Any]], first: int, count: int
    ) -> list[Completion]:
        """Samples ``first`` .. ``first + count - 1``, all in flight at once."""
        client = ctx.client(self.backend)
        params = self.params(ctx)
        requests = [
            Request(messages=messages, params=params, sample=i)
            for i in range(first, first + count)
        ]
        results = await asyncio.gather(*map(client.generate, requests), return_exceptions=True)
        out: list[Completion] = []
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, RequestFailed):
                result.args = (f"sample {request.sample}: {result.args[0]}",)
                raise result  # never silently: the row goes to failed/
            if isinstance(result, BaseException):
                raise result
            out.append(result)
        return out


# -- rejection sampling ---------------------------------------------------------------------------


@register_stage
class RejectionSample(_Sampler):
    type: Literal["rejection_sample"] = "rejection_sample"
    verifier: str = Field(default="math", description="A registered verifier kind.")
    verifier_options: dict[str, Any] = Field(
        default_factory=dict, description="The verifier's own options (e.g. timeout_seconds)."
    )
    k: int = Field(default=1, ge=1, le=1024, description="Passing completions wanted per row.")
    max_samples: int = Field(default=8, ge=1, le=1024, description="Samples spent at most.")
    batch: int | None = Field(
        default=None, ge=1, le=256,
        description="Samples requested at once per step; default: k (at most 8).",
    )
    pass_at_k: list[int] | None = Field(
        default=None,
        description="Report pass@k for these k per row; draws all max_samples (no early stop).",
    )
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20,
        description="Keep each kept sample's tokens with their top-N logprobs (for KD).",
    )
    _verifier: Verifier = PrivateAttr()

    @model_validator(mode="after")
    def _build(self) -> RejectionSample:
        try:
            self._verifier = build_verifier(self.verifier, "completion", self.verifier_options)
        except ConfigError as error:
            raise PydanticCustomError("verifier", "{reason}", {"reason": error.reason}) from None
        if self.k > self.max_samples:
            raise ValueError(f"k is {self.k} but max_samples is only {self.max_samples}")
        for value in self.pass_at_k or []:
            if not 1 <= value <= self.max_samples:
                raise ValueError(f"pass_at_k {value} must be between 1 and max_samples")
        return self

    def batch_size(self) -> int:
        return self.batch if self.batch is not None else min(self.k, 8)

    def params(self, ctx: StageContext) -> GenerationParams:
        params = super().params(ctx)
        if self.top_logprobs is None:
            return params
        return dataclasses.replace(params, top_logprobs=self.top_logprobs)

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        backend_class = configs[self.backend].backend_class()
        if self.top_logprobs is not None and not backend_class.supports_logprobs:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) does not return logprobs; "
                "remove top_logprobs or use an OpenAI-compatible, llama.cpp or transformers backend",
                key="top_logprobs",
            )

    def summary_columns(self) -> list[str]:
        return ["samples_spent", "pass_at_k"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """pass@k over every prompt this stage saw (a dropped prompt counts as 0) and the
        samples it spent."""
        return pass_at_k_summary(rows)

    def generated_columns(self) -> list[str]:
        return ["completions"]

    def check_row(self, row: Row) -> str | None:
        problem = self.check_prompt_row(row)
        if problem:
            return problem
        # The verifier's own needs (a reference answer, tests), checked with a stand-in answer.
        return self._verifier.check_row({**row, "completion": ""})

    async def _verdict(self, row: Row, completion: Completion) -> Verdict:
        if not completion.reasoning_ended:
            return Verdict(False, "the reasoning never ended "
                                  f"(finish_reason={completion.finish_reason}): no answer")
        if not completion.text.strip():
            return Verdict(False, f"empty completion (finish_reason={completion.finish_reason})")
        candidate = {**row, "completion": completion.text}
        try:
            # Verifiers may be CPU-heavy: off the event loop, like the verify stage.
            return await asyncio.to_thread(self._verifier.verify, candidate)
        except VerifierInputError as error:
            raise RowFailure(str(error), kind="VerifierInputError") from None
        except Exception as error:
            raise RowFailure(f"{type(error).__name__}: {error}", kind="VerifierError") from error

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="VerifierInputError")
        messages = self.messages_for(row)
        draw_all = self.pass_at_k is not None
        spent = 0
        completions: list[Completion] = []
        verdicts: list[Verdict] = []
        passing: list[Completion] = []
        while spent < self.max_samples and (draw_all or len(passing) < self.k):
            size = min(self.batch_size(), self.max_samples - spent)
            batch = await self.sample(ctx, messages, spent, size)
            batch_verdicts = await asyncio.gather(*(self._verdict(row, c) for c in batch))
            spent += size
            for completion, verdict in zip(batch, batch_verdicts, strict=True):
                completions.append(completion)
                verdicts.append(verdict)
                if verdict.passed:
                    passing.append(completion)
        passed_count = len(passing)
        kept = [completion.text for completion in passing[: self.k]]

        out = dict(row)
        out["id"] = self.row_key(row)
        out["completions"] = kept
        if kept:
            out = self.answered(out, kept[0])
        else:
            out["completion"] = None
        out["samples_spent"] = spent
        out["passed_count"] = passed_count
        if self.top_logprobs is not None:
            kept_logprobs = [completion.logprobs or [] for completion in passing[: self.k]]
            out["completions_logprobs"] = kept_logprobs
            out["logprobs"] = kept_logprobs[0] if kept_logprobs else None
        trace_figures: dict[str, Any] = {}
        if has_trace(passing[: self.k]):
            traces = [completion.reasoning for completion in passing[: self.k]]
            out["reasoning"] = traces[0]
            out["completions_reasoning"] = traces
        if has_trace(completions):
            trace_figures = trace_usage(completions)
        if self.pass_at_k is not None:
            out["pass_at_k"] = {
                f"pass@{value}": pass_at_k(spent, passed_count, value)
                for value in sorted(set(self.pass_at_k))
            }
        out = with_lineage(
            out,
            ctx.stage_name,
            method="rejection_sampling",
            step="verified" if kept else "rejected",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or out["id"],
            model=completions[0].model if completions else None,
            template=self.template(),
            backend=self.backend,
            verifier=self.verifier,
            k=self.k,
            max_samples=self.max_samples,
            samples_spent=spent,
            passed_count=passed_count,
            # Every sample's verdict, compactly: which sample, pass or not, and why.
            samples=[
                {"sample": i, "passed": v.passed, "reason": v.reason}
                for i, v in enumerate(verdicts)
            ],
            prompt_tokens=sum(c.prompt_tokens for c in completions),
            completion_tokens=sum(c.completion_tokens for c in completions),
            **trace_figures,
        )
        if not kept:
            return [Dropped(out, f"no sample passed the verifier after {spent} samples")]
        return out


# -- majority vote / self-consistency -------------------------------------------------------------


def group_final_answers(
    texts: list[str], timeout_seconds: int
) -> tuple[list[int | None], list[str]]:
    """Each text's answer group (None: no answer found) and each group's answer as first written.

    Extraction is the math verifier's; two answers are one group when they read the same or
    math-verify finds them equivalent. Runs where math-verify's alarms work (a main thread).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets = (LatexExtractionConfig(), ExprExtractionConfig())
    groups: list[tuple[list[Any], str]] = []
    labels: list[int | None] = []
    for text in texts:
        # The answer part only: an inline trace is cut off, and one that never ended has none.
        final, _ = final_answer(text)
        if final is None:
            labels.append(None)
            continue
        answer_text, _ = math_verifier._answer_text(final)
        parsed = parse(answer_text, targets, parsing_timeout=timeout_seconds)
        if not parsed:
            labels.append(None)
            continue
        shown = math_verifier._shown(parsed)
        for index, (representative, rep_shown) in enumerate(groups):
            if shown == rep_shown or verify(
                representative, parsed, timeout_seconds=timeout_seconds
            ):
                labels.append(index)
                break
        else:
            groups.append((parsed, shown))
            labels.append(len(groups) - 1)
    return labels, [shown for _, shown in groups]


def _group_anywhere(texts: list[str], timeout_seconds: int) -> tuple[list[int | None], list[str]]:
    if threading.current_thread() is threading.main_thread():
        return group_final_answers(texts, timeout_seconds)
    # math-verify's alarms need a main thread: the math verifier's worker processes have one.
    future = math_verifier._worker_pool().submit(group_final_answers, texts, timeout_seconds)
    return future.result(timeout=len(texts) * (len(texts) + 1) * timeout_seconds + 60)


@register_stage
class MajorityVote(_Sampler):
    type: Literal["majority_vote"] = "majority_vote"
    n: int = Field(default=8, ge=1, le=1024, description="Samples to vote with.")
    completions_column: str | None = Field(
        default=None,
        description="Vote over this existing list column instead of sampling (e.g. completions).",
    )
    min_share: float = Field(
        default=0.0, ge=0, le=1, description="Drop a row whose majority has a smaller share."
    )
    timeout_seconds: int = Field(default=5, ge=1, description="math-verify's bound per step.")

    def backend_names(self) -> set[str]:
        return set() if self.completions_column is not None else {self.backend}

    def generated_columns(self) -> list[str]:
        return [] if self.completions_column is not None else ["completions"]

    def check_row(self, row: Row) -> str | None:
        if self.completions_column is None:
            return self.check_prompt_row(row)
        value = row.get(self.completions_column)
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            return f"`{self.completions_column}` must be a list of texts"
        if not value:
            return f"`{self.completions_column}` is empty"
        return None

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="InputError")
        completions: list[Completion] = []
        if self.completions_column is not None:
            texts = list(row[self.completions_column])
        else:
            completions = await self.sample(ctx, self.messages_for(row), 0, self.n)
            texts = [c.text for c in completions]
        # A sample whose trace never ended has no answer, whatever text a backend left.
        voting = [text if not completions or completions[i].reasoning_ended else ""
                  for i, text in enumerate(texts)]
        labels, answers = await asyncio.to_thread(_group_anywhere, voting, self.timeout_seconds)
        counts = [0] * len(answers)
        for label in labels:
            if label is not None:
                counts[label] += 1
        ranked = sorted(range(len(answers)), key=lambda i: -counts[i])  # stable: first seen first
        # A list, not a mapping: answers differ from row to row, and a Parquet struct column
        # would need one field per answer ever seen.
        votes = [{"answer": answers[i], "count": counts[i]} for i in ranked]

        out = dict(row)
        out["id"] = self.row_key(row)
        if self.completions_column is None:
            out["completions"] = texts
        reason: str | None = None
        answer: str | None = None
        share = 0.0
        if not answers:
            reason = f"no final answer in any of {len(texts)} samples"
        else:
            top = ranked[0]
            share = counts[top] / len(texts)
            if len(ranked) > 1 and counts[ranked[1]] == counts[top]:
                tied = [answers[i] for i in ranked if counts[i] == counts[top]]
                reason = f"tie between {tied} ({counts[top]} votes each)"
            elif share < self.min_share:
                reason = f"majority answer {answers[top]!r} has share {share:.2f} < {self.min_share}"
            answer = answers[top]
            out = self.answered(out, texts[labels.index(top)])
            if has_trace(completions):
                out["reasoning"] = completions[labels.index(top)].reasoning
        if has_trace(completions):
            out["completions_reasoning"] = [c.reasoning for c in completions]
        out["answer"] = answer if reason is None else None
        out["vote_share"] = share
        out["votes"] = votes
        out = with_lineage(
            out,
            ctx.stage_name,
            method="self_consistency",
            step="majority_vote",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or out["id"],
            model=completions[0].model if completions else None,
            template=self.template(),
            backend=None if self.completions_column is not None else self.backend,
            samples=len(texts),
            answered=sum(1 for label in labels if label is not None),
            equivalence="math-verify",
            **(trace_usage(completions) if has_trace(completions) else {}),
        )
        if reason is not None:
            return [Dropped(out, reason)]
        return out
