"""``evol_instruct``: Evol-Instruct (WizardLM, Xu et al. 2023): harder instructions, step by step.

    - type: evol_instruct
      epochs: 4                 # the paper's M = 4 rounds of evolution
      operations:               # which operations may be picked, and their weights
        add_constraints: 1      # (default: all six, equally likely, as in the paper)
        in_breadth: 1
      answer_backend: teacher   # who answers the evolved instructions (default: `backend`)

Each input row's instruction (``prompt``, or the column named by ``column``) is the root of an
evolution chain. In each epoch the current instruction gets one operation, picked with
``ctx.rng(seed id, epoch)``: one of the five *in-depth* rewrites (add constraints, deepening,
concretizing, increased reasoning steps, complicate input), each allowed to add only 10 to 20
words and required to stay reasonable and answerable by people, or *in-breadth* (a new, rarer
prompt in the same domain). The evolved instruction is answered, then the eliminator checks it.
An evolution fails, each rule with its own drop reason, when:

* ``copies_evolving_prompt``: the instruction copies words of the evolving prompt ("given
  prompt", "rewritten prompt", "#Rewritten Prompt#", "#Created Prompt#", ...; case-insensitive);
* ``no_information_gain``: the LLM, shown parent and child, says they are "Equal";
* ``sorry_short_response``: the answer contains "sorry" and is shorter than 80 words;
* ``stopwords_only_response``: the answer holds nothing but punctuation and stop words (an empty
  answer included: it has no other word either);
* ``empty_instruction``: the rewriter returned nothing (not a rule of the paper; an empty
  instruction is no evolution at all).

The rules that need no request run first (the copy check before the equality question, both
before the answer), so a failed evolution costs no more requests than it must. A failed
evolution is returned as a :class:`Dropped` row (with its reason, the details in its lineage
under ``elimination``) and its parent goes back to the pool: the next epoch evolves the parent
again, as the paper does ("placed back as they are, in the hope of upgrading them successfully
in the next epoch").

Output: the original row (``keep_original``; answered if it has no ``completion`` yet), then
every successful evolution, each with ``id`` (:func:`derived_id`), ``prompt`` (the evolved
instruction), ``completion`` (its answer) and lineage under ``metadata[<stage name>]``: method,
step (the operation; ``seed`` for the original), epoch, parent_id, seed_id (the root), depth
(successful evolutions from the root), path (the operations from the root), model, template
version, and the equality verdict. ``parent_id`` links every row to the instruction it was
evolved from, so the tree can be rebuilt from ``data/`` and ``dropped/``. Evolved rows do not
inherit the parent's other columns (they describe the parent's instruction), only ``metadata``.

Sampling defaults are those of the WizardLM reference code (``openai_access.py``): temperature
1.0, top_p 0.95, max_tokens 2048 for rewriting and answering. The paper gives none for the
equality question; it is asked greedily (temperature 0) with a short limit, since it is a
verdict, not a sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, with_lineage
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.client import LLMClient

METHOD = "evol_instruct"

IN_DEPTH = (
    "add_constraints",
    "deepening",
    "concretizing",
    "increased_reasoning_steps",
    "complicate_input",
)
IN_BREADTH = "in_breadth"
OPERATIONS = (*IN_DEPTH, IN_BREADTH)

# Drop reasons, one per elimination rule (stable strings: the dataset card counts by reason).
NO_INFORMATION_GAIN = "no_information_gain"
SORRY_SHORT_RESPONSE = "sorry_short_response"
STOPWORDS_ONLY_RESPONSE = "stopwords_only_response"
COPIES_EVOLVING_PROMPT = "copies_evolving_prompt"
EMPTY_INSTRUCTION = "empty_instruction"
UNPARSED_VERDICT = "unparsed_equality_verdict"
EMPTY_ANSWER = "empty_answer"  # only for a kept original whose answer came back empty

# --- Prompt templates (our own words). The labels "#The Given Prompt#", "#Rewritten Prompt#",
# "#Given Prompt#" and "#Created Prompt#" are the paper's: its elimination rule 4 names them. ---

_DEPTH_HEAD = (
    "You are a prompt rewriter. Turn the prompt under #The Given Prompt# into a harder version, "
    "one that well-known AI assistants such as ChatGPT and GPT-4 would find somewhat more "
    "difficult to handle.\n"
    "The rewritten prompt must stay reasonable: a person must be able to understand it and "
    "answer it.\n"
    "Keep every part of the given prompt that is not plain prose, such as a table or code, and "
    "keep any input it contains.\n"
    "Make the prompt harder in this way:\n"
)
_DEPTH_TAIL = (
    "\nDo not make it wordy: the rewritten prompt may add only 10 to 20 words to the given "
    "prompt.\n"
    "The phrases '#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten "
    "prompt' must not appear in the rewritten prompt. Reply with the rewritten prompt only.\n"
    "\n#The Given Prompt#:\n{prompt}\n\n#Rewritten Prompt#:\n"
)
_DEPTH_METHODS = {
    "add_constraints": "Add one more constraint or requirement to it.",
    "deepening": (
        "If it asks about particular issues, make the inquiry about them deeper and broader."
    ),
    "concretizing": "Replace its general concepts with more specific ones.",
    "increased_reasoning_steps": (
        "If it can be solved with only a few simple steps of thinking, rewrite it so that it "
        "explicitly asks for reasoning in several steps."
    ),
    "complicate_input": (
        "Give it input data in this form: {input_format}. The rewritten prompt must include "
        "that data and ask for work on it."
    ),
}
_BREADTH_TEXT = (
    "You are a prompt creator. Take inspiration from the prompt under #Given Prompt# and write "
    "a brand-new prompt.\n"
    "The new prompt must belong to the same domain as the given one but be rarer: about "
    "something less common.\n"
    "Its length and difficulty should be close to those of the given prompt.\n"
    "It must be reasonable: a person must be able to understand it and answer it.\n"
    "The phrases '#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' must "
    "not appear in the new prompt. Reply with the new prompt only.\n"
    "\n#Given Prompt#:\n{prompt}\n\n#Created Prompt#:\n"
)
_EQUALITY_TEXT = (
    "Here are two instructions for an AI assistant. Decide whether they are equal, which "
    "means that both of these hold:\n"
    "1. They have the same constraints and requirements.\n"
    "2. They ask with the same depth and breadth.\n"
    "\nFirst instruction:\n{first}\n\nSecond instruction:\n{second}\n\n"
    "Answer with Equal or Not Equal only, without explaining."
)

TEMPLATES: dict[str, PromptTemplate] = {
    **{
        op: PromptTemplate(f"{METHOD}.{op}", _DEPTH_HEAD + _DEPTH_METHODS[op] + _DEPTH_TAIL)
        for op in IN_DEPTH
    },
    IN_BREADTH: PromptTemplate(f"{METHOD}.{IN_BREADTH}", _BREADTH_TEXT),
}
EQUALITY_TEMPLATE = PromptTemplate(f"{METHOD}.equality", _EQUALITY_TEXT)

# Forms of input data for "complicate input"; the paper's examples add data such as XML, SQL,
# code, HTML, shell commands, JSON, LaTeX, Markdown and formulas.
INPUT_FORMATS = (
    "XML data",
    "a SQL database table",
    "Python code",
    "an HTML page",
    "a shell command",
    "JSON data",
    "a LaTeX formula",
    "a Markdown table",
    "C++ code",
    "a CSV table",
)

# Rule 4: words of the evolving prompts that must not be copied into an instruction. Each
# "#...#" label contains one of these, so the labels are caught too.
COPIED_PHRASES = ("given prompt", "rewritten prompt", "created prompt")

# Rule 3's stop words: our own small list of English function words (no library here ships one
# without a download: nltk's needs its data package, scikit-learn is not a core dependency).
# Words are split at apostrophes before the lookup, hence fragments such as "don" and "t".
_STOP_WORD_TEXT = """
    a about above after again against all am an and any are aren as at be because been before
    being below between both but by can couldn could d did didn do does doesn doing don down
    during each few for from further had hadn has hasn have haven having he her here hers herself
    him himself his how i if in into is isn it its itself just ll m ma me mightn more most mustn
    my myself needn no nor not now o of off on once only or other our ours ourselves out over own
    re s same shan she should shouldn so some such t than that the their theirs them themselves
    then there these they this those through to too under until up ve very was wasn we were
    weren what when where which while who whom why will with won would wouldn y you your yours
    yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORD_TEXT.split())

_WORD = re.compile(r"[^\W_]+")
# A verdict word: "not equal" (also "isn't equal", "not-equal", "unequal") or "equal".
_VERDICT = re.compile(r"(?:\bnot|n['’]t)[\s_-]*equal\b|\bunequal\b|\bequal\b")
_ECHOED_CHOICE = re.compile(r"\bequal\s*(?:or|/)\s*not[\s_-]*equal\b")


def copied_phrase(instruction: str) -> str | None:
    """Rule 4: the evolving-prompt phrase ``instruction`` copies, if any (case-insensitive)."""
    lowered = instruction.lower()
    return next((phrase for phrase in COPIED_PHRASES if phrase in lowered), None)


def is_sorry_and_short(response: str, max_words: int = 80) -> bool:
    """Rule 2: the response contains "sorry" (any case) and has fewer than ``max_words`` words."""
    return "sorry" in response.lower() and len(response.split()) < max_words


def is_only_stopwords(response: str) -> bool:
    """Rule 3: the response has no word that is not a stop word (punctuation is not a word)."""
    return all(word in STOP_WORDS for word in _WORD.findall(response.lower()))


def parse_equality(text: str) -> Literal["equal", "not_equal"] | None:
    """Rule 1's verdict: ``equal``, ``not_equal``, or ``None`` when the text says neither.

    Case and extra words are tolerated ("Not equal.", "They are NOT EQUAL because ..."); the
    first verdict in the text wins, after removing an echo of the question's choice ("Equal or
    Not Equal"), which names both.
    """
    lowered = _ECHOED_CHOICE.sub(" ", text.lower())
    match = _VERDICT.search(lowered)
    if match is None:
        return None
    return "equal" if match.group(0) == "equal" else "not_equal"


@dataclass(frozen=True)
class _Node:
    """An instruction of the evolution tree: what the next epoch evolves."""

    id: str
    text: str
    depth: int
    path: tuple[str, ...]


@register_stage
class EvolInstruct(RowStage):
    """The Evol-Instruct stage; from Python, e.g.
    ``Pipeline([EvolInstruct(epochs=4, answer_backend="teacher")], input=rows, backends=...)``.

    Operations missing from ``operations`` (or weighted 0) are never picked.
    """

    type: Literal["evol_instruct"] = "evol_instruct"
    backend: str = Field(
        default="default", description="Backend that rewrites instructions (the evolver)."
    )
    answer_backend: str | None = Field(
        default=None, description="Backend that answers evolved instructions; default: backend."
    )
    judge_backend: str | None = Field(
        default=None,
        description="Backend asked whether parent and child are Equal; default: backend.",
    )
    column: str = Field(default="prompt", description="The column holding the instruction.")
    epochs: int = Field(default=4, ge=1, le=64, description="Rounds of evolution (paper: 4).")
    operations: dict[str, float] = Field(
        default_factory=lambda: {op: 1.0 for op in OPERATIONS},
        description="Operations that may be picked, with weights (paper: all six, uniform).",
    )
    input_formats: list[str] = Field(
        default_factory=lambda: list(INPUT_FORMATS),
        min_length=1,
        description="Forms of input data that `complicate_input` adds (one picked per use).",
    )
    keep_original: bool = Field(default=True, description="Also output the original row.")
    on_unparsed_verdict: Literal["keep", "drop"] = Field(
        default="keep",
        description=(
            "When the equality answer says neither Equal nor Not Equal: keep the evolution "
            "(no evidence it lacks information gain) or drop it (`unparsed_equality_verdict`)."
        ),
    )
    sorry_max_words: int = Field(
        default=80, ge=1, description="Rule 2 drops a 'sorry' answer shorter than this."
    )
    temperature: float = Field(default=1.0, ge=0, le=2, description="Rewriting temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=2048, ge=1, description="Rewriting token limit.")
    answer_temperature: float = Field(default=1.0, ge=0, le=2)
    answer_top_p: float = Field(default=0.95, gt=0, le=1)
    answer_max_tokens: int = Field(default=2048, ge=1)
    judge_temperature: float = Field(default=0.0, ge=0, le=2)
    judge_max_tokens: int = Field(default=32, ge=1)
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; choose from {list(OPERATIONS)}")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("operation weights must be >= 0")
        if not any(weight > 0 for weight in value.values()):
            raise ValueError("at least one operation needs a weight above 0")
        return value

    def backend_names(self) -> set[str]:
        return {self.backend, self.answer_backend or self.backend,
                self.judge_backend or self.backend}

    def generated_columns(self) -> list[str]:
        return ["prompt", "completion"]

    def check_row(self, row: Row) -> str | None:
        if self.column not in row or row[self.column] is None:
            return f"the row needs a `{self.column}` column (the instruction); it has {sorted(row)}"
        value = row[self.column]
        if not isinstance(value, str):
            return f"`{self.column}` must be text, got {type(value).__name__}"
        if not value.strip():
            return f"`{self.column}` is empty"
        return None

    # --- choices ---

    def choose_operation(self, ctx: StageContext, seed_id: str, epoch: int) -> str:
        """The operation of ``epoch`` for the chain rooted at ``seed_id`` (reproducible)."""
        names = [op for op in OPERATIONS if self.operations.get(op, 0) > 0]
        weights = [self.operations[op] for op in names]
        return ctx.rng(seed_id, epoch).choices(names, weights=weights)[0]

    def rewrite_prompt(
        self, ctx: StageContext, seed_id: str, epoch: int, operation: str, instruction: str
    ) -> tuple[str, dict[str, Any]]:
        """The evolving prompt for ``operation``, and what was picked for it (for lineage)."""
        template = TEMPLATES[operation]
        if operation == "complicate_input":
            input_format = ctx.rng(seed_id, epoch, "input_format").choice(self.input_formats)
            return template.format(prompt=instruction, input_format=input_format), {
                "input_format": input_format
            }
        return template.format(prompt=instruction), {"input_format": None}

    # --- requests ---

    def _params(self, ctx: StageContext, temperature: float, top_p: float | None,
                max_tokens: int) -> GenerationParams:
        return GenerationParams(
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=self.seed if self.seed is not None else ctx.seed,
        )

    async def _ask(self, client: LLMClient, request: Request, what: str) -> Completion:
        # A request that still fails after the client's retries is let through, so the seed row
        # goes to failed/ (with what was being asked). It is not a failed *evolution*: the paper's
        # eliminator judges what the LLM wrote, and nothing was written. Recording it as a drop
        # would bake a passing server error into the tree; failing the row instead lets a rerun
        # finish the same tree (earlier answers come from the request cache).
        try:
            return await client.generate(request)
        except RequestFailed as failure:
            failure.args = (f"{what}: {failure.args[0]}",)
            raise

    async def _answer(self, ctx: StageContext, instruction: str, what: str) -> Completion:
        client = ctx.client(self.answer_backend or self.backend)
        params = self._params(ctx, self.answer_temperature, self.answer_top_p,
                              self.answer_max_tokens)
        request = Request(messages=[{"role": "user", "content": instruction}], params=params)
        return await self._ask(client, request, what)

    # --- the method ---

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        text: str = row[self.column]
        seed_id = row_id(row) or derived_id("seed", text)
        outputs: list[Row | Dropped] = []
        if self.keep_original:
            outputs.append(await self._original(row, ctx, seed_id, text))
        node = _Node(seed_id, text, 0, ())
        for epoch in range(1, self.epochs + 1):
            result = await self._evolve(row, ctx, seed_id, node, epoch)
            outputs.append(result)
            if isinstance(result, dict):  # success: the child is what the next epoch evolves
                lineage = result["metadata"][ctx.stage_name]
                node = _Node(result["id"], result["prompt"], lineage["depth"],
                             tuple(lineage["path"]))
            # else: the parent goes back to the pool and the next epoch evolves it again
        return outputs

    async def _original(
        self, row: Row, ctx: StageContext, seed_id: str, text: str
    ) -> Row | Dropped:
        out = dict(row)
        out["id"] = seed_id
        out.setdefault("prompt", text)
        model: str | None = None
        existing = out.get("completion")
        if not (isinstance(existing, str) and existing.strip()):
            answer = await self._answer(ctx, text, "answering the original instruction")
            out["completion"] = answer.text.strip()
            model = answer.model
        out = with_lineage(
            out, ctx.stage_name, method=METHOD, step="seed", parent_id=None, seed_id=seed_id,
            model=None, template=None, epoch=0, depth=0, path=[], answer_model=model,
            input_format=None, equality_template=None, judge=None, elimination=None,
        )
        if not out["completion"]:
            return Dropped(out, EMPTY_ANSWER)
        return out

    async def _evolve(
        self, row: Row, ctx: StageContext, seed_id: str, parent: _Node, epoch: int
    ) -> Row | Dropped:
        """One evolution of ``parent``: the evolved row, or a Dropped one saying which rule."""
        operation = self.choose_operation(ctx, seed_id, epoch)
        evolving_prompt, picked = self.rewrite_prompt(ctx, seed_id, epoch, operation, parent.text)
        params = self._params(ctx, self.temperature, self.top_p, self.max_tokens)
        # sample=epoch: a parent that failed and is evolved again with the same operation gets a
        # fresh sample, not the cached failure.
        request = Request(messages=[{"role": "user", "content": evolving_prompt}], params=params,
                          sample=epoch)
        what = f"epoch {epoch} ({operation})"
        rewrite = await self._ask(ctx.client(self.backend), request, f"{what}: rewriting")
        evolved = rewrite.text.strip()

        child: Row = {
            "id": derived_id("evol", seed_id, parent.id, epoch, operation, evolved),
            "prompt": evolved,
            "parent_prompt": parent.text,
        }
        lineage: dict[str, Any] = {
            "epoch": epoch,
            "depth": parent.depth + 1,
            "path": [*parent.path, operation],
            "equality_template": EQUALITY_TEMPLATE.version,
            "judge": None,
            "answer_model": None,
            "elimination": None,
            **picked,
        }

        def finish(reason: str | None, **details: Any) -> Row | Dropped:
            if reason is not None:
                lineage["elimination"] = {"rule": reason, **details}
            out = dict(child)
            if row.get("metadata"):
                out["metadata"] = row["metadata"]  # earlier stages' lineage of the seed
            out = with_lineage(
                out, ctx.stage_name, method=METHOD, step=operation, parent_id=parent.id,
                seed_id=seed_id, model=rewrite.model, template=TEMPLATES[operation], **lineage,
            )
            return out if reason is None else Dropped(out, reason)

        if not evolved:
            return finish(EMPTY_INSTRUCTION, finish_reason=rewrite.finish_reason)
        phrase = copied_phrase(evolved)
        if phrase is not None:  # rule 4
            return finish(COPIES_EVOLVING_PROMPT, phrase=phrase)

        judge = await self._ask(
            ctx.client(self.judge_backend or self.backend),
            Request(
                messages=[{"role": "user", "content": EQUALITY_TEMPLATE.format(
                    first=parent.text, second=evolved)}],
                params=self._params(ctx, self.judge_temperature, None, self.judge_max_tokens),
            ),
            f"{what}: equality check",
        )
        verdict = parse_equality(judge.text)
        # An answer that is neither Equal nor Not Equal is recorded as "unparsed"; by default the
        # evolution is kept (the paper eliminates on an Equal verdict, and this is none).
        lineage["judge"] = {"verdict": verdict or "unparsed", "text": judge.text,
                            "model": judge.model}
        if verdict == "equal":  # rule 1
            return finish(NO_INFORMATION_GAIN)
        if verdict is None and self.on_unparsed_verdict == "drop":
            return finish(UNPARSED_VERDICT)

        answer = await self._answer(ctx, evolved, f"{what}: answering")
        child["completion"] = answer.text.strip()
        lineage["answer_model"] = answer.model
        if is_sorry_and_short(child["completion"], self.sorry_max_words):  # rule 2
            return finish(SORRY_SHORT_RESPONSE, words=len(child["completion"].split()))
        if is_only_stopwords(child["completion"]):  # rule 3 (an empty answer too)
            return finish(STOPWORDS_ONLY_RESPONSE)
        return finish(None)
