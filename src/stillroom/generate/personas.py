"""Persona-driven prompts (PersonaHub, Chan et al. 2024; used for Tulu 3's prompts): the same
request for a prompt, conditioned on many different people, gives prompts as varied as the people.

    input: builtin:personas     # 60 short personas shipped with stillroom (id, persona)
    stages:
      - type: persona_prompts
        kinds: [general, math, code]
        per_kind: 1
      - type: complete          # then answer them

For each persona row and each kind, the model is asked (in a template of that kind) for one
prompt this person might write, and to output only the prompt. What comes back is cleaned (a
"Here is a prompt:" preamble, a label such as "Problem:", wrapping quotes and an appended solution
are removed) and checked: an empty, truncated or too short prompt, a refusal, or one that repeats
our instruction or talks about "the persona" instead of being the person's request is dropped
with its reason. Each prompt is one row: ``prompt``, ``persona``, ``kind``, with lineage (method
``personas``, step = kind, parent = the persona's id).
"""

from __future__ import annotations

import asyncio
import re
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, seed_id_of, with_lineage
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowStage, StageContext, register_stage

_INTRO = "Here is a short description of a person:\n\n{persona}\n\n"

# One template per kind, in our own words. Each asks for the prompt alone: no title, no answer.
TEMPLATES: dict[str, str] = {
    "general": _INTRO
    + "Think of something this person might ask an AI assistant for, a question or a task that "
    "fits their work, their daily life or their interests. Write that request exactly as they "
    "would type it, in their own voice. Reply with the request only: do not describe the person, "
    "do not add a heading and do not answer it.",
    "math": _INTRO
    + "Write a math word problem that this person could run into in their work or daily life. "
    "Solving it should take a few steps of reasoning, and it must have exactly one correct "
    "answer, a number or a short expression that can be checked. Reply with the problem only: "
    "do not add a heading, do not solve it and do not give the answer.",
    "code": _INTRO
    + "Write a programming task that this person might need done. Say what the program or "
    "function must do, what it takes as input and what it should return or print, and the "
    "language when it matters. Reply with the task only: do not add a heading and do not write "
    "the code.",
}

_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely)\b[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)|below is)\b[^\n:]*:\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^\s*[#*_]*\s*(?:the\s+)?(?:prompt|request|question|problem|task|word problem|math problem|"
    r"programming task|coding task|user request)\s*(?:\d+\s*)?[*_]*\s*:\s*[*_]*\s*",
    re.IGNORECASE,
)
_SOLUTION = re.compile(
    r"^\s*[#*_]*\s*(?:solution|answer|final answer|explanation)\s*[*_]*\s*:", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|as an ai\b|i'?m afraid|i am afraid"
    r"|i'?m (?:not able|unable)|i am (?:not able|unable))",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "`": "`"}
# Word n-grams this long shared with our own instruction mean the model repeated it.
_COPY_NGRAM = 6


@dataclass
class Cleaned:
    prompt: str
    drop_reason: str | None = None
    removed: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def clean_prompt(text: str, template: str, *, truncated: bool, min_words: int) -> Cleaned:
    """Remove what is not the prompt, then decide whether what is left is a usable prompt."""
    removed: list[str] = []
    prompt = text.strip()
    match = _PREAMBLE.match(prompt)
    if match:
        prompt = prompt[match.end() :].strip()
        removed.append("preamble")
    match = _LABEL.match(prompt)
    if match:
        prompt = prompt[match.end() :].strip()
        removed.append("label")
    lines = prompt.splitlines()
    for index, line in enumerate(lines):
        if index > 0 and _SOLUTION.match(line):
            prompt = "\n".join(lines[:index]).strip()
            removed.append("solution")
            break
    if len(prompt) >= 2 and _QUOTES.get(prompt[0]) == prompt[-1]:
        prompt = prompt[1:-1].strip()
        removed.append("quotes")
    result = Cleaned(prompt, None, removed)
    if not prompt:
        result.drop_reason = "only a preamble, no prompt" if removed else "empty prompt"
    elif truncated and "solution" not in removed:
        result.drop_reason = "prompt cut off at max_tokens"
    elif _REFUSAL.match(prompt):
        result.drop_reason = "refusal instead of a prompt"
    elif re.search(r"\bpersona\b|\bthis person\b", prompt, re.IGNORECASE):
        result.drop_reason = "leaked instruction: talks about the persona"
    elif _ngrams(_words(prompt), _COPY_NGRAM) & _ngrams(_words(template), _COPY_NGRAM):
        result.drop_reason = "leaked instruction: repeats the instruction it was given"
    elif len(prompt.split()) < min_words:
        words = len(prompt.split())
        result.drop_reason = f"prompt too short ({words} words < min_words {min_words})"
    return result


@register_stage
class PersonaPrompts(RowStage):
    type: Literal["persona_prompts"] = "persona_prompts"
    backend: str = Field(default="default", description="Backend that writes the prompts.")
    persona_column: str = Field(default="persona", description="Column holding the persona.")
    kinds: list[str] = Field(
        default_factory=lambda: ["general", "math", "code"],
        description="Kinds of prompt to write per persona: general, math, code, or your own "
        "with a template in `templates`.",
    )
    per_kind: int = Field(default=1, ge=1, le=32, description="Prompts per persona and kind.")
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Your template per kind (holding {persona}); overrides the built-in one.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int = Field(default=256, ge=1)
    min_words: int = Field(default=4, ge=1, description="Drop shorter prompts.")
    drop_truncated: bool = Field(
        default=True, description="Drop a prompt that ran into max_tokens (unfinished)."
    )
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")

    @field_validator("templates")
    @classmethod
    def _templates_hold_persona(cls, templates: dict[str, str]) -> dict[str, str]:
        for kind, text in templates.items():
            fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
            if fields != ["persona"]:
                raise ValueError(
                    f"templates.{kind} must hold {{persona}} once and no other {{field}} "
                    f"(found {fields}); write literal braces as {{{{ and }}}}"
                )
        return templates

    @model_validator(mode="after")
    def _known_kinds(self) -> PersonaPrompts:
        if not self.kinds:
            raise ValueError("kinds is empty; name at least one of general, math, code")
        known = set(TEMPLATES) | set(self.templates)
        unknown = [kind for kind in self.kinds if kind not in known]
        if unknown:
            raise ValueError(
                f"kinds {unknown} have no template; use {sorted(TEMPLATES)} or add "
                "`templates: {KIND: '... {persona} ...'}`"
            )
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds names a kind twice; use per_kind for more prompts per kind")
        return self

    def template(self, kind: str) -> PromptTemplate:
        return PromptTemplate(f"personas.{kind}", self.templates.get(kind) or TEMPLATES[kind])

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        return ["prompt"]

    def check_row(self, row: Row) -> str | None:
        column = self.persona_column
        if column not in row:
            return (
                f"the row has no `{column}` column (persona_column) to write prompts for; "
                f"it has {sorted(row)}"
            )
        value = row[column]
        if not isinstance(value, str):
            return f"`{column}` must be text, got {type(value).__name__}"
        if not value.strip():
            return f"`{column}` is empty"
        return None

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        client = ctx.client(self.backend)
        persona = str(row[self.persona_column]).strip()
        params = GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed if self.seed is not None else ctx.seed,
        )
        jobs = [(kind, sample) for kind in self.kinds for sample in range(self.per_kind)]
        requests = [
            Request(
                messages=[{"role": "user", "content": self.template(kind).format(persona=persona)}],
                params=params,
                sample=sample,
            )
            for kind, sample in jobs
        ]
        results = await asyncio.gather(*map(client.generate, requests), return_exceptions=True)
        parent_id = row_id(row) or derived_id("persona", persona)
        out: list[Row | Dropped] = []
        for (kind, sample), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                # Requests that did succeed are cached: a rerun asks only for the missing ones.
                if isinstance(result, RequestFailed) and len(jobs) > 1:
                    result.args = (f"{kind} prompt {sample}: {result.args[0]}",)
                raise result
            out.append(self._row(row, persona, parent_id, kind, sample, result, ctx))
        return out

    def _row(
        self,
        row: Row,
        persona: str,
        parent_id: str,
        kind: str,
        sample: int,
        completion: Completion,
        ctx: StageContext,
    ) -> Row | Dropped:
        template = self.template(kind)
        fixed_text = template.text.replace("{persona}", " ")
        cleaned = clean_prompt(
            completion.text,
            fixed_text,
            truncated=self.drop_truncated and completion.finish_reason == "length",
            min_words=self.min_words,
        )
        new: dict[str, Any] = dict(row)
        new.update(
            id=derived_id("persona", parent_id, kind, sample, cleaned.prompt),
            prompt=cleaned.prompt,
            persona=persona,
            kind=kind,
        )
        new = with_lineage(
            new,
            ctx.stage_name,
            method="personas",
            step=kind,
            parent_id=parent_id,
            seed_id=seed_id_of(row) or parent_id,
            model=completion.model or ctx.client(self.backend).backend.model,
            template=template,
            sample=sample,
            finish_reason=completion.finish_reason,
            removed=cleaned.removed,
            raw_prompt=completion.text,
        )
        if cleaned.drop_reason is not None:
            return Dropped(new, cleaned.drop_reason)
        return new
