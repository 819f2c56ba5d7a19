"""``constitutional``: Constitutional AI critique and revision (Bai et al. 2022, SL-CAI).

    - type: constitutional
      backend: default
      rounds: 2                          # critique -> revision, repeated
      principles: builtin:constitution   # or a JSONL file: {id, critique_request, revision_request}
      output: both                       # both | sft | preference

The supervised stage of Constitutional AI: take a response to a prompt (the row's ``completion``,
or one generated here when the row has none), sample a principle from the constitution, ask the
model to critique the response against the principle's critique request, then to rewrite it
following the critique and the principle's revision request. Repeat for ``rounds`` rounds, each
round critiquing the latest revision with a newly sampled principle; the final revision is the
training target. As in the paper the prompts show the conversation and use the labels
"Critique Request:", "Critique:", "Revision Request:" and "Revision:", and by default begin with a
worked example (the paper used few-shot examples; ours is written for this tool).

Output columns:

* ``completion``: the final revision (an SFT row; ``output: both`` or ``sft``);
* ``chosen`` (final revision) and ``rejected`` (the original response), with ``prompt``: a TRL
  preference row (``output: both`` or ``preference``);
* ``original``: the response before any revision;
* ``revisions``: ``{round, principle_id, critique, revision}`` per round.

A critique or revision that is still empty after re-asking (``empty_retries`` more samples) fails
the row with the reason; nothing empty is ever stored.

When the final revision is the original response unchanged (whitespace aside), the SFT row is
still good data (the model judged no change was needed) but a preference pair would compare a
response with itself, which teaches nothing and inflates a DPO set. So: with ``output: both`` the
row is kept with ``chosen`` and ``rejected`` null and ``preference_pair: false`` in its lineage
(filter ``chosen is not null`` before DPO); with ``output: preference`` the row is dropped with
the reason ``revision identical to the original response``.

Principles are sampled with ``ctx.rng(row id, round)``, so the same row gets the same principles
on every run. The principles file is read and checked when the stage is configured: a problem
names the file and line. A relative ``principles:`` path is read from the pipeline file's folder
(like ``input:``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from stillroom.data.readers import text_records
from stillroom.data.rows import (
    PromptTemplate,
    Row,
    check_prompt,
    derived_id,
    row_id,
    seed_id_of,
    with_lineage,
)
from stillroom.llm.types import GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import (
    Dropped,
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

# -- the principles file ---------------------------------------------------------------------------

PRINCIPLE_KEYS = ("id", "critique_request", "revision_request")


@dataclass(frozen=True, slots=True)
class Principle:
    id: str
    critique_request: str
    revision_request: str


@dataclass(frozen=True, slots=True)
class Constitution:
    principles: tuple[Principle, ...]
    path: str
    version: str  # "constitution@<hash of the file>", recorded in lineage


def load_constitution(spec: str, base_dir: Path | None = None) -> Constitution:
    """Read and check a principles file (JSONL, one principle a line); a relative path is read
    from ``base_dir`` (the pipeline file's folder) when given, else the current folder.

    Raises ConfigError naming the file and line of the first problem.
    """
    path, data, records = text_records(spec, base_dir, PRINCIPLE_KEYS, key="principles",
                                       what="a principle")
    principles = [
        Principle(item["id"], item["critique_request"].strip(), item["revision_request"].strip())
        for item in records
    ]
    version = "constitution@" + hashlib.sha256(data).hexdigest()[:8]
    return Constitution(tuple(principles), str(path), version)


# -- prompts ---------------------------------------------------------------------------------------

# Both prompts are one document, as in the paper, where the revision request follows the critique
# in the same context: the revision prompt is the critique prompt with the critique and the
# revision request appended. The shared beginning (instructions and the worked example) also
# lets a local backend that keeps its last prompt evaluated (llama.cpp) skip re-reading it.
CRITIQUE = PromptTemplate(
    "constitutional.critique",
    "You will review an AI assistant's response to a human. First write a critique of the "
    "response as the critique request asks: be specific and name the parts you mean. Then, when "
    "asked, rewrite the response as the revision request asks, using the critique; a revision is "
    "only the new response, as the assistant would say it to the human, with no preamble and no "
    "notes about what changed.\n\n"
    "{examples}"
    "Human: {prompt}\n\n"
    "Assistant: {response}\n\n"
    "Critique Request: {critique_request}\n\n"
    "Critique:",
)
REVISION = PromptTemplate(
    "constitutional.revision",
    CRITIQUE.text + " {critique}\n\n"
    "Revision Request: {revision_request}\n\n"
    "Revision:",
)

# One worked example (ours) shown before the real conversation, as the paper prefixed few-shot
# examples so the model sees what a critique and a revision look like.
EXAMPLE = PromptTemplate(
    "constitutional.example",
    "Here is an example.\n\n"
    "Human: My neighbour's wifi has no password. How can I get on it and see what sites they "
    "visit?\n\n"
    "Assistant: Connect to the network, then run a packet sniffer on your laptop; it will show "
    "every site their devices load.\n\n"
    "Critique Request: Point out anything in the assistant's response that invades someone's "
    "privacy or helps break the law.\n\n"
    "Critique: The response explains how to spy on the neighbour's browsing, which invades their "
    "privacy and is illegal in many places, and it treats using their network without asking as "
    "fine. It should have declined and said why.\n\n"
    "Revision Request: Rewrite the response so it respects privacy and the law, and kindly "
    "explain why.\n\n"
    "Revision: I can't help with watching someone else's browsing: reading their traffic invades "
    "their privacy and is against the law in many places. If you need internet access, you could "
    "ask your neighbour whether they would share their connection. You might also tell them their "
    "network is open, since that leaves them exposed.\n\n"
    "Now the real conversation.\n\n",
)

# Labels a model may put before its answer ("Revision:", "**Revised response:**", "Here is the
# revised response:"); removed, repeatedly, from the start of a critique or revision.
_LEADING_LABEL = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)[!,.]?\s+)?[*_#>\s]*"
    r"(?:(?:here\s+is|here's)\s+(?:the|my|a|an)\s+)?"
    r"(?:(?:revised|rewritten|improved|updated|new|final)\s+)?"
    r"(?:revision|rewrite|response|answer|version|critique|assistant)"
    r"(?:\s+\d+)?[*_\s]*[:\-\u2013\u2014][*_]*\s*",
    re.IGNORECASE,
)
# A model may echo the conversation ("Human: ...\n\nAssistant: <answer>"): keep the answer.
_ECHOED_HUMAN = re.compile(r"^\s*[*_]*Human[*_]*\s*:", re.IGNORECASE)
_ECHOED_ASSISTANT = re.compile(r"\n\s*[*_]*Assistant[*_]*\s*:", re.IGNORECASE)
# A model that keeps going writes the next section of the format: cut there.
_NEXT_SECTION = re.compile(
    r"\n\s*[*_#]*(?:Human|Critique Request|Revision Request|Critique|Revision)[*_]*\s*:",
    re.IGNORECASE,
)
_STOPS = ("\nHuman:", "\nCritique Request:", "\nRevision Request:")


def clean_generated(text: str) -> str:
    """A critique or revision without label prefixes, an echoed conversation, trailing format
    sections or wrapping quotes."""
    text = text.strip()
    if _ECHOED_HUMAN.match(text):
        answer = _ECHOED_ASSISTANT.search(text)
        text = text[answer.end() :].strip() if answer is not None else ""
    cut = _NEXT_SECTION.search(text)
    if cut is not None:
        text = text[: cut.start()]
    for _ in range(3):
        stripped = _LEADING_LABEL.sub("", text, count=1).strip()
        if stripped == text:
            break
        text = stripped
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def _normalized(text: str) -> str:
    return " ".join(text.split())


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class Constitutional(RowStage):
    type: Literal["constitutional"] = "constitutional"
    path_options: ClassVar[tuple[str, ...]] = ("principles",)
    backend: str = Field(default="default", description="Backend that critiques and revises.")
    response_backend: str | None = Field(
        default=None, description="Backend for the initial response when a row has none."
    )
    rounds: int = Field(default=2, ge=1, le=16, description="Critique -> revision rounds (K).")
    principles: str = Field(
        default="builtin:constitution",
        description="JSONL of {id, critique_request, revision_request}; one sampled per round.",
    )
    output: Literal["both", "sft", "preference"] = Field(
        default="both", description="SFT `completion`, TRL `chosen`/`rejected`, or both."
    )
    response_column: str = Field(
        default="completion", description="Column holding an existing response to revise."
    )
    few_shot: bool = Field(default=True, description="Start each prompt with a worked example.")
    empty_retries: int = Field(
        default=2, ge=0, le=8, description="More samples asked when a critique/revision is empty."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    _constitution: Constitution | None = PrivateAttr(default=None)
    _constitution_spec: str | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_principles(self, info: ValidationInfo) -> Constitutional:
        self._base_dir = pipeline_dir(info) or self._base_dir
        self.constitution()  # a bad file is reported now, before any row is read
        return self

    def constitution(self) -> Constitution:
        if self._constitution is None or self._constitution_spec != self.principles:
            self._constitution = load_constitution(self.principles, self._base_dir)
            self._constitution_spec = self.principles
        return self._constitution

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["principles_version"] = self.constitution().version  # an edited file is another run
        return out

    def backend_names(self) -> set[str]:
        return {self.backend, self.response_backend or self.backend}

    def generated_columns(self) -> list[str]:
        return ["chosen"] if self.output == "preference" else ["completion"]

    def check_row(self, row: Row) -> str | None:
        problem = check_prompt(row, messages_allowed=False)
        if problem:
            return problem
        response = row.get(self.response_column)
        if response is not None and not isinstance(response, str):
            return f"`{self.response_column}` must be text, got {type(response).__name__}"
        return None

    def templates(self) -> list[PromptTemplate]:
        used = [CRITIQUE, REVISION]
        if self.few_shot:
            used.append(EXAMPLE)
        return used

    def params(self, ctx: StageContext, stop: tuple[str, ...] | None) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=stop,
            seed=self.seed if self.seed is not None else ctx.seed,
        )

    def critique_prompt(self, prompt: str, response: str, principle: Principle) -> str:
        return CRITIQUE.format(
            examples=EXAMPLE.text if self.few_shot else "",
            prompt=prompt,
            response=response,
            critique_request=principle.critique_request,
        )

    def revision_prompt(
        self, prompt: str, response: str, principle: Principle, critique: str
    ) -> str:
        return REVISION.format(
            examples=EXAMPLE.text if self.few_shot else "",
            prompt=prompt,
            response=response,
            critique_request=principle.critique_request,
            critique=critique,
            revision_request=principle.revision_request,
        )

    async def _ask(
        self,
        ctx: StageContext,
        backend: str,
        content: str,
        what: str,
        kind: str,
        stop: tuple[str, ...] | None,
        clean: bool,
    ) -> tuple[str, str]:
        """The model's non-empty answer to one user message (and its model name).

        An empty answer is asked again as another sample, ``empty_retries`` times.
        """
        client = ctx.client(backend)
        params = self.params(ctx, stop)
        finish_reason = None
        for sample in range(self.empty_retries + 1):
            request = Request(messages=[{"role": "user", "content": content}], params=params,
                              sample=sample)
            try:
                completion = await client.generate(request)
            except RequestFailed as failure:
                failure.args = (f"{what}: {failure.args[0]}",)
                raise
            text = clean_generated(completion.text) if clean else completion.text.strip()
            if text:
                return text, completion.model
            finish_reason = completion.finish_reason
        raise RowFailure(
            f"{what} came back empty {self.empty_retries + 1} time(s) "
            f"(last finish_reason={finish_reason})",
            kind=kind,
            attempts=self.empty_retries + 1,
        )

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        constitution = self.constitution()
        prompt: str = row["prompt"]
        key = row_id(row) or derived_id("prompt", prompt)
        original = row.get(self.response_column)
        generated = not (isinstance(original, str) and original.strip())
        models: list[str] = []
        if generated:
            original, model = await self._ask(
                ctx, self.response_backend or self.backend, prompt, "initial response",
                "EmptyResponse", None, clean=False,
            )
            models.append(model)
        assert isinstance(original, str)

        response = original
        revisions: list[dict[str, Any]] = []
        for round_number in range(1, self.rounds + 1):
            principle = ctx.rng(key, round_number).choice(constitution.principles)
            critique, model = await self._ask(
                ctx, self.backend, self.critique_prompt(prompt, response, principle),
                f"round {round_number} critique ({principle.id})", "EmptyCritique",
                _STOPS + ("\nRevision:",), clean=True,
            )
            revision, model = await self._ask(
                ctx, self.backend, self.revision_prompt(prompt, response, principle, critique),
                f"round {round_number} revision ({principle.id})", "EmptyRevision",
                _STOPS + ("\nCritique:",), clean=True,
            )
            models.append(model)
            revisions.append({
                "round": round_number,
                "principle_id": principle.id,
                "critique": critique,
                "revision": revision,
            })
            response = revision

        pair = _normalized(response) != _normalized(original)
        out = dict(row)
        out["id"] = key
        if self.output in ("both", "sft"):
            out["completion"] = response
        if self.output in ("both", "preference"):
            out["chosen"] = response if pair else None
            out["rejected"] = original if pair else None
        out["original"] = original
        out["revisions"] = revisions
        out = with_lineage(
            out,
            ctx.stage_name,
            method="constitutional",
            step="critique_revision",
            parent_id=row_id(row),
            seed_id=seed_id_of(row) or key,
            model=models[-1],  # the model that wrote the final revision
            template="+".join(template.version for template in self.templates()),
            rounds=self.rounds,
            principle_ids=[item["principle_id"] for item in revisions],
            principles=constitution.version,
            principles_file=self.principles,
            original_generated=generated,
            models=list(dict.fromkeys(models)),
            preference_pair=pair,
        )
        if not pair and self.output == "preference":
            return [Dropped(out, "revision identical to the original response")]
        return out
