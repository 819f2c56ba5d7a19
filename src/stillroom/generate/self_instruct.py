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
    label, then an input for it) and input-first for the others, few-shot from the seed tasks'
    own instances, greedily; (c) filters instances: input == output, empty output, input or
    output ending with ":", a task whose identical inputs have different outputs is dropped whole,
    at most 5 instances per task. Each surviving instance is a row with ``instruction``, ``input``,
    ``output``, ``is_classification`` and TRL's ``prompt`` / ``completion``.

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
* its ``presence_penalty`` (2 for instructions, 1.5 for instances) is not sent: requests here
  have no such parameter.
* the ROUGE-L check gives the plain loop's decisions without its quadratic cost
  (:mod:`stillroom.generate.rouge_pool`).
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr

from stillroom.errors import ConfigError, InputError
from stillroom.generate.lineage import PromptTemplate, derived_id, row_id, with_lineage
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    Row,
    RowFailure,
    RowStage,
    StageContext,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.generate.rouge_pool import RougePool
    from stillroom.llm.backend import BackendConfig

METHOD = "self_instruct"

# The paper's header: its exact wording is part of the method.
HEADER = "Come up with a series of tasks:"
# The reference code's list (bootstrap_instructions.py). Stanford Alpaca later added video,
# audio, music, flowchart and diagram; add them here if you want that variant.
REFERENCE_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures",
    "file", "files", "map", "maps", "draw", "plot", "go to",
)  # fmt: skip
# The reference code stops a continuation at a blank line or at item 16.
REFERENCE_STOP = ("\n\n", "\n16", "16.", "16 .")

# Where one numbered item ends and the next begins, as the reference code splits.
_ITEM_SPLIT = re.compile(r"\n\d+\s?\. ")
_LEADING_NUMBER = re.compile(r"^\s*\d+\s?\.\s+")
_WHITESPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------------
# Instruction generation: prompt, parsing, filters


def _check_prompt_format(
    backend: str, prompt_format: str, configs: dict[str, BackendConfig]
) -> None:
    backend_class = configs[backend].backend_class()
    if prompt_format == "raw" and not backend_class.supports_raw_prompt:
        raise ConfigError(
            f"backend {backend!r} ({backend_class.kind}) takes chat messages only; "
            "set prompt_format: chat",
            key="prompt_format",
        )


def prompt_line(instruction: str) -> str:
    """An instruction as it is shown in the prompt: one line, no trailing colon."""
    return _WHITESPACE.sub(" ", instruction).strip().rstrip(":")


def encode_instruction_prompt(instructions: list[str], header: str = HEADER) -> str:
    """The header, the instructions numbered 1..k, then "k+1." for the model to continue."""
    lines = [header]
    lines += [f"{number}. {prompt_line(text)}" for number, text in enumerate(instructions, 1)]
    return "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(text: str, *, strip_leading_number: bool = False) -> list[str]:
    """The candidate instructions in a continuation of the numbered list.

    The text continues item "9." and may go on with "\\n10. ...", "\\n11. ..."; each item is put
    on one line and its first letter upper-cased. ``strip_leading_number``: the text may begin
    with its own "9." (a chat model restating the list).
    """
    if strip_leading_number:
        text = _LEADING_NUMBER.sub("", text, count=1)
    out = []
    for piece in _ITEM_SPLIT.split(text):
        item = _WHITESPACE.sub(" ", piece).strip()
        if item:
            out.append(item[0].upper() + item[1:])
    return out


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
        _check_prompt_format(self.backend, self.prompt_format, configs)

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
        self, rows: list[Row], ctx: StageContext
    ) -> AsyncIterator[Row | Dropped | Failed]:
        if not rows:
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


# ----------------------------------------------------------------------------------------------
# Instance generation: templates, parsing, filters

CLASSIFICATION_QUESTION = (
    # The paper's question (its appendix template); the examples below it are the seed tasks.
    "Can the following task be regarded as a classification task with finite output labels?"
)
OUTPUT_FIRST_HEADER = (
    "Each task below is a classification task. Name the labels its answer can take and, after "
    "each label, write an input whose correct answer is that label. If the task needs no input, "
    "only name the labels."
)
INPUT_FIRST_HEADER = (
    "Write examples for each task below, several when you can. Give each example an input and "
    "the output the task asks for; if the task needs no input, write the output directly."
)

_EXAMPLE_SPLIT = re.compile(r"Example\s?\d*\.?")
_OUTPUT_FIELD = re.compile(r"Output\s*\d*\s*:")
_INPUT_FIELD = re.compile(r"Input\s*\d*\s*:")
_INPUT_PREFIX = re.compile(r"^Input\s*\d*\s*:")
_CLASS_LABEL = "Class label:"


def split_input_output(text: str) -> tuple[str, str]:
    """One generated example as (input, output): what precedes "Output:" and what follows it
    (up to a next "Input:"), without an "Input:" field name."""
    if _OUTPUT_FIELD.search(text):
        parts = _OUTPUT_FIELD.split(text)
        given, output = parts[0].strip(), parts[1].strip()
    else:
        given, output = "", text.strip()
    if _INPUT_FIELD.search(output):  # several examples run together: keep the first
        output = _INPUT_FIELD.split(output)[0].strip()
    return _INPUT_PREFIX.sub("", given).strip(), output


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from an input-first answer: "Example N" blocks, or one "Output:"."""
    text = text.strip()
    if _EXAMPLE_SPLIT.search(text):
        blocks = [block.strip() for block in _EXAMPLE_SPLIT.split(text)]
        return [split_input_output(block) for block in blocks if block]
    if _OUTPUT_FIELD.search(text):
        return [split_input_output(text)]
    return []


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from an output-first answer: "Class label: X" then its input."""
    if _CLASS_LABEL not in text:
        return []
    out = []
    for block in text.split(_CLASS_LABEL)[1:]:
        label, _, given = block.strip().partition("\n")
        out.append((_INPUT_PREFIX.sub("", given.strip()).strip(), label.strip()))
    return out


def _seed_example_fits(task: Row, max_chars: int) -> bool:
    instances = task.get("instances") or []
    if not instances or not str(task.get("instruction", "")).strip():
        return False
    first = instances[0]
    return len(first.get("input", "")) + len(first.get("output", "")) <= max_chars


@register_stage
class SelfInstructInstances(RowStage):
    """Instances for each instruction row: classification or not, then output-first or
    input-first generation, then the paper's instance filters. One row per kept instance."""

    type: Literal["self_instruct_instances"] = "self_instruct_instances"
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    seed_tasks: str = Field(
        default="builtin:self_instruct_seed_tasks",
        description="Tasks with instances and is_classification, the few-shot examples.",
    )
    classification_examples: int = Field(
        default=30, ge=2, description="Few-shot tasks for the classification question (paper: 31)."
    )
    output_first_examples: int = Field(
        default=16, ge=1, description="Few-shot classification tasks (paper: 16)."
    )
    input_first_examples: int = Field(
        default=12, ge=1, description="Few-shot other tasks (paper: 12)."
    )
    max_example_chars: int = Field(
        default=400, ge=1, description="Skip seed tasks whose instance is longer than this."
    )
    trust_row_label: bool = Field(
        default=True,
        description="A row that already has a boolean is_classification (a seed task) keeps it.",
    )
    prompt_format: Literal["raw", "chat"] = "raw"
    temperature: float = Field(default=0.0, ge=0, le=2, description="Paper: greedy.")
    presence_penalty: float | None = Field(
        default=1.5, ge=-2, le=2, description="The reference code's 1.5 for instance generation."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="None: the reference's 300 (output-first) / 350."
    )
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    max_instances: int = Field(default=5, ge=1, description="Instances kept per task (paper: 5).")
    drop_input_equals_output: bool = True
    drop_empty_output: bool = True
    drop_colon_ending: bool = Field(
        default=True, description="Drop an instance whose input or output ends with ':'."
    )
    drop_conflicting_outputs: bool = Field(
        default=True, description="Drop a task whose identical inputs have different outputs."
    )

    # Built from the seed tasks on first use; rebuilt when a field they depend on changes.
    _templates: dict[str, PromptTemplate] | None = PrivateAttr(default=None)
    _templates_key: tuple[Any, ...] = PrivateAttr(default=())

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        # The task as a student sees it (instruction + generated input). Not `output`: a
        # classification task's outputs are its few labels, repeated by design, and would read
        # as a collapsed set.
        return ["prompt"]

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        _check_prompt_format(self.backend, self.prompt_format, configs)
        self.templates()  # a missing or unusable seed_tasks file fails before any request

    def check_row(self, row: Row) -> str | None:
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            return f"the row needs a non-empty `instruction`; it has {sorted(row)}"
        return None

    # -- templates ----------------------------------------------------------------------------

    def _load_seed_tasks(self) -> list[Row]:
        from stillroom.data.readers import iter_rows, resolve_input_path

        try:
            path = resolve_input_path(self.seed_tasks)
            return [row for _, row in iter_rows(Path(path))]
        except InputError as error:
            raise ConfigError(f"seed_tasks: {error}", key="seed_tasks") from error

    def templates(self) -> dict[str, PromptTemplate]:
        """The three few-shot templates, built once from the seed tasks (in file order, so the
        prompt prefix is the same for every row and a backend can reuse its evaluation)."""
        key = (
            self.seed_tasks,
            self.classification_examples,
            self.output_first_examples,
            self.input_first_examples,
            self.max_example_chars,
        )
        if self._templates is not None and self._templates_key == key:
            return self._templates
        tasks = [
            t for t in self._load_seed_tasks() if _seed_example_fits(t, self.max_example_chars)
        ]
        labelled = [t for t in tasks if isinstance(t.get("is_classification"), bool)]
        yes = [t for t in labelled if t["is_classification"]]
        no = [t for t in labelled if not t["is_classification"]]
        if not yes or not no:
            raise ConfigError(
                f"seed_tasks {self.seed_tasks!r} needs classification and other tasks with an "
                f"instance of at most {self.max_example_chars} characters",
                key="seed_tasks",
            )
        # Alternate the answers so neither "Yes" nor "No" dominates the end of the prompt.
        shown: list[Row] = []
        for pair in zip(yes, no, strict=False):
            shown.extend(pair)
        clf_prefix = CLASSIFICATION_QUESTION + "\n\n"
        for task in shown[: self.classification_examples]:
            answer = "Yes" if task["is_classification"] else "No"
            clf_prefix += (
                f"Task: {prompt_line(task['instruction'])}\nIs it classification? {answer}\n\n"
            )

        output_first = OUTPUT_FIRST_HEADER + "\n\n"
        for task in yes[: self.output_first_examples]:
            instance = task["instances"][0]
            output_first += f"Task: {prompt_line(task['instruction'])}\n"
            output_first += f"{_CLASS_LABEL} {instance['output'].strip()}\n"
            if instance.get("input", "").strip():
                output_first += f"Input: {instance['input'].strip()}\n"
            output_first += "\n"

        input_first = INPUT_FIRST_HEADER + "\n\n"
        for task in no[: self.input_first_examples]:
            instance = task["instances"][0]
            input_first += f"Task: {prompt_line(task['instruction'])}\n"
            if instance.get("input", "").strip():
                input_first += f"Example 1\nInput: {instance['input'].strip()}\n"
            input_first += f"Output: {instance['output'].strip()}\n\n"

        def template(name: str, prefix: str, question: str) -> PromptTemplate:
            # Braces in the seed texts are literal, not placeholders.
            escaped = prefix.replace("{", "{{").replace("}", "}}")
            return PromptTemplate(f"{METHOD}.{name}", escaped + question)

        self._templates_key = key
        self._templates = {
            "classification": template(
                "classification", clf_prefix, "Task: {instruction}\nIs it classification?"
            ),
            "output_first": template("output_first", output_first, "Task: {instruction}\n"),
            "input_first": template("input_first", input_first, "Task: {instruction}\n"),
        }
        return self._templates

    # -- requests -----------------------------------------------------------------------------

    def _request(self, prompt: str, params: GenerationParams) -> Request:
        if self.prompt_format == "raw":
            return Request(prompt=prompt, params=params)
        return Request(messages=[{"role": "user", "content": prompt}], params=params)

    def _seed(self, ctx: StageContext) -> int:
        return self.seed if self.seed is not None else ctx.seed

    async def classify(self, instruction: str, ctx: StageContext) -> tuple[bool, str, str]:
        """(is_classification, the model's raw answer, model name)."""
        template = self.templates()["classification"]
        prompt = template.format(instruction=prompt_line(instruction))
        params = GenerationParams(
            temperature=self.temperature, max_tokens=3, stop=("\n", "Task"), seed=self._seed(ctx)
        )
        completion = await ctx.client(self.backend).generate(self._request(prompt, params))
        # The reference reads exactly "Yes" (any case form it lists) as yes, anything else as no.
        return completion.text.strip() in ("Yes", "yes", "YES"), completion.text, completion.model

    async def generate_instances(
        self, instruction: str, is_classification: bool, ctx: StageContext
    ) -> tuple[Completion, PromptTemplate]:
        name = "output_first" if is_classification else "input_first"
        template = self.templates()[name]
        max_tokens = self.max_tokens or (300 if is_classification else 350)
        params = GenerationParams(
            temperature=self.temperature,
            max_tokens=max_tokens,
            stop=(f"Example {self.max_instances + 1}", "Task:"),
            seed=self._seed(ctx),
            presence_penalty=self.presence_penalty,
        )
        prompt = template.format(instruction=prompt_line(instruction))
        return await ctx.client(self.backend).generate(self._request(prompt, params)), template

    # -- filters ------------------------------------------------------------------------------

    def invalid_reason(self, given: str, output: str) -> str | None:
        """Why one instance is unusable (the reference's filter_invalid_instances), or None."""
        if self.drop_input_equals_output and given == output:
            return "instance: input equals output"
        if self.drop_empty_output and output == "":
            return "instance: empty output"
        if self.drop_colon_ending:
            if given.strip().endswith(":"):
                return "instance: input ends with ':'"
            if output.strip().endswith(":"):
                return "instance: output ends with ':'"
        return None

    @staticmethod
    def has_conflicting_outputs(pairs: list[tuple[str, str]]) -> bool:
        """Two instances with the same non-empty input and different outputs."""
        outputs: dict[str, str] = {}
        for given, output in pairs:
            if given == "":
                continue
            if outputs.setdefault(given, output) != output:
                return True
        return False

    # -- the row --------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        instruction = row["instruction"].strip()
        parent_id = row_id(row) or derived_id("si-task", instruction)
        label = row.get("is_classification")
        classification: dict[str, Any]
        if self.trust_row_label and isinstance(label, bool):
            is_classification = label
            classification = {"source": "row"}
        else:
            is_classification, answer, clf_model = await self.classify(instruction, ctx)
            classification = {
                "source": "model",
                "answer": answer,
                "model": clf_model,
                "template": self.templates()["classification"].version,
            }
        completion, template = await self.generate_instances(instruction, is_classification, ctx)
        mode = "output_first" if is_classification else "input_first"
        parser = parse_output_first if is_classification else parse_input_first
        pairs = parser(completion.text)

        seed_id = _seed_id_for(row, parent_id)

        def lineage(out: Row, **extra: Any) -> Row:
            return with_lineage(
                out,
                ctx.stage_name,
                method=METHOD,
                step="instances",
                parent_id=parent_id,
                seed_id=seed_id,
                model=completion.model,
                template=template,
                generation=mode,
                classification=classification,
                finish_reason=completion.finish_reason,
                **extra,
            )

        base = {key: value for key, value in row.items() if key not in ("id", "metadata")}
        base["metadata"] = row.get("metadata")
        base["instruction"] = instruction
        base["is_classification"] = is_classification

        def instance_row(position: int, given: str, output: str) -> Row:
            out = {
                **base,
                "id": derived_id("si-instance", parent_id, position, given, output),
                "input": given,
                "output": output,
                "prompt": f"{instruction}\n\n{given}" if given else instruction,
                "completion": output,
            }
            return lineage(out, position=position)

        def task_dropped(reason: str) -> Dropped:
            out = {**base, "id": derived_id("si-task", parent_id), "raw_instances": completion.text}
            return Dropped(lineage(out), f"task: {reason}")

        out: list[Row | Dropped] = []
        if not pairs:
            return [task_dropped("no instance in the response")]
        candidates = list(enumerate(pairs))
        if completion.finish_reason == "length":  # the last one may be unfinished
            position, (given, output) = candidates.pop()
            out.append(
                Dropped(instance_row(position, given, output), "instance: cut at max_tokens")
            )
        valid = []
        for position, (given, output) in candidates:
            reason = self.invalid_reason(given, output)
            if reason is None:
                valid.append((position, (given, output)))
            else:
                out.append(Dropped(instance_row(position, given, output), reason))
        if self.drop_conflicting_outputs and self.has_conflicting_outputs([p for _, p in valid]):
            for position, (given, output) in valid:
                out.append(
                    Dropped(instance_row(position, given, output), "instance: task has conflicts")
                )
            out.append(task_dropped("the same input with different outputs"))
            return out
        unique = []
        seen: set[tuple[str, str]] = set()
        for position, pair in valid:
            if pair in seen:
                out.append(Dropped(instance_row(position, *pair), "instance: duplicate"))
            else:
                seen.add(pair)
                unique.append((position, pair))
        if len(unique) > self.max_instances:
            rng = ctx.rng(parent_id, "instances")
            chosen = set(rng.sample(range(len(unique)), self.max_instances))
            for rank, (position, pair) in enumerate(unique):
                if rank not in chosen:
                    out.append(
                        Dropped(instance_row(position, *pair), "instance: over max_instances")
                    )
            unique = [item for rank, item in enumerate(unique) if rank in chosen]
        if not unique:
            out.append(task_dropped("no instance survived the filters"))
            return out
        out.extend(instance_row(position, *pair) for position, pair in unique)
        return out


def _seed_id_for(row: Row, own_id: str) -> str | None:
    """The root seed of an instruction row: ``None`` for a machine-written instruction (its
    Self-Instruct lineage says so), the row itself for a task with no such lineage (a seed)."""
    for entry in (row.get("metadata") or {}).values():
        if isinstance(entry, dict) and entry.get("method") == METHOD:
            value = entry.get("seed_id")
            return None if value is None else str(value)
    return own_id
