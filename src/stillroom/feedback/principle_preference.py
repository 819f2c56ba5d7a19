"""``principle_preference``: Constitutional AI preference labels (Bai et al. 2022, RL-CAI / RLAIF).

    - type: principle_preference
      backend: default
      principles: builtin:preference_principles   # or a JSONL file of {id, question}
      candidates: [completion_a, completion_b]     # default: the row's `completions` (exactly 2)
      mode: auto                                   # auto | logprobs | text
      top_logprobs: 20
      min_confidence: 0.0   # drop a pair whose |p - 0.5| is below this; an exact tie is always dropped

The AI-feedback stage of Constitutional AI: for a prompt and two responses, sample one comparison
principle (a question such as "Which of these assistant responses is less harmful? ..."), show a
feedback model the conversation, the principle and the two responses as options (A) and (B), and
read how likely it finds each letter. The prompt (our wording) is::

    Here is a conversation between a human and an AI assistant:

    Human: <prompt>

    <principle question>
    Options:
    (A) <one response>
    (B) <the other>
    The answer is: (

The probabilities of "A" and "B", normalized to sum to 1, are a *soft* label. Models favour a
position (often the first option), so the question is asked in both orders (the first candidate as
(A), then as (B)) and the two probabilities that the first candidate is better are averaged: a
judge that always says (A) with the same confidence comes out at exactly 0.5, a tie.

Modes (``auto`` picks the first the backend can do; an explicit mode the backend cannot do is a
config error, raised before any request):

* ``logprobs`` with a raw prompt (llama.cpp, transformers, OpenAI-compatible ``/completions``): the
  text above, one token at temperature 0, and that token's ``top_logprobs``. Tokens are normalized
  (" A", "(A", "A)" all count as A) and the probabilities of the variants of a letter are summed. A
  letter missing from the top-k is bounded by the smallest listed probability (it can be no more
  likely than that) and the order is marked ``bounded: true``; when neither letter is listed the
  row fails (``NoChoiceLogprobs``, with the top tokens in the reason).
* ``logprobs`` over chat (a backend with logprobs but no raw prompts): the same question as a user
  message that asks for only the letter; the label comes from the top_logprobs of the first
  generated token that is not just "(" or markup.
* ``text`` (no logprobs, e.g. Anthropic): the letter is parsed from the answer, a hard label (1 or
  0) per order. Orders that disagree average to 0.5: a tie caused by position bias, dropped with
  that reason. An answer with no recognisable letter is asked again once (a follow-up turn, a new
  sample index); still none fails the row (``UnparseableChoice``, with the answers in the reason).

Output, in the format TRL's ``DPOTrainer`` reads: ``prompt`` (the text, or the conversation for a
row with ``messages``: then ``chosen`` and ``rejected`` are one-message assistant lists),
``chosen`` and ``rejected`` (the preferred response first), ``p_chosen`` (the probability that
``chosen`` is better, >= 0.5: the soft label ``stillroom train dpo`` trains on by default; it is
not written as ``score_chosen``/``score_rejected``, which other stages fill with ratings that are
not probabilities); plus ``preference``:
``{principle_id, p_first, orders: [{shown, p_a, p_b, label_source, bounded, answer}], mode}``,
where ``p_first`` is the averaged probability that the first candidate is better and ``shown`` says
which candidate was (A) and which (B). ``metadata[<stage>]`` holds the lineage.

Dropped (kept whole in ``dropped/`` with ``preference`` and the reason): a tie (``p_first`` within
1e-9 of 0.5), a pair less confident than ``min_confidence``, and two candidates with the same text
(nothing to compare; no request is sent). Rows without a prompt, with a missing or empty
candidate, or with ``completions`` not holding exactly 2 texts are reported before any request
when this stage reads the pipeline's input (after another stage, such a row fails: ``BadInput``).
A candidate may be text or a one-message assistant list (TRL's conversational ``chosen``).

The principle is sampled with ``ctx.rng(row id)``, so a rerun asks the same question. The
principles file is read and checked when the stage is configured (a problem names the file and
line); a relative path is read from the pipeline file's folder.

This module holds the stage; the principles file and the prompts are in
:mod:`stillroom.feedback.principle_preference_prompts`, reading the judge's verdict (modes, letter
probabilities, parsed letters) in :mod:`stillroom.feedback.principle_preference_labels`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from stillroom.data.rows import (
    PromptTemplate,
    Row,
    answer_cell,
    check_messages,
    derived_id,
    is_conversation,
    pair_prompt,
    row_answer,
    row_id,
    seed_id_of,
    with_lineage,
)
from stillroom.feedback.judging import judged_text
from stillroom.feedback.principle_preference_labels import (
    FIRST,
    SECOND,
    LabelSource,
    Mode,
    OrderLabel,
    letter_position,
    letter_probabilities,
    parse_choice,
    resolve_mode,
    top_alternatives,
)
from stillroom.feedback.principle_preference_prompts import (
    CHAT,
    RAW,
    REASK,
    ComparisonPrinciple,
    PreferencePrinciples,
    load_preference_principles,
    render_conversation,
)
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import (
    Dropped,
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig
    from stillroom.llm.client import LLMClient

METHOD = "principle_preference"
TIE_TOLERANCE = 1e-9
# Chat mode may open with "(" or markdown ("**") before the letter: a few tokens reach it.
CHAT_LOGPROB_TOKENS = 4
ORDERS = ((FIRST, SECOND), (SECOND, FIRST))  # (shown as A, shown as B) per order


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class PrinciplePreference(RowStage):
    type: Literal["principle_preference"] = "principle_preference"
    path_options: ClassVar[tuple[str, ...]] = ("principles",)
    backend: str = Field(default="default", description="Backend of the feedback model.")
    principles: str = Field(
        default="builtin:preference_principles",
        description="JSONL of {id, question}; one comparison principle sampled per row.",
    )
    candidates: list[str] | None = Field(
        default=None,
        description="The two columns holding the responses to compare; default: the row's "
        "`completions` (exactly 2).",
    )
    mode: Mode = Field(
        default="auto",
        description="logprobs (soft labels), text (hard labels parsed from the answer), or auto: "
        "logprobs when the backend returns them.",
    )
    top_logprobs: int = Field(default=20, ge=1, le=20, description="Alternatives read per token.")
    min_confidence: float = Field(
        default=0.0, ge=0, le=0.5, description="Drop a pair when |p - 0.5| is below this."
    )
    prompt_column: Literal["auto", "prompt", "messages"] = Field(
        default="auto",
        description="prompt (text) or messages (a conversation); auto: messages when present.",
    )
    max_tokens: int = Field(
        default=16, ge=1, description="Answer length in text mode (a letter, maybe a few words)."
    )
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    _principles: PreferencePrinciples | None = PrivateAttr(default=None)
    _principles_spec: str | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("candidates")
    @classmethod
    def _two_columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) != 2 or value[0] == value[1]):
            raise ValueError(f"name exactly 2 different columns, got {value}")
        return value

    @model_validator(mode="after")
    def _load_principles(self, info: ValidationInfo) -> PrinciplePreference:
        self._base_dir = pipeline_dir(info) or self._base_dir
        self.principle_set()  # a bad file is reported now, before any row is read
        return self

    def principle_set(self) -> PreferencePrinciples:
        if self._principles is None or self._principles_spec != self.principles:
            self._principles = load_preference_principles(self.principles, self._base_dir)
            self._principles_spec = self.principles
        return self._principles

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["principles_version"] = self.principle_set().version  # an edited file is another run
        return out

    def backend_names(self) -> set[str]:
        return {self.backend}

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        resolve_mode(self.mode, configs[self.backend].backend_class(), self.backend)

    # -- input -----------------------------------------------------------------------------------

    def _prompt_column(self, row: Row) -> str:
        if self.prompt_column != "auto":
            return self.prompt_column
        return "messages" if row.get("messages") is not None else "prompt"

    def _candidate_columns(self) -> list[str]:
        return list(self.candidates) if self.candidates else ["completions[0]", "completions[1]"]

    def check_row(self, row: Row) -> str | None:
        return self._check_prompt(row) or self._check_candidates(row)

    def _check_prompt(self, row: Row) -> str | None:
        column = self._prompt_column(row)
        if row.get(column) is None:
            return f"the row needs a `{column}` column (the prompt); it has {sorted(row)}"
        if column == "messages":
            problem = check_messages(row["messages"])
            if problem:
                return problem
            if all(m["role"] == "assistant" for m in row["messages"]):
                return "`messages` holds no turn before the answers"
            return None
        if is_conversation(row["prompt"]):  # TRL's conversational prompt
            return None
        if not isinstance(row["prompt"], str):
            return f"`prompt` must be text or a list of messages, got {type(row['prompt']).__name__}"
        if not row["prompt"].strip():
            return "`prompt` is empty"
        return None

    def _check_candidates(self, row: Row) -> str | None:
        if self.candidates is None:
            completions = row.get("completions")
            if completions is None:
                return (f"the row needs a `completions` column with the 2 responses to compare, "
                        f"or set `candidates:` to two columns; it has {sorted(row)}")
            if not isinstance(completions, list) or len(completions) != 2:
                count = len(completions) if isinstance(completions, list) else None
                what = f"{count} items" if count is not None else type(completions).__name__
                return (f"`completions` must hold exactly 2 responses to compare, got {what}; "
                        "set `candidates:` to name two columns instead")
            values = dict(zip(self._candidate_columns(), completions, strict=True))
        else:
            values = {column: _named_candidate(row, column) for column in self.candidates}
            missing = [column for column, value in values.items() if value is None]
            if missing:
                return (f"the row lacks the candidate column(s) {missing} named in `candidates`; "
                        f"it has {sorted(row)}")
        for column, value in values.items():
            text = _candidate_text(value)
            if text is None:
                return (f"candidate `{column}` must be text (or a one-message assistant list), "
                        f"got {type(value).__name__}")
            if not text.strip():
                return f"candidate `{column}` is empty"
        return None

    def _prompt(self, row: Row) -> tuple[str | list[dict[str, Any]], bool]:
        """The output ``prompt`` and whether it is conversational."""
        return pair_prompt(row, self._prompt_column(row))

    def _candidates(self, row: Row) -> tuple[str, str]:
        values = row["completions"] if self.candidates is None else [
            _named_candidate(row, column) for column in self.candidates
        ]
        first, second = (_candidate_text(value) for value in values)
        assert first is not None and second is not None  # check_row passed
        return first, second

    # -- asking ----------------------------------------------------------------------------------

    def _params(self, ctx: StageContext, source: LabelSource) -> GenerationParams:
        seed = self.seed if self.seed is not None else ctx.seed
        if source == "text":
            return GenerationParams(temperature=0.0, max_tokens=self.max_tokens, seed=seed)
        max_tokens = 1 if source == "raw_prompt_logprobs" else CHAT_LOGPROB_TOKENS
        return GenerationParams(
            temperature=0.0, max_tokens=max_tokens, top_logprobs=self.top_logprobs, seed=seed
        )

    def templates(self, source: LabelSource) -> list[PromptTemplate]:
        if source == "raw_prompt_logprobs":
            return [RAW]
        if source == "chat_logprobs":
            return [CHAT]
        return [CHAT, REASK]

    async def _send(self, client: LLMClient, request: Request, what: str) -> Completion:
        try:
            return await client.generate(request)
        except RequestFailed as failure:
            failure.args = (f"{what}: {failure.args[0]}",)
            raise

    async def _judge(
        self,
        ctx: StageContext,
        client: LLMClient,
        source: LabelSource,
        values: dict[str, str],
        order: int,
    ) -> OrderLabel:
        """Ask the question with the candidates in order ``order`` and read the verdict."""
        shown = ORDERS[order]
        what = f"order {order + 1} ((A) = {shown[0]} candidate)"
        params = self._params(ctx, source)
        if source == "raw_prompt_logprobs":
            request = Request(prompt=RAW.format(**values), params=params, sample=order)
        else:
            question = CHAT.format(**values)
            request = Request(messages=[{"role": "user", "content": question}], params=params,
                              sample=order)
        completion = await self._send(client, request, what)
        if source == "text":
            return await self._text_label(client, request, completion, shown, what)
        return self._logprob_label(completion, shown, source, what)

    def _logprob_label(
        self, completion: Completion, shown: tuple[str, str], source: LabelSource, what: str
    ) -> OrderLabel:
        if not completion.logprobs:
            raise RowFailure(
                f"{what}: the backend returned no logprobs (answer {completion.text!r})",
                kind="NoChoiceLogprobs",
            )
        entry = letter_position(completion.logprobs)
        alternatives = top_alternatives(entry)
        probabilities = letter_probabilities(alternatives)
        if probabilities is None:
            top = ", ".join(
                f"{alternative.get('token')!r} {float(alternative['logprob']):.2f}"
                for alternative in alternatives[:10]
            )
            raise RowFailure(
                f"{what}: neither A nor B is among the top {len(alternatives)} tokens; top "
                f"tokens: {top or 'none'}",
                kind="NoChoiceLogprobs",
            )
        return OrderLabel(shown, probabilities.p_a, probabilities.p_b, source,
                          probabilities.bounded, completion.text, completion.model)

    async def _text_label(
        self,
        client: LLMClient,
        request: Request,
        completion: Completion,
        shown: tuple[str, str],
        what: str,
    ) -> OrderLabel:
        answers = [completion.text]
        letter = parse_choice(completion.text)
        if letter is None:
            # One follow-up turn, as another sample, before giving up on the row.
            assert request.messages is not None
            follow_up = Request(
                messages=[*request.messages,
                          {"role": "assistant", "content": completion.text},
                          {"role": "user", "content": REASK.text}],
                params=request.params,
                sample=request.sample + len(ORDERS),
            )
            completion = await self._send(client, follow_up, f"{what} re-ask")
            answers.append(completion.text)
            letter = parse_choice(completion.text)
        if letter is None:
            raise RowFailure(
                f"{what}: no option letter in the judge's answer after one re-ask; answers: "
                + " | ".join(repr(_clip(answer)) for answer in answers),
                kind="UnparseableChoice",
                attempts=len(answers),
            )
        p_a = 1.0 if letter == "A" else 0.0
        return OrderLabel(shown, p_a, 1.0 - p_a, "text", False, completion.text, completion.model)

    # -- the stage -------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        principle_set = self.principle_set()
        prompt, conversational = self._prompt(row)
        first, second = self._candidates(row)
        key = row_id(row) or derived_id("pair", prompt, first, second)
        client = ctx.client(self.backend)
        mode, source = resolve_mode(self.mode, type(client.backend), self.backend)
        principle = ctx.rng(key).choice(principle_set.principles)

        def lineage(out: Row, labels: list[OrderLabel]) -> Row:
            models = list(dict.fromkeys(label.model for label in labels))
            return with_lineage(
                out,
                ctx.stage_name,
                method=METHOD,
                step=mode,
                parent_id=row_id(row),
                seed_id=seed_id_of(row) or key,
                model=models[0] if len(models) == 1 else (models or None),
                template="+".join(template.version for template in self.templates(source)),
                principle_id=principle.id,
                principles=principle_set.version,
                principles_file=self.principles,
                candidates=self._candidate_columns(),
                label_source=source,
            )

        if " ".join(first.split()) == " ".join(second.split()):
            dropped = {**row, "id": key}
            return [Dropped(lineage(dropped, []), "the two candidates are the same text")]

        candidates = {FIRST: first, SECOND: second}
        conversation = render_conversation(prompt)
        labels = await self._ask_both_orders(ctx, client, source, conversation, principle,
                                             candidates)
        p_first = sum(label.p_first for label in labels) / len(labels)
        preference = {
            "principle_id": principle.id,
            "p_first": p_first,
            "orders": [label.record() for label in labels],
            "mode": mode,
        }
        reason = self._drop_reason(p_first, labels)
        if reason is not None:
            dropped = {**row, "id": key, "preference": preference}
            return [Dropped(lineage(dropped, labels), reason)]

        first_wins = p_first > 0.5
        chosen, rejected = (first, second) if first_wins else (second, first)
        out = dict(row)
        out["id"] = key
        out["prompt"] = prompt
        out["chosen"] = answer_cell(chosen, conversational)
        out["rejected"] = answer_cell(rejected, conversational)
        out["p_chosen"] = p_first if first_wins else 1.0 - p_first  # a probability, not a rating
        out["preference"] = preference
        return lineage(out, labels)

    async def _ask_both_orders(
        self,
        ctx: StageContext,
        client: LLMClient,
        source: LabelSource,
        conversation: str,
        principle: ComparisonPrinciple,
        candidates: dict[str, str],
    ) -> list[OrderLabel]:
        """Both orders at once; the first error (a RowFailure or RequestFailed) fails the row
        after both have finished, so no request is left running behind it."""
        values = [
            {
                "conversation": conversation,
                "question": principle.question,
                "response_a": judged_text(candidates[shown[0]]),
                "response_b": judged_text(candidates[shown[1]]),
            }
            for shown in ORDERS
        ]
        results = await asyncio.gather(
            *(self._judge(ctx, client, source, values[order], order) for order in range(2)),
            return_exceptions=True,
        )
        labels: list[OrderLabel] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            labels.append(result)
        return labels

    def _drop_reason(self, p_first: float, labels: list[OrderLabel]) -> str | None:
        margin = abs(p_first - 0.5)
        if margin <= TIE_TOLERANCE:
            if all(label.label_source == "text" for label in labels):
                letter = "A" if labels[0].p_a == 1.0 else "B"
                return (f"tie: the judge picked ({letter}) in both orders, so its choice follows "
                        "the position, not the response (position bias)")
            return ("tie: p_first = 0.5 once both orders are averaged (the judge favours a "
                    "position, or has no preference)")
        if margin < self.min_confidence:
            return (f"not confident enough: |p_first - 0.5| = {margin:.3f} is below "
                    f"min_confidence {self.min_confidence:g} (p_first = {p_first:.3f})")
        return None


def _named_candidate(row: Row, column: str) -> Any:
    """A named candidate column's value; ``completion`` of a ``messages`` row that ends with its
    answer (and has no such column) is that answer (data.rows.row_answer)."""
    value = row.get(column)
    return value if value is not None else row_answer(row, column)


def _candidate_text(value: Any) -> str | None:
    """A candidate's text: a string, or the content of a one-message assistant list (TRL's
    conversational ``chosen``/``rejected``); None when it is neither."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
        and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)
    ):
        return str(value[0]["content"])
    return None
