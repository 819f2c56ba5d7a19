"""Self-Instruct (Wang et al. 2022): bootstrap new instructions from seed tasks, then write
instances (input, output) for each.

Two stages, faithful to the paper and its reference code (``yizhongw/self-instruct``):

``self_instruct`` (all rows: the input is the seed tasks, e.g. ``builtin:self_instruct_seed_tasks``)
    Rounds of ``requests_per_round`` concurrent requests. Each prompt is the header "Come up with
    a series of tasks:", 8 numbered instructions (2 sampled from the machine-written pool once it
    has any, the rest from the seeds, shuffled) and "9."; the model continues the list, sampled
    at T=0.7, top_p=0.5, and stops at "16." or a blank line. Its continuation is split at each
    "\\n<number>. " and every candidate goes through the filters, each with its own drop reason:
    <= 3 or > 150 words, a blacklisted word ("image", "graph", "file", "draw", "go to"...),
    starts with "Write a program", starts with punctuation, starts with a non-ASCII character,
    ROUGE-L F1 > 0.7 with any instruction in the pool (seeds plus every instruction kept so far,
    including earlier ones in the same response). A response cut at ``max_tokens`` is discarded
    whole, as the reference code does. Rounds go on until ``num_instructions`` are kept or
    ``max_rounds`` have run.

``self_instruct_instances`` (row by row, on the generated instructions)
    (a) asks the model, few-shot, whether the task "can be regarded as a classification task with
    finite output labels"; (b) generates instances output-first for classification tasks (a class
    label, then an input for it) and input-first for the others, greedily, few-shot from the
    reference template's demo tasks (every label of a classification task with an input each,
    several examples of the others; ``instance_demos``); (c) filters instances: input ==
    output, empty output, input or output ending with ":", a task whose identical inputs have
    different outputs is dropped whole, at most 5 instances per task. Each surviving instance is
    a row with ``instruction``, ``input``, ``output``, ``is_classification`` and TRL's
    ``prompt`` / ``completion``.

Nothing is lost silently: every candidate or instance a filter removes is a ``dropped/`` row with
its reason; a request that fails after retries is a ``failed/`` row. Every row carries lineage
under ``metadata[<stage name>]``. Randomness comes from ``ctx.rng(round, request)`` and the row's
id, so a rerun with the request cache gives the same output.

Where we differ from the reference code, on purpose:

* it lower-cases all but the first letter of each instruction (``str.capitalize``, which turns
  "USA" into "Usa"); we only upper-case the first letter. Every filter decides the same either
  way (the "Write a program" test ignores case; ROUGE tokens are lower-cased anyway).
* it keeps every instruction of its last batch, overshooting the target; we keep exactly
  ``num_instructions`` and record the rest as dropped ("num_instructions reached").
* the ROUGE-L check gives the plain loop's decisions without its quadratic cost
  (:mod:`stillroom.generate.rouge_pool`).
* instance generation: see :mod:`stillroom.generate.self_instruct_instances` (our prompt
  headers, seed tasks as the classification question's demos).

This module holds the ``self_instruct`` stage; ``self_instruct_instances`` is in
:mod:`stillroom.generate.self_instruct_instances`, and the prompt texts and answer parsing both
use are in :mod:`stillroom.generate.self_instruct_prompts`.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, with_lineage
from stillroom.generate.self_instruct_prompts import (
    HEADER,
    METHOD,
    check_prompt_format,
    encode_instruction_prompt,
    parse_instructions,
)
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    RowFailure,
    Rows,
    StageContext,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.generate.rouge_pool import RougePool
    from stillroom.llm.backend import BackendConfig

# The reference code's list (bootstrap_instructions.py). Stanford Alpaca later added video,
# audio, music, flowchart and diagram; add them here if you want that variant.
REFERENCE_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures",
    "file", "files", "map", "maps", "draw", "plot", "go to",
)  # fmt: skip
# The reference code stops a continuation at a blank line or at item 16.
REFERENCE_STOP = ("\n\n", "\n16", "16.", "16 .")


# ----------------------------------------------------------------------------------------------
# Instruction filters


def _blacklist_pattern(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(word) for word in words)
    return re.compile(rf"\b({alternatives})\b", flags=re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a candidate instruction was dropped (``reason``), with details for the dropped row."""

    reason: str
    details: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# The bootstrapping stage


@dataclass(slots=True)
class _Plan:
    """One request of one round: what it shows and what it asks."""

    round: int
    index: int
    prompt: str
    request: Request
    seed_ids: list[str]
    machine_ids: list[str]


@register_stage
class SelfInstruct(AllRowsStage):
    """Bootstrap ``num_instructions`` new instructions from seed tasks (rows with
    ``instruction``)."""

    type: Literal["self_instruct"] = "self_instruct"
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    num_instructions: int = Field(default=100, ge=1, description="New instructions to keep.")
    requests_per_round: int = Field(
        default=5, ge=1, description="Requests sent at once per round (reference batch: 5)."
    )
    max_rounds: int | None = Field(
        default=None,
        ge=1,
        description="Give up after this many rounds; none = num_instructions rounds.",
    )
    prompt_instructions: int = Field(
        default=8, ge=1, description="Instructions shown in each prompt (paper: 8)."
    )
    machine_in_prompt: int = Field(
        default=2, ge=0, description="Of those, how many come from the machine pool (paper: 2)."
    )
    header: str = Field(default=HEADER, description="The first line of every prompt.")
    prompt_format: Literal["raw", "chat"] = Field(
        default="raw",
        description="raw: the list as a plain text prompt for the model to continue (the "
        "paper, a completion model); chat: the same text as a user message.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.5, gt=0, le=1)
    presence_penalty: float | None = Field(
        default=2.0, ge=-2, le=2, description="The reference code's 2: new tasks, not repeats."
    )
    max_tokens: int = Field(default=1024, ge=1)
    stop: list[str] = Field(default_factory=lambda: list(REFERENCE_STOP))
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    min_words: int = Field(default=4, ge=0, description="Fewer words are dropped (paper: <= 3).")
    max_words: int = Field(default=150, ge=1, description="More words are dropped (paper: 150).")
    blacklist: list[str] = Field(
        default_factory=lambda: list(REFERENCE_BLACKLIST),
        description="Words or phrases (whole words, any case) a language model cannot act on.",
    )
    banned_prefixes: list[str] = Field(
        default_factory=lambda: ["Write a program"],
        description="Drop instructions starting with these (any case).",
    )
    rouge_threshold: float = Field(
        default=0.7, ge=0, le=1, description="Drop when ROUGE-L F1 with a pool entry exceeds it."
    )
    discard_truncated: bool = Field(
        default=True,
        description="Drop every instruction of a response cut at max_tokens (the reference "
        "code); false: drop only its last, unfinished one.",
    )

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        return ["instruction"]

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        check_prompt_format(self.backend, self.prompt_format, configs)

    def check_row(self, row: Row) -> str | None:
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            return f"a seed task needs a non-empty `instruction`; the row has {sorted(row)}"
        return None

    @property
    def template(self) -> PromptTemplate:
        return PromptTemplate(f"{METHOD}.instructions", f"{self.header}\n{{instructions}}{{next}}.")

    def filter(self, instruction: str) -> Verdict | None:
        """The first rule (other than ROUGE-L) that drops ``instruction``, or ``None``."""
        words = len(instruction.split())
        if words < self.min_words:
            return Verdict(f"too short (fewer than {self.min_words} words)", {"words": words})
        if words > self.max_words:
            return Verdict(f"too long (more than {self.max_words} words)", {"words": words})
        pattern = _blacklist_pattern(self.blacklist)
        match = pattern.search(instruction) if pattern else None
        if match:
            return Verdict("blacklisted word", {"blacklisted": match.group(0).lower()})
        lowered = instruction.lower()
        for prefix in self.banned_prefixes:
            if lowered.startswith(prefix.lower()):
                return Verdict(f"starts with {prefix!r}", {})
        if instruction[0] in string.punctuation:
            return Verdict("starts with punctuation", {})
        if not instruction[0].isascii():
            return Verdict("starts with a non-ASCII character", {})
        return None

    def plan(
        self,
        ctx: StageContext,
        round_number: int,
        index: int,
        seeds: list[tuple[str, str]],
        machine: list[tuple[str, str]],
    ) -> _Plan:
        """Request ``index`` of round ``round_number``: the instructions it shows, in order."""
        rng = ctx.rng("round", round_number, "request", index)
        shown_machine = rng.sample(machine, min(self.machine_in_prompt, len(machine)))
        wanted_seeds = max(0, self.prompt_instructions - len(shown_machine))
        shown_seeds = rng.sample(seeds, min(wanted_seeds, len(seeds)))
        shown = [(key, text, False) for key, text in shown_machine]
        shown += [(key, text, True) for key, text in shown_seeds]
        rng.shuffle(shown)
        prompt = encode_instruction_prompt([text for _, text, _ in shown], self.header)
        params = GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop) if self.stop else None,
            seed=self.seed if self.seed is not None else ctx.seed,
            presence_penalty=self.presence_penalty,
        )
        # Each request of the run its own sample number: two rounds that happen to show the
        # same instructions still get their own answers (from the model and from the cache).
        sample = (round_number - 1) * self.requests_per_round + index
        if self.prompt_format == "raw":
            request = Request(prompt=prompt, params=params, sample=sample)
        else:
            request = Request(
                messages=[{"role": "user", "content": prompt}], params=params, sample=sample
            )
        return _Plan(
            round=round_number,
            index=index,
            prompt=prompt,
            request=request,
            seed_ids=[key for key, _, is_seed in shown if is_seed],
            machine_ids=[key for key, _, is_seed in shown if not is_seed],
        )

    def _lineage(
        self, row: Row, ctx: StageContext, plan: _Plan, model: str | None, **extra: Any
    ) -> Row:
        return with_lineage(
            row,
            ctx.stage_name,
            method=METHOD,
            step=f"instruction_generation round {plan.round}",
            parent_id=None,
            seed_id=None,
            model=model,
            template=self.template,
            round=plan.round,
            request_index=plan.index,
            prompt_seed_ids=plan.seed_ids,
            prompt_machine_ids=plan.machine_ids,
            **extra,
        )

    def request_row(self, ctx: StageContext, plan: _Plan, model: str | None, **columns: Any) -> Row:
        """A row standing for one request (for a failed request, or one that gave nothing)."""
        row = {"id": derived_id("si-request", plan.round, plan.index), "prompt": plan.prompt}
        return self._lineage({**row, **columns}, ctx, plan, model)

    async def run(
        self, rows: Rows, ctx: StageContext
    ) -> AsyncIterator[Row | Dropped | Failed]:
        if not len(rows):
            raise ValueError("self_instruct needs at least one seed task; the input is empty")
        client = ctx.client(self.backend)
        backend_model = client.backend.model
        seeds = [
            (row_id(row) or derived_id("seed", row["instruction"]), row["instruction"])
            for row in rows
        ]
        # Imported here: rouge-score pulls in nltk and scipy (about a second), which every other
        # command would pay at start-up.
        from stillroom.generate.rouge_pool import RougePool

        pool = RougePool(self.rouge_threshold)
        for key, text in seeds:
            pool.add(text, key)
        machine: list[tuple[str, str]] = []  # (id, instruction), in the order kept
        rounds = self.max_rounds if self.max_rounds is not None else self.num_instructions
        for round_number in range(1, rounds + 1):
            if len(machine) >= self.num_instructions:
                break
            # Prompts are built from the pool as it stands when the round starts (as the
            # reference code does for a batch), so they do not depend on answer arrival order.
            plans = [
                self.plan(ctx, round_number, index, seeds, machine)
                for index in range(self.requests_per_round)
            ]
            results = await asyncio.gather(
                *(client.generate(plan.request) for plan in plans), return_exceptions=True
            )
            for plan, result in zip(plans, results, strict=True):
                for item in self._outcomes(ctx, plan, result, pool, machine, backend_model):
                    yield item

    def _outcomes(
        self,
        ctx: StageContext,
        plan: _Plan,
        result: Completion | BaseException,
        pool: RougePool,
        machine: list[tuple[str, str]],
        backend_model: str,
    ) -> Iterator[Row | Dropped | Failed]:
        """What one answer becomes: kept instructions (added to ``pool`` and ``machine``),
        dropped candidates, or a failed request."""
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):  # cancellation, interrupt: not a row's fault
                raise result
            yield Failed(self.request_row(ctx, plan, backend_model), result)
            return
        if not result.text.strip():
            error = RowFailure(
                f"the response came back empty (finish_reason={result.finish_reason})",
                kind="EmptyCompletion",
            )
            yield Failed(self.request_row(ctx, plan, result.model), error)
            return
        candidates = parse_instructions(
            result.text, strip_leading_number=self.prompt_format == "chat"
        )
        if not candidates:
            row = self.request_row(ctx, plan, result.model, response=result.text)
            yield Dropped(row, "no instruction in the response")
            return
        truncated = result.finish_reason == "length"
        for position, text in enumerate(candidates):
            row = {
                "id": derived_id("si", plan.round, plan.index, position, text),
                "instruction": text,
            }
            row = self._lineage(
                row, ctx, plan, result.model, finish_reason=result.finish_reason, position=position
            )
            if truncated and (self.discard_truncated or position == len(candidates) - 1):
                yield Dropped(row, "response cut at max_tokens")
                continue
            verdict = self.filter(text)
            if verdict is not None:
                yield Dropped({**row, **verdict.details}, verdict.reason)
                continue
            if len(machine) >= self.num_instructions:
                yield Dropped(row, "num_instructions reached")
                continue
            match = pool.most_similar_above(text)
            if match is not None:
                details = {
                    "most_similar": match.text,
                    "most_similar_id": match.key,
                    "rouge_l": match.score,
                }
                yield Dropped({**row, **details}, f"ROUGE-L > {self.rouge_threshold} with the pool")
                continue
            pool.add(text, row["id"])
            machine.append((row["id"], text))
            yield row
