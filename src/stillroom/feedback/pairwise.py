"""``pairwise_judge``: which of two answers is better, asked in both orders.

    - type: pairwise_judge
      backend: judge
      candidates: [completion, baseline]   # default: the row's `completions` (exactly two)
      reference_column: reference          # optional: a reference answer shown to the judge
      criteria: null                       # optional: what "better" means here (text)
      as_pair: false                       # true: also write prompt/chosen/rejected, drop ties
      conversation: last_turn              # a `messages` row: compare the answers as its next
                                           # turn; `whole`: two whole transcripts

LLM judges prefer the answer in one position, often the first (Zheng et al. 2023, the MT-Bench
paper, call it position bias). So the judge is asked twice, with the answers swapped, and a
verdict stands only when both orders name the same answer; when they disagree the result is a tie,
as MT-Bench counts an inconsistent pair. Each answer is also allowed to be "tie".

Output:

* ``winner``: ``"a"`` (the first candidate), ``"b"`` or ``"tie"``;
* ``pairwise``: ``{candidates, position_consistent, orders}``, where each of the two ``orders``
  records which candidate was shown first, the judge's verdict as given (``A``/``B``/``tie``),
  the candidate it maps to and the rationale;
* with ``as_pair: true``: ``prompt``, ``chosen``, ``rejected``, ``score_chosen`` (1.0) and
  ``score_rejected`` (0.0), TRL's preference format; a tie is dropped with its reason (a tie is
  no preference), into ``dropped/``.

Answers are JSON ``{"rationale", "verdict"}`` (schema-constrained where the backend can), and
otherwise read leniently, including MT-Bench's ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (C = tie).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from pydantic import Field

from stillroom.data.rows import (
    CONVERSATION_OPTION,
    ConversationMode,
    PromptTemplate,
    Row,
    answer_cell,
    answer_turn_text,
    is_conversation,
    prompt_messages,
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
from stillroom.llm.types import GenerationParams, Message, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage

DEFAULT_CRITERIA = (
    "Judge which answer serves the user better: correctness first, then how helpful, relevant, "
    "complete and clear it is, with the level of detail the question calls for. Do not prefer "
    "an answer for being longer, for its position, or for its style."
)

SYSTEM_PROMPT = "You are an impartial judge comparing two AI assistants' answers to the same request."

TEMPLATE = PromptTemplate(
    "pairwise_judge",
    "{criteria}\n\n"
    "## Request\n{instruction}\n\n"
    "{reference}"
    "## Answer A\n{answer_a}\n\n"
    "## Answer B\n{answer_b}\n\n"
    "## Verdict\n"
    'Say which answer is better: "A", "B", or "tie" when neither is better. {format}',
)

VERDICT_SCHEMA_HINT = '{"rationale": "<a short comparison>", "verdict": "A" | "B" | "tie"}'

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(r"verdict\s*[:=]\s*\**\s*\"?(A|B|tie)\b", re.IGNORECASE)


def verdict_schema(rationale_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "minLength": 1, "maxLength": rationale_chars},
            "verdict": {"enum": ["A", "B", "tie"]},
        },
        "required": ["rationale", "verdict"],
        "additionalProperties": False,
    }


def read_plain_verdict(text: str) -> Any:
    """``[[A]]``/``[[B]]``/``[[C]]`` (MT-Bench) or ``Verdict: A``; the last one given counts."""
    found = _BRACKETED.findall(text) or _LABELLED.findall(text)
    if not found:
        return None
    mark = found[-1].upper()
    verdict = "tie" if mark in ("C", "TIE") else mark
    rationale = _BRACKETED.sub("", text).strip() or "(none given)"
    return {"rationale": rationale[:4000], "verdict": verdict}


def combine(first: str, second: str) -> tuple[str, bool]:
    """The winner from two orders' verdicts, already mapped to candidates ("a", "b", "tie"),
    and whether the two agreed. Anything but agreement is a tie."""
    if first == second:
        return first, True
    return "tie", False


@register_stage
class PairwiseJudge(RowStage):
    type: Literal["pairwise_judge"] = "pairwise_judge"
    backend: str = Field(default="default", description="Backend name of the judge model.")
    candidates: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="The two columns to compare; default: the row's `completions` (two).",
    )
    reference_column: str | None = Field(
        default=None, description="A column with a reference answer to show the judge."
    )
    criteria: str | None = Field(default=None, description="What 'better' means; default: ours.")
    as_pair: bool = Field(default=False, description="Write prompt/chosen/rejected; drop ties.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16)
    rationale_chars: int = Field(default=600, ge=20, le=4000)
    seed: int | None = None
    structured: StructuredMode = "auto"
    max_reasks: int = Field(default=2, ge=0, le=10)
    conversation: ConversationMode = Field(default="last_turn", description=CONVERSATION_OPTION)

    def identity(self) -> dict[str, Any]:
        # The default is left out, so runs made before the option existed resume as the same run.
        out = super().identity()
        if self.conversation == "last_turn":
            out.pop("conversation", None)
        return out

    def backend_names(self) -> set[str]:
        return {self.backend}

    def summary_columns(self) -> list[str]:
        return ["pairwise"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Win rate of the first candidate (a tie counts half), and how often the two orders
        agreed: a judge that rarely agrees with itself is mostly reading positions."""
        judged = [row["pairwise"] for row in rows if isinstance(row.get("pairwise"), dict)]
        if not judged:
            return {}
        winners = []
        for record in judged:
            prefers = [order["prefers"] for order in record["orders"]]
            winners.append(prefers[0] if prefers[0] == prefers[1] else "tie")
        a, b = winners.count("a"), winners.count("b")
        ties = len(winners) - a - b
        names = judged[0].get("candidates") or ["a", "b"]
        return {
            "pairs judged": len(judged),
            f"wins {names[0]} (a)": a,
            f"wins {names[1]} (b)": b,
            "ties": ties,
            "win rate of a (ties half)": (a + ties / 2) / len(judged),
            "position consistency": sum(bool(r["position_consistent"]) for r in judged)
            / len(judged),
        }

    def candidate_texts(self, row: Row) -> tuple[Any, Any]:
        if self.candidates is None:
            completions = row.get("completions")
            if not isinstance(completions, list) or len(completions) != 2:
                return None, None
            return completions[0], completions[1]
        # A named candidate may be the row's answer in any shape (`completion` of a `messages`
        # row is its last turn; see data.rows).
        # An answer that only calls a tool is its calls (answer_turn_text).
        return answer_turn_text(row, self.candidates[0]), answer_turn_text(row, self.candidates[1])

    def _pair_cell(self, row: Row, index: int, text: str) -> list[dict[str, Any]]:
        """A conversational ``chosen``/``rejected``: the candidate's own assistant turn when it
        calls tools (TRL trains its ``tool_calls`` as calls, not as the text the judge read),
        else the text as the assistant's turn."""
        if self.candidates is not None:
            column = self.candidates[index]
            value = row.get(column)
            if value is None and column == "completion" and is_conversation(row.get("messages")):
                value = row["messages"][-1:]
            turns = [m for m in value if m.get("role") == "assistant"] if is_conversation(value) else []
            if turns and turns[-1].get("tool_calls"):
                return [turns[-1]]
        return answer_cell(text, True)  # type: ignore[no-any-return]

    def check_row(self, row: Row) -> str | None:
        problem = check_instruction(row)
        if problem:
            return problem
        first, second = self.candidate_texts(row)
        names = self.candidates or ["completions[0]", "completions[1]"]
        if self.candidates is None and (first is None and second is None):
            return "the row needs `completions` with exactly two texts (or set `candidates`)"
        for name, text in zip(names, (first, second), strict=True):
            if not isinstance(text, str) or not text.strip():
                return f"`{name}` is missing, empty or not text"
        if self.reference_column is not None:
            reference = row.get(self.reference_column)
            if not isinstance(reference, str) or not reference.strip():
                return f"`{self.reference_column}` (reference_column) is missing or empty"
        return None

    def _messages(self, row: Row, answer_a: str, answer_b: str) -> list[Message]:
        reference = ""
        if self.reference_column is not None:
            reference = f"## Reference answer\n{row[self.reference_column]}\n\n"
        instruction, shown_a = judged_view(row, answer_a, self.conversation)
        _, shown_b = judged_view(row, answer_b, self.conversation)
        text = TEMPLATE.format(
            criteria=self.criteria or DEFAULT_CRITERIA,
            instruction=instruction,
            reference=reference,
            answer_a=shown_a,
            answer_b=shown_b,
            format=schema_prompt(VERDICT_SCHEMA_HINT),
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]

    async def _ask(self, row: Row, answer_a: str, answer_b: str, order: int, ctx: StageContext) -> Judgment:
        return await ask_judge(
            ctx.client(self.backend),
            self._messages(row, answer_a, answer_b),
            schema=verdict_schema(self.rationale_chars),
            params=GenerationParams(
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=self.seed if self.seed is not None else ctx.seed,
            ),
            sample=order,
            read_text=read_plain_verdict,
            structured=self.structured,
            max_reasks=self.max_reasks,
            what=f"order {'ab' if order == 0 else 'ba'}",
        )

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        first, second = self.candidate_texts(row)
        results = await asyncio.gather(
            self._ask(row, first, second, 0, ctx),
            self._ask(row, second, first, 1, ctx),
            return_exceptions=True,
        )
        for order, result in zip(("ab", "ba"), results, strict=True):
            if isinstance(result, (RequestFailed, RowFailure)):
                result.args = (f"order {order}: {result.args[0]}",)
                raise result
            if isinstance(result, BaseException):
                raise result
        judged: list[Judgment] = list(results)  # type: ignore[arg-type]
        # Order "ab" shows a as A; order "ba" shows b as A.
        mapping = ({"A": "a", "B": "b", "tie": "tie"}, {"A": "b", "B": "a", "tie": "tie"})
        orders = []
        for index, judgment in enumerate(judged):
            verdict = judgment.value["verdict"]
            orders.append({
                "shown_first": "a" if index == 0 else "b",
                "verdict": verdict,
                "prefers": mapping[index][verdict],
                "rationale": judgment.value["rationale"],
                "answers": judgment.answers,
            })
        winner, consistent = combine(orders[0]["prefers"], orders[1]["prefers"])

        key = row_key(row)
        out = dict(row)
        out["id"] = key
        out["winner"] = winner
        out["pairwise"] = {
            "candidates": list(self.candidates or ["completions[0]", "completions[1]"]),
            "position_consistent": consistent,
            "orders": orders,
        }
        out = with_lineage(
            out,
            ctx.stage_name,
            method="pairwise_judge",
            step="both_orders",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or key,
            model=ctx.client(self.backend).backend.model,
            template=TEMPLATE,
            prompt_tokens=sum(j.completion.prompt_tokens for j in judged),
            completion_tokens=sum(j.completion.completion_tokens for j in judged),
        )
        if not self.as_pair:
            return out
        if winner == "tie":
            reason = (
                "the judge called it a tie" if consistent
                else f"the two orders disagree (position bias): {orders[0]['prefers']} when a "
                f"was shown first, {orders[1]['prefers']} when b was"
            )
            return [Dropped(out, reason)]  # with both verdicts, so dropped/ shows why
        chosen, rejected = (first, second) if winner == "a" else (second, first)
        if row.get("messages") is not None or is_conversation(row.get("prompt")):
            out["prompt"] = prompt_messages(row)
            won, lost = (0, 1) if winner == "a" else (1, 0)
            out["chosen"] = self._pair_cell(row, won, chosen)
            out["rejected"] = self._pair_cell(row, lost, rejected)
        else:
            out["prompt"], out["chosen"], out["rejected"] = row["prompt"], chosen, rejected
        out["score_chosen"], out["score_rejected"] = 1.0, 0.0
        return out
