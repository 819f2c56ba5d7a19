"""``ultrafeedback_judge``: rate a prompt's completions 1-5 on UltraFeedback's four aspects.

    - type: ultrafeedback_judge
      backend: judge
      aspects: [instruction_following, honesty, truthfulness, helpfulness]   # the default
      shuffle: true            # show the completions in a random order (mapped back)
      temperature: 0
      rationale_chars: 400     # the longest rationale the judge may write per text
      max_tokens: null         # default: the longest answer the JSON schema allows
      structured: auto         # auto | schema | prompt (see stillroom.feedback.judging)
      reference_column: null   # optional: a column of world knowledge / reference answers
      reference_aspects: [truthfulness]   # the aspects whose prompt shows it
      conversation: last_turn  # a `messages` row: rate the completions as its next turn (the
                               # turns before as the instruction), or `whole`: each text is the
                               # whole conversation with that completion as its last turn

As in UltraFeedback (Cui et al. 2023), each aspect is its own request, and the judge sees all of a
prompt's completions at once, so it rates them against each other on one scale. The completions
are shown in an order shuffled per row and aspect (seeded with the row's id, so a rerun asks the
same questions) and each rating is mapped back to the completion it belongs to: a judge that
favours the first text it reads does not favour the first teacher. The rubric
(:mod:`stillroom.feedback.ultrafeedback_rubric`) is our own text for the paper's scales.

Input: ``prompt`` (or ``messages``) and ``completions`` (a list of texts, as the ``completions``
stage writes). Output, each list aligned with ``completions``:

* ``ratings``: ``{aspect: "1".."5" or "N/A"}`` per completion. Ratings are text, as in the
  released UltraFeedback data, because honesty may be "N/A" and a column cannot hold both numbers
  and text; ``preference_pairs`` reads them as numbers and leaves N/A out of the mean;
* ``scores``: the mean of each completion's rated (not N/A) aspects, a number;
* ``rationales``: ``{aspect: text}`` per completion;
* ``hallucination_types`` (with truthfulness): the kinds of hallucination found, ``["none"]``
  when there are none; ``informativeness_types`` (with helpfulness): which kinds of
  informativeness the text achieves.

World knowledge (``reference_column``): the released annotation code
(``src/data_annotation/annotate_preference.py`` in OpenBMB/UltraFeedback) gives the truthfulness
aspect a "World Knowledge" section after the texts: TruthfulQA's correct and incorrect answers,
FLAN's answer, a note that the question rests on a false premise for FalseQA, and "No additional
world knowledge for reference." for every other subset. Name the column that holds it and the
truthfulness prompt gets the same section in the same place (after the texts, before the answer
format); ``reference_aspects`` may add helpfulness, for which the released templates also have a
with-knowledge variant that the annotation script does not use. A null or empty value shows the
released code's "No additional world knowledge for reference."; a list of texts is shown one per
line. A row without the column at all is bad input (most likely a misspelt name): when the judge
reads the pipeline's input this stops the run before any request, naming the key and the row;
later in a pipeline that row fails with the reason. Deliberate difference: without
``reference_column`` there is no such section at all (the released code always shows one for
truthfulness, with the placeholder when it has nothing), so existing pipelines ask what they
asked before.

``metadata[<stage>]`` records the judge model, the rubric version of each aspect, the order each
aspect's request showed the completions in, and how many answers each aspect took.

A judgment that does not parse is re-asked with the error; one that still does not parse fails the
row with the raw answer in its reason (``failed/``), so ``data/`` never holds a missing rating.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from stillroom.data.rows import (
    CONVERSATION_OPTION,
    ConversationMode,
    Row,
    row_id,
    row_key,
    seed_id_of,
    with_lineage,
)
from stillroom.feedback.judging import (
    Judgment,
    StructuredMode,
    ask_judge,
    check_instruction,
    judged_view,
    schema_prompt,
)
from stillroom.feedback.ultrafeedback_rubric import ASPECTS, NOT_APPLICABLE, SYSTEM_PROMPT, Aspect
from stillroom.llm.structured import json_length_bound
from stillroom.llm.types import GenerationParams, Message, RequestFailed
from stillroom.pipeline.stage import RowFailure, RowStage, StageContext, register_stage

_RATINGS = [1, 2, 3, 4, 5]


def aspect_schema(aspect: Aspect, n_texts: int, rationale_chars: int) -> dict[str, Any]:
    """The JSON an answer for one aspect must be: one evaluation per text, in the order shown.

    Ratings may come as numbers or as their text ("4"): both are common from models without
    constrained decoding and mean the same. The rationale comes first so a model that writes in
    order reasons before it rates.
    """
    allowed: list[Any] = _RATINGS + [str(r) for r in _RATINGS]
    if aspect.allows_not_applicable:
        allowed.append(NOT_APPLICABLE)
    properties: dict[str, Any] = {
        "rationale": {"type": "string", "minLength": 1, "maxLength": rationale_chars},
    }
    if aspect.types:
        properties["types"] = {
            "type": "array",
            "items": {"enum": list(aspect.types)},
            "maxItems": len(aspect.types),
        }
    properties["rating"] = {"enum": allowed}
    item = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "evaluations": {
                "type": "array",
                "items": item,
                "minItems": n_texts,
                "maxItems": n_texts,
            }
        },
        "required": ["evaluations"],
        "additionalProperties": False,
    }


NO_WORLD_KNOWLEDGE = "No additional world knowledge for reference."
"""What the released annotation code shows for a prompt that has no world knowledge."""


def world_knowledge(value: Any) -> str:
    """A reference cell as the text of the "World knowledge" section."""
    if isinstance(value, list):
        value = "\n".join(str(item) for item in value if str(item).strip())
    if value is None or not str(value).strip():
        return NO_WORLD_KNOWLEDGE
    return str(value).strip()


def reference_problem(row: Row, column: str) -> str | None:
    """What keeps ``row[column]`` from being shown as world knowledge, if anything."""
    if column not in row:
        return (f"`{column}` (reference_column) is not a column of this row; it has "
                f"{sorted(row)}")
    value = row[column]
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return f"`{column}` (reference_column) must be text, a list of texts or null"


def aspect_prompt(
    aspect: Aspect, instruction: str, shown: list[str], reference: str | None = None
) -> str:
    """The user message for one aspect: rubric, instruction, the texts, the world knowledge
    (when given), the answer format."""
    scale = "\n".join(f"{value}: {text}" for value, text in enumerate(aspect.levels, start=1))
    parts = [
        f"# Rate the texts: {aspect.title}",
        aspect.question,
        f"Scale:\n{scale}",
    ]
    if aspect.allows_not_applicable:
        parts.append(f'Use "{NOT_APPLICABLE}" as the rating when this aspect does not apply.')
    if aspect.types:
        parts.append(aspect.types_question)
    parts.append(f"## Instruction\n{instruction}")
    texts = "\n\n".join(f"### Text {i}\n{text}" for i, text in enumerate(shown, start=1))
    parts.append(f"## Texts ({len(shown)})\n{texts}")
    if reference is not None:
        # Where the released template puts it: after the texts, marked as an outside resource.
        parts.append(
            "## World knowledge\nExternal knowledge about this instruction, for reference; it "
            f"is not part of the instruction.\n{reference}"
        )
    entry = '{"rationale": "<why, in one or two sentences>", '
    if aspect.types:
        entry += '"types": [<categories>], '
    entry += '"rating": <1-5' + (' or "N/A"' if aspect.allows_not_applicable else "") + ">}"
    parts.append(
        "## Answer\n"
        f"Evaluate every text, in the order shown ({len(shown)} evaluations, the first for "
        "Text 1). "
        + schema_prompt('{"evaluations": [' + entry + ", ...]}")
    )
    return "\n\n".join(parts)


_TEXT_HEADER = re.compile(r"^[#*\s]*(?:output\s+for\s+)?text\s*(\d+)\b", re.IGNORECASE | re.MULTILINE)
_RATING = re.compile(r"rating\s*[:=]\s*\**\s*\[*\s*(N\s*/\s*A|[1-5])\b", re.IGNORECASE)
_RATIONALE = re.compile(r"rationale\s*[:=]\s*(.+)", re.IGNORECASE | re.DOTALL)


def read_plain_text(aspect: Aspect, n_texts: int) -> Any:
    """A reader for answers in UltraFeedback's own layout: a "Text k" header, then "Rating: 4",
    "Rationale: ..." and, for typed aspects, "Type: ..." lines. Returns None when it finds no
    "Text k" blocks (the caller then reports the JSON problem)."""

    def read(text: str) -> Any:
        headers = list(_TEXT_HEADER.finditer(text))
        if not headers:
            return None
        blocks: dict[int, str] = {}
        for index, header in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            blocks.setdefault(int(header.group(1)), text[header.end() : end])
        evaluations: list[dict[str, Any]] = []
        for number in range(1, n_texts + 1):
            block = blocks.get(number)
            if block is None:
                return {"evaluations": evaluations}  # too few: the schema check says so
            rating = _RATING.search(block)
            rationale = _RATIONALE.search(block)
            entry: dict[str, Any] = {
                "rationale": _first_paragraph(rationale.group(1)) if rationale else "",
            }
            if aspect.types:
                lowered = block.lower()
                entry["types"] = [name for name in aspect.types if name in lowered]
            raw = rating.group(1) if rating else None
            entry["rating"] = (
                NOT_APPLICABLE if raw and raw.replace(" ", "").upper() == "N/A"
                else int(raw) if raw else None
            )
            evaluations.append(entry)
        return {"evaluations": evaluations}

    return read


def _first_paragraph(text: str) -> str:
    return text.strip().split("\n\n")[0].strip()


def normalized_rating(value: Any) -> str:
    """A rating as the text stored in ``ratings``: "1".."5" or "N/A"."""
    return NOT_APPLICABLE if value == NOT_APPLICABLE else str(int(value))


@register_stage
class UltraFeedbackJudge(RowStage):
    type: Literal["ultrafeedback_judge"] = "ultrafeedback_judge"
    backend: str = Field(default="default", description="Backend name of the judge model.")
    aspects: list[str] = Field(
        default_factory=lambda: list(ASPECTS), min_length=1, description="Aspects to rate."
    )
    shuffle: bool = Field(default=True, description="Show completions in a per-row random order.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Tokens per aspect answer; default: the longest answer the schema allows.",
    )
    rationale_chars: int = Field(default=400, ge=20, le=4000)
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    structured: StructuredMode = "auto"
    max_reasks: int = Field(default=2, ge=0, le=10)
    completions_column: str = "completions"
    reference_column: str | None = Field(
        default=None,
        description="A column of world knowledge / reference answers (UltraFeedback's "
        "'World Knowledge'), shown for reference_aspects.",
    )
    reference_aspects: list[str] = Field(
        default_factory=lambda: ["truthfulness"],
        description="Aspects whose prompt shows the reference (the released code: truthfulness).",
    )
    conversation: ConversationMode = Field(default="last_turn", description=CONVERSATION_OPTION)

    @field_validator("aspects", "reference_aspects")
    @classmethod
    def _known_aspects(cls, value: list[str], info: ValidationInfo) -> list[str]:
        unknown = [name for name in value if name not in ASPECTS]
        if unknown:
            raise ValueError(f"unknown aspect(s) {unknown}; choose from {list(ASPECTS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{info.field_name} lists one twice: {value}")
        if info.field_name == "aspects" and all(ASPECTS[name].allows_not_applicable for name in value):
            raise ValueError(
                "honesty alone may rate every completion N/A and leave it without a score; "
                "add another aspect"
            )
        return value

    def identity(self) -> dict[str, Any]:
        # The default is left out, so runs made before the option existed resume as the same run.
        out = super().identity()
        if self.conversation == "last_turn":
            out.pop("conversation", None)
        return out

    def backend_names(self) -> set[str]:
        return {self.backend}

    def check_row(self, row: Row) -> str | None:
        problem = check_instruction(row)
        if problem:
            return problem
        completions = row.get(self.completions_column)
        if not isinstance(completions, list) or not completions:
            return f"`{self.completions_column}` must be a non-empty list of texts"
        for index, text in enumerate(completions):
            if not isinstance(text, str) or not text.strip():
                return f"`{self.completions_column}[{index}]` is empty or not text"
        if self.reference_column is not None:
            return reference_problem(row, self.reference_column)
        return None

    def summary_columns(self) -> list[str]:
        return ["ratings"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Completions rated, the mean rating of each aspect, and how often honesty was N/A."""
        rated = [r for row in rows for r in row.get("ratings") or [] if isinstance(r, dict)]
        if not rated:
            return {}
        out: dict[str, Any] = {"completions rated": len(rated)}
        for name in self.aspects:
            values = [r.get(name) for r in rated]
            numbers = [int(v) for v in values if isinstance(v, str) and v.isdigit()]
            if numbers:
                out[f"mean {name}"] = sum(numbers) / len(numbers)
            if ASPECTS[name].allows_not_applicable:
                out[f"{name} N/A share"] = sum(v == NOT_APPLICABLE for v in values) / len(values)
        return out

    def row_key(self, row: Row) -> str:
        return row_key(row)

    def shown_order(self, key: str, aspect: str, n: int, ctx: StageContext) -> list[int]:
        """Which completion is shown at each position, for one aspect of one row."""
        order = list(range(n))
        if self.shuffle:
            ctx.rng(key, aspect).shuffle(order)
        return order

    def answer_tokens(self, aspect: Aspect, n_texts: int) -> int:
        """``max_tokens``, or by default the longest answer the aspect's schema allows
        (:func:`~stillroom.llm.structured.json_length_bound`: every rationale full, one token per
        character), so a grammar-constrained answer that degenerates into repetition ("1.1.1.")
        still closes its JSON instead of being cut off."""
        if self.max_tokens is not None:
            return self.max_tokens
        schema = aspect_schema(aspect, n_texts, self.rationale_chars)
        return min(8192, json_length_bound(schema))

    def params(self, ctx: StageContext, aspect: Aspect, n_texts: int) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            max_tokens=self.answer_tokens(aspect, n_texts),
            seed=self.seed if self.seed is not None else ctx.seed,
        )

    async def _judge_aspect(
        self, aspect: Aspect, row: Row, order: list[int], ctx: StageContext
    ) -> Judgment:
        completions = row[self.completions_column]
        views = [judged_view(row, completions[index], self.conversation) for index in order]
        shown = [answer for _, answer in views]
        reference = None
        if self.reference_column is not None and aspect.name in self.reference_aspects:
            reference = world_knowledge(row[self.reference_column])
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": aspect_prompt(aspect, views[0][0], shown, reference)},
        ]
        return await ask_judge(
            ctx.client(self.backend),
            messages,
            schema=aspect_schema(aspect, len(shown), self.rationale_chars),
            params=self.params(ctx, aspect, len(shown)),
            read_text=read_plain_text(aspect, len(shown)),
            structured=self.structured,
            max_reasks=self.max_reasks,
            what=f"aspect {aspect.name}",
        )

    async def process(self, row: Row, ctx: StageContext) -> Row:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        key = self.row_key(row)
        n = len(row[self.completions_column])
        aspects = [ASPECTS[name] for name in self.aspects]
        orders = {a.name: self.shown_order(key, a.name, n, ctx) for a in aspects}
        results = await asyncio.gather(
            *(self._judge_aspect(a, row, orders[a.name], ctx) for a in aspects),
            return_exceptions=True,
        )
        judgments: dict[str, Judgment] = {}
        for aspect, result in zip(aspects, results, strict=True):
            if isinstance(result, (RequestFailed, RowFailure)):
                result.args = (f"aspect {aspect.name}: {result.args[0]}",)
                raise result
            if isinstance(result, BaseException):
                raise result
            judgments[aspect.name] = result

        ratings: list[dict[str, str]] = [{} for _ in range(n)]
        rationales: list[dict[str, str]] = [{} for _ in range(n)]
        typed: dict[str, list[list[str]]] = {}
        for aspect in aspects:
            evaluations = judgments[aspect.name].value["evaluations"]
            if aspect.types_column:
                typed[aspect.types_column] = [[] for _ in range(n)]
            for position, evaluation in enumerate(evaluations):
                index = orders[aspect.name][position]
                ratings[index][aspect.name] = normalized_rating(evaluation["rating"])
                rationales[index][aspect.name] = evaluation["rationale"]
                if aspect.types_column:
                    # Each kind once, in the rubric's order.
                    found = set(evaluation.get("types", []))
                    kinds = [name for name in aspect.types if name in found]
                    if aspect.types_column == "hallucination_types" and not kinds:
                        kinds = ["none"]
                    if "none" in kinds and len(kinds) > 1:
                        kinds.remove("none")  # "none" beside a real kind is the model hedging
                    typed[aspect.types_column][index] = kinds

        out = dict(row)
        out["id"] = key
        out["ratings"] = ratings
        out["scores"] = [_mean_rating(rating) for rating in ratings]
        out["rationales"] = rationales
        out.update(typed)
        client = ctx.client(self.backend)
        return with_lineage(
            out,
            ctx.stage_name,
            method="ultrafeedback_judge",
            step="rate",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or key,
            model=client.backend.model,
            template=",".join(a.version() for a in aspects),
            aspects=list(self.aspects),
            with_reference=self.reference_column is not None,
            shown_order=orders,
            answers={name: j.answers for name, j in judgments.items()},
            prompt_tokens=sum(j.completion.prompt_tokens for j in judgments.values()),
            completion_tokens=sum(j.completion.completion_tokens for j in judgments.values()),
        )


def _mean_rating(rating: dict[str, str]) -> float:
    values = [int(value) for value in rating.values() if value != NOT_APPLICABLE]
    return sum(values) / len(values)
