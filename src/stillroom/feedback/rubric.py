"""``rubric_judge``: grade each answer on its own against a rubric (MT-Bench single grading by
default, or a rubric file of your own).

    - type: rubric_judge
      backend: judge
      rubric: null                   # default: 1-10 single-answer grading, MT-Bench style
      # rubric: rubrics/concise.yaml # or your own (below); relative to the pipeline file
      reference_column: reference    # optional: a reference answer shown to the judge
      column: auto                   # auto: `completions` (a list) when present, else `completion`
      conversation: last_turn        # a `messages` row: grade its last assistant turn, the turns
                                     # before as the request; `whole`: the whole transcript
      # preset: mt_bench             # FastChat's exact MT-Bench grading instead (below)

Single-answer grading (Zheng et al. 2023) asks the judge for a score on a fixed scale, one answer
at a time, after a short explanation; for questions with a right answer (math, reasoning) it shows
a reference answer and asks the judge to check against it. The default rubric does that on 1-10 in
our words. A rubric file (YAML or JSON) sets its own::

    name: concise
    instructions: |
      Rate how directly the answer gives the user what they asked for, without padding.
    scale: {min: 1, max: 5}
    levels:                      # optional: what some scores mean
      1: Mostly filler; the answer is hard to find.
      5: Every sentence is needed.
    reference_instructions: |    # optional: used when a reference answer is shown
      The reference answer shows what a complete answer contains.

A bad rubric file fails the pipeline before any request, naming the file, line and key.

Output: for a ``completion`` column, ``score`` (an integer on the scale) and ``rationale``; for a
``completions`` list, ``ratings`` (one integer per completion, aligned, so ``preference_pairs``
binarizes them) and ``rationales``. Every completion is graded in its own request. An answer that
does not parse is re-asked, then the row fails with the raw answer in its reason. The judge answers
JSON whose rationale is at most ``rationale_chars`` long, and ``max_tokens`` defaults to the
longest answer that schema allows, so a grammar-constrained answer always closes.

``preset: mt_bench`` reproduces FastChat's MT-Bench single-answer grading exactly instead (see
:mod:`stillroom.feedback.mt_bench`): FastChat's own prompts (``single-v1``; ``single-v1-multi-turn``
for a row whose conversation is user, assistant, user, graded on the second answer; their
``single-math-v1`` variants when ``reference_column`` holds a reference: a text, or two texts for
two turns; null means none, as for MT-Bench's questions outside math, reasoning and coding),
temperature 0, 2048 tokens, the score read as the first ``[[x]]`` (else ``[x]``), ``rationale`` the
whole judgment. No JSON is asked for and nothing is re-asked; a judgment without a score fails its
row where FastChat would record -1. ``rubric``, ``temperature`` and ``max_tokens`` cannot be
changed with it: the point is scores that compare with published ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stillroom.data.readers import option_file
from stillroom.data.rows import (
    CONVERSATION_OPTION,
    ConversationMode,
    Row,
    answer_turn_text,
    row_id,
    row_key,
    seed_id_of,
    with_lineage,
)
from stillroom.errors import ConfigError
from stillroom.feedback import mt_bench
from stillroom.feedback.judging import (
    Judgment,
    StructuredMode,
    answer_problem,
    as_int,
    ask_judge,
    check_instruction,
    first_number_after,
    judged_text,
    judged_view,
    schema_prompt,
)
from stillroom.llm.structured import json_length_bound
from stillroom.llm.types import GenerationParams, Message, Request, RequestFailed
from stillroom.pipeline.config import _line_of
from stillroom.pipeline.stage import (
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)


class Scale(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(ge=0)
    max: int

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if not self.min < self.max <= self.min + 100:
            raise ValueError(f"max must be above min and at most min + 100, got {self.min}..{self.max}")
        return self


class Rubric(BaseModel):
    """What a judge is told to grade, on what scale."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    instructions: str = Field(min_length=1)
    scale: Scale
    levels: dict[int, str] = Field(default_factory=dict)
    reference_instructions: str | None = None

    @field_validator("levels")
    @classmethod
    def _levels_on_scale(cls, levels: dict[int, str], info: ValidationInfo) -> dict[int, str]:
        scale = info.data.get("scale")
        if scale is not None:
            outside = [level for level in levels if not scale.min <= level <= scale.max]
            if outside:
                raise ValueError(f"levels {outside} are outside the scale {scale.min}..{scale.max}")
        return levels

    @property
    def version(self) -> str:
        text = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return f"rubric.{self.name}@{hashlib.sha256(text).hexdigest()[:8]}"

    def values(self) -> list[int]:
        return list(range(self.scale.min, self.scale.max + 1))


MT_BENCH_STYLE = Rubric(
    name="single_answer",
    instructions=(
        "Grade the quality of the assistant's answer to the user's request. Weigh how helpful, "
        "relevant, accurate, deep and detailed it is, and whether it shows good judgment or "
        "creativity where the request calls for them. Explain your grade briefly and objectively "
        "before giving it; length alone is not quality."
    ),
    scale=Scale(min=1, max=10),
    levels={
        1: "Useless or harmful: wrong, off-topic or empty of content.",
        4: "Partly useful, with real errors or large gaps.",
        7: "Good: correct and useful, with minor gaps.",
        10: "Excellent: correct, complete, clear; hard to improve.",
    },
    reference_instructions=(
        "A reference answer is given. Treat it as correct: compare the assistant's answer with "
        "it, find any mistake, and grade correctness above everything else."
    ),
)


def load_rubric(spec: str, base_dir: Path | None = None) -> Rubric:
    """Read and check a rubric file (YAML or JSON); errors name the file, line and key."""
    path = option_file(spec, base_dir, key="rubric", what="rubric")
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError("the rubric file is not UTF-8 text", path=str(path), key="rubric") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML or JSON: {getattr(error, 'problem', error)}",
            path=str(path),
            line=mark.line + 1 if mark else None,
            key="rubric",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "a rubric file must be a mapping with name, instructions and scale",
            path=str(path), line=1, key="rubric",
        )
    try:
        return Rubric.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        loc = tuple(problem["loc"])
        where = ".".join(str(part) for part in loc) or "(top)"
        message = str(problem["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            message,
            path=str(path),
            line=_line_of(root, loc),
            key=f"rubric.{where}",
        ) from None


def grade_schema(rubric: Rubric, rationale_chars: int) -> dict[str, Any]:
    values: list[Any] = rubric.values()
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "minLength": 1, "maxLength": rationale_chars},
            # Numbers or their text: both are common without constrained decoding.
            "rating": {"enum": values + [str(v) for v in values]},
        },
        "required": ["rationale", "rating"],
        "additionalProperties": False,
    }


_DOUBLE_BRACKETS = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")


def read_plain_grade(text: str) -> Any:
    """MT-Bench's ``[[7]]`` (the last one), else ``Rating: 7`` / ``Score: 7``."""
    found = _DOUBLE_BRACKETS.findall(text)
    value = float(found[-1]) if found else first_number_after("rating", text)
    if value is None:
        value = first_number_after("score", text)
    if value is None:
        return None
    rationale = _DOUBLE_BRACKETS.sub("", text).strip() or "(none given)"
    return {"rationale": rationale[:4000], "rating": as_int(value)}


def grade_prompt(rubric: Rubric, instruction: str, answer: str, reference: str | None) -> str:
    parts = [rubric.instructions.strip()]
    scale = f"Grade on a scale from {rubric.scale.min} to {rubric.scale.max}."
    if rubric.levels:
        scale += "\n" + "\n".join(f"{k}: {v}" for k, v in sorted(rubric.levels.items()))
    parts.append(scale)
    if reference is not None and rubric.reference_instructions:
        parts.append(rubric.reference_instructions.strip())
    parts.append(f"## Request\n{instruction}")
    if reference is not None:
        parts.append(f"## Reference answer\n{reference}")
    parts.append(f"## Assistant's answer\n{answer}")
    parts.append(
        "## Grade\n"
        + schema_prompt(
            f'{{"rationale": "<a short explanation>", "rating": <{rubric.scale.min}-'
            f'{rubric.scale.max}>}}'
        )
    )
    return "\n\n".join(parts)


def _is_grade(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


SYSTEM_PROMPT = "You are an impartial judge who grades AI assistants' answers against a rubric."


@register_stage
class RubricJudge(RowStage):
    type: Literal["rubric_judge"] = "rubric_judge"
    path_options: ClassVar[tuple[str, ...]] = ("rubric",)
    backend: str = Field(default="default", description="Backend name of the judge model.")
    rubric: str | None = Field(default=None, description="A rubric file; default: 1-10 grading.")
    reference_column: str | None = Field(default=None, description="A reference answer column.")
    column: Literal["auto", "completion", "completions"] = "auto"
    preset: Literal["mt_bench"] | None = Field(
        default=None, description="mt_bench: FastChat's exact MT-Bench single-answer grading."
    )
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Default: the longest answer the JSON schema allows (2048 for mt_bench).",
    )
    rationale_chars: int = Field(default=600, ge=20, le=4000)
    seed: int | None = None
    structured: StructuredMode = "auto"
    max_reasks: int = Field(default=2, ge=0, le=10)
    conversation: ConversationMode = Field(default="last_turn", description=CONVERSATION_OPTION)

    _rubric: Rubric = PrivateAttr(default=MT_BENCH_STYLE)

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> RubricJudge:
        if self.preset == "mt_bench":
            if self.rubric is not None:
                raise ValueError("preset mt_bench grades with FastChat's own prompts; leave "
                                 "`rubric` out or drop the preset")
            if self.conversation != "last_turn":
                raise ValueError("preset mt_bench shows a conversation as FastChat does (its "
                                 "multi-turn prompt); leave `conversation` out or drop the preset")
            fixed = {"temperature": mt_bench.TEMPERATURE, "max_tokens": mt_bench.MAX_TOKENS}
            for key, value in fixed.items():
                if key in self.model_fields_set and getattr(self, key) != value:
                    raise ValueError(
                        f"preset mt_bench fixes {key} ({value}, as FastChat grades); leave "
                        f"`{key}` out or drop the preset"
                    )
        if self.rubric is not None:
            self._rubric = load_rubric(self.rubric, pipeline_dir(info))
        return self

    @property
    def loaded_rubric(self) -> Rubric:
        return self._rubric

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["rubric_version"] = self._rubric.version  # an edited rubric is another run
        if self.conversation == "last_turn":  # the default, left out: older runs resume
            out.pop("conversation", None)
        if self.preset == "mt_bench":
            out["rubric_version"] = [p.version for p in mt_bench.judge_prompts().values()]
        return out

    def backend_names(self) -> set[str]:
        return {self.backend}

    def summary_columns(self) -> list[str]:
        return ["score", "ratings"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """How many answers were graded and their mean grade on the rubric's scale."""
        grades: list[float] = []
        for row in rows:
            if _is_grade(row.get("score")):
                grades.append(row["score"])
            elif isinstance(row.get("ratings"), list):
                grades.extend(g for g in row["ratings"] if _is_grade(g))
        if not grades:
            return {}
        scale = self._rubric.scale
        return {
            "answers graded": len(grades),
            f"mean grade ({scale.min}-{scale.max})": sum(grades) / len(grades),
        }

    def _column(self, row: Row) -> str:
        if self.column != "auto":
            return self.column
        return "completions" if isinstance(row.get("completions"), list) else "completion"

    def check_row(self, row: Row) -> str | None:
        problem = check_instruction(row)
        if problem:
            return problem
        column = self._column(row)
        if column == "completion":
            # A text, an assistant message list, or the last turn of `messages` (data.rows).
            problem = answer_problem(row, column)
            if problem:
                return problem
        else:
            value = row.get(column)
            if not isinstance(value, list) or not value:
                return "`completions` must be a non-empty list of texts"
            for index, text in enumerate(value):
                if not isinstance(text, str) or not text.strip():
                    return f"`completions[{index}]` is missing, empty or not text"
        if self.preset == "mt_bench":
            return self._mt_bench_problem(row)
        if self.reference_column is not None:
            reference = row.get(self.reference_column)
            if not isinstance(reference, str) or not reference.strip():
                return f"`{self.reference_column}` (reference_column) is missing or empty"
        return None

    def _mt_bench_problem(self, row: Row) -> str | None:
        turns = mt_bench.conversation(row)
        if isinstance(turns, str):
            return turns
        if self.reference_column is None:
            return None
        if self.reference_column not in row:
            return (f"`{self.reference_column}` (reference_column) is not a column of this row; "
                    f"it has {sorted(row)}")
        return mt_bench.reference_problem(
            row[self.reference_column], self.reference_column, len(turns[0])
        )

    async def _grade_mt_bench(
        self, row: Row, answer: str, sample: int, ctx: StageContext
    ) -> Judgment:
        turns = mt_bench.conversation(row)
        assert not isinstance(turns, str)  # check_row passed
        reference = row.get(self.reference_column) if self.reference_column is not None else None
        prompt, messages = mt_bench.judge_request(*turns, answer, reference)
        completion = await ctx.client(self.backend).generate(
            Request(
                messages=messages,
                params=GenerationParams(
                    temperature=mt_bench.TEMPERATURE,
                    max_tokens=mt_bench.MAX_TOKENS,
                    seed=self.seed if self.seed is not None else ctx.seed,
                ),
                sample=sample,
            )
        )
        score = mt_bench.fastchat_score(completion.text)
        if score is None:
            text = completion.text
            shown = text if len(text) <= 1500 else text[:1500] + "..."
            raise RowFailure(
                f"grade of answer {sample}: no [[rating]] or [rating] in the judgment (FastChat "
                f"records -1 and leaves it out); judgment: {shown!r}",
                kind="UnparseableJudgment",
            )
        value = {"rating": score, "rationale": completion.text, "prompt": prompt.name}
        return Judgment(value, completion, answers=1)

    async def _grade(self, row: Row, answer: str, sample: int, ctx: StageContext) -> Judgment:
        if self.preset == "mt_bench":
            # The final answer, not the trace before it.
            return await self._grade_mt_bench(row, judged_text(answer), sample, ctx)
        instruction, answer = judged_view(row, answer, self.conversation)
        reference = row[self.reference_column] if self.reference_column is not None else None
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": grade_prompt(self._rubric, instruction, answer, reference),
            },
        ]
        schema = grade_schema(self._rubric, self.rationale_chars)
        return await ask_judge(
            ctx.client(self.backend),
            messages,
            schema=schema,
            params=GenerationParams(
                temperature=self.temperature,
                # Room for the longest answer the schema allows: a constrained answer that
                # degenerates into repetition still closes its JSON.
                max_tokens=self.max_tokens or json_length_bound(schema),
                seed=self.seed if self.seed is not None else ctx.seed,
            ),
            sample=sample,
            read_text=read_plain_grade,
            structured=self.structured,
            max_reasks=self.max_reasks,
            what=f"grade of answer {sample}",
        )

    async def process(self, row: Row, ctx: StageContext) -> Row:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        column = self._column(row)
        answers = row[column] if column == "completions" else [answer_turn_text(row, column)]
        results = await asyncio.gather(
            *(self._grade(row, answer, index, ctx) for index, answer in enumerate(answers)),
            return_exceptions=True,
        )
        for index, result in enumerate(results):
            if isinstance(result, (RequestFailed, RowFailure)):
                if column == "completions":
                    result.args = (f"completions[{index}]: {result.args[0]}",)
                raise result
            if isinstance(result, BaseException):
                raise result
        judged: list[Judgment] = list(results)  # type: ignore[arg-type]
        grades: list[Any] = [
            # MT-Bench keeps the score as FastChat reads it (7.5 stays 7.5).
            j.value["rating"] if self.preset == "mt_bench" else int(j.value["rating"])
            for j in judged
        ]
        rationales = [j.value["rationale"] for j in judged]
        key = row_key(row)
        out = dict(row)
        out["id"] = key
        if column == "completions":
            out["ratings"], out["rationales"] = grades, rationales
        else:
            out["score"], out["rationale"] = grades[0], rationales[0]
        if self.preset == "mt_bench":
            names = sorted({j.value["prompt"] for j in judged})
            step, template = "mt_bench", ",".join(
                mt_bench.judge_prompts()[name].version for name in names
            )
        else:
            step, template = self._rubric.name, self._rubric.version
        return with_lineage(
            out,
            ctx.stage_name,
            method="rubric_judge",
            step=step,
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or key,
            model=ctx.client(self.backend).backend.model,
            template=template,
            scale=[self._rubric.scale.min, self._rubric.scale.max],
            with_reference=self.reference_column is not None,
            answers=[j.answers for j in judged],
            prompt_tokens=sum(j.completion.prompt_tokens for j in judged),
            completion_tokens=sum(j.completion.completion_tokens for j in judged),
        )
