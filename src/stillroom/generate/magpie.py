"""Magpie (Xu et al. 2024): an aligned model, given only the start of a user turn, writes a user
instruction; the same model then answers it.

    input: {rows: 100}          # one instruction per input row
    stages:
      - type: magpie
        system: "You are a patient maths tutor."   # optional; default: the template's own

The instruction request is a RAW prompt holding exactly what the model's chat template renders
before the user's text (its *pre-query prefix*): for ChatML without a system prompt
``<|im_start|>user\\n``; for SmolLM2, whose template inserts its own default system prompt when
none is given, that system turn too. It is sampled at temperature 1.0 and top_p 1.0 (the paper's
settings) and stops at the template's end-of-turn marker and, as the reference's ``gen_ins.py``
does by default, at the first newline (``stop_at_newline``, its ``--early_stopping``) and at the
word ``assistant`` (``stop_at_assistant``, its ``stop_tokens_assistant``: an answer that begins
right after a header the model skipped). Both are on by default; the newline stop keeps
instructions to one line, so turn it off for multi-line tasks (code, data to work on). The answer
goes through the ordinary chat path, greedily (temperature 0, as in the paper).

An answer that runs into ``response_max_tokens`` (finish_reason ``length``) is unfinished. The
reference keeps it (``gen_res.py`` never looks at the finish reason); here it is kept too but
flagged, ``response_truncated: true`` on the row (``truncated_response: flag``, the default), or
moved to ``dropped/`` with its reason (``truncated_response: drop``). An *instruction* that runs
into ``max_tokens`` is dropped (``drop_truncated``), where the reference keeps whatever text came.

The prefix is found by rendering the backend's chat template around a sentinel user message and
cutting at the sentinel, so any template works and nothing is hard-coded per model. A backend that
cannot render its template (an OpenAI-compatible server applies it out of sight) needs
``pre_query_template``: the prefix text itself, or a preset name (see :data:`PRESETS`).

``turns: K`` (K > 1) makes conversations, the paper's multi-turn extension: after the first
instruction and answer, the next instruction is sampled from the chat template's rendering of the
conversation so far followed by the pre-query prefix of a new user turn (rendered around the
sentinel as above, or, with a preset, the preset's turn headers), and answered through the chat
path with the whole conversation. Such rows hold ``messages`` (system?, then user/assistant
alternating, K exchanges) instead of ``prompt``/``completion``, and ``metadata[<stage>].turns``
records each turn's backend, model, template, system digest, seed and finish reason. A
conversation is kept whole or not at all: an instruction of a later turn that the cleaning drops,
an empty answer or an answer cut at ``response_max_tokens`` (whatever ``truncated_response``
says) drops it with the reason and the turn, and a request that fails after its retries sends it
to ``failed/``. ``turns: 1`` (the default) writes exactly what a single-turn run always has.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field, PrivateAttr

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, seed_id_of, with_lineage
from stillroom.errors import ConfigError
from stillroom.generate.conversation import (
    FORMAT_COLUMNS,
    failed_turn,
    turn_line,
    turn_record,
    turn_summary,
)
from stillroom.llm.types import Completion, GenerationParams, Message, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import Backend, BackendConfig

# A user message no template rewrites (no spaces to trim, no markup) and no text contains.
SENTINEL = "MagpieSentinelQuery7c1e"


@dataclass(frozen=True)
class Preset:
    """A chat template's pre-query prefix, for backends that cannot render their template.

    ``with_system`` holds ``{system}`` where a custom system prompt goes; ``plain`` is the prefix
    the template renders when no system prompt is given (with its own default, if it has one).
    """

    plain: str
    with_system: str
    end_of_turn: str
    # How the template renders a finished turn, for a conversation's later pre-query prefixes:
    # ``user_header`` + text + ``end_of_turn`` + ``separator`` (and the same for the assistant).
    user_header: str = "<|im_start|>user\n"
    assistant_header: str = "<|im_start|>assistant\n"
    separator: str = "\n"


# The texts as each family's published chat template renders them.
PRESETS: dict[str, Preset] = {
    "chatml": Preset(
        "<|im_start|>user\n",
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    ),
    # SmolLM2 (ChatML with its own default system prompt), e.g. behind a llama.cpp server.
    "smollm2": Preset(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    ),
    "qwen2": Preset(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    ),
    "qwen2.5": Preset(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    ),
    # Llama 3 (3.0): the BOS text is part of what the template renders.
    "llama3": Preset(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "",
    ),
    "phi3": Preset("<|user|>\n", "<|system|>\n{system}<|end|>\n<|user|>\n", "<|end|>",
                   "<|user|>\n", "<|assistant|>\n"),
    # Gemma has no system role: its template puts the system text at the top of the user turn.
    "gemma": Preset(
        "<bos><start_of_turn>user\n", "<bos><start_of_turn>user\n{system}\n\n", "<end_of_turn>",
        "<start_of_turn>user\n", "<start_of_turn>model\n",
    ),
}

# Text shaped like a chat template's special tokens: <|im_start|>, <|eot_id|>, <end_of_turn>,
# [INST], </s>. An instruction that contains one has run past its own turn.
TEMPLATE_MARKER = re.compile(
    r"<\|[A-Za-z0-9_.:-]{1,40}\|>|<(?:start|end)_of_turn>|\[/?INST\]|</?s>|<bos>|<eos>"
)
# The reference (magpie-align/magpie, configs/model_configs.json) adds this stop string to every
# model's instruction request (its `stop_tokens_assistant`). Matched as written, so it also ends an
# instruction that merely uses the word; stop_at_assistant turns it off.
ASSISTANT_STOP = "assistant"
_ROLE_HEADER = re.compile(r"^\s*(?:user|assistant|system|human|gpt)\s*:?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PreQuery:
    """The raw prompt an instruction is sampled from, and what ends the user's turn."""

    prefix: str
    end_of_turn: str | None
    template: str  # name@hash, recorded in lineage

    @property
    def visible_lines(self) -> list[str]:
        """The prefix's own words (a system prompt), which an instruction must not repeat."""
        text = TEMPLATE_MARKER.sub("\n", self.prefix)
        return [line.strip() for line in text.splitlines() if len(line.strip()) >= 20]


def prequery_from_rendered(rendered: str, source: str) -> PreQuery:
    """Cut a chat template's rendering of ``[..., user: SENTINEL]`` at the sentinel.

    ``rendered`` is rendered without the assistant turn opened, so what follows the sentinel is
    exactly the template's end of a user turn (``<|im_end|>``, ``<|eot_id|>``...).
    """
    if rendered.count(SENTINEL) != 1:
        raise ValueError(
            "the chat template did not place the user's text verbatim once; "
            "set pre_query_template to the text it renders before the user's message"
        )
    prefix, after = rendered.split(SENTINEL)
    if not prefix:
        raise ValueError("the chat template renders nothing before the user's text")
    # Its first line: a template may add more after the marker (a newline, the next header).
    end_of_turn = after.strip().split("\n", 1)[0].strip() or None
    return PreQuery(prefix, end_of_turn, PromptTemplate(source, prefix).version)


def prequery_from_config(template: str, system: str | None) -> PreQuery:
    """A preset name or an explicit prefix text."""
    preset = PRESETS.get(template)
    if preset is None:
        if system is not None:
            raise ValueError("an explicit pre_query_template already holds its system prompt")
        # The end-of-turn marker of an unknown template is unknown: the cleaning still cuts an
        # instruction at anything shaped like a template marker.
        return PreQuery(template, None, PromptTemplate("magpie.explicit", template).version)
    text = preset.plain if system is None else preset.with_system.format(system=system)
    return PreQuery(text, preset.end_of_turn, PromptTemplate(f"magpie.{template}", text).version)


@dataclass(frozen=True)
class Cleaned:
    instruction: str
    drop_reason: str | None


def clean_instruction(
    text: str, prequery: PreQuery, *, truncated: bool, min_words: int, stops: list[str]
) -> Cleaned:
    """Strip, cut at any leaked template marker, and decide whether the instruction is usable."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    marker = TEMPLATE_MARKER.search(text)
    if marker is not None:
        cut = min(cut, marker.start())
    was_cut = cut < len(text)
    instruction = text[:cut].strip()
    if not instruction:
        if was_cut and text[cut:].strip() and not any(text[cut:].startswith(s) for s in stops):
            return Cleaned("", "leaked template: the instruction starts with template markup")
        return Cleaned("", "empty instruction")
    if truncated and not was_cut:
        return Cleaned(instruction, "instruction cut off at max_tokens")
    first_line = instruction.splitlines()[0]
    if _ROLE_HEADER.match(first_line):
        return Cleaned(instruction, f"leaked template: starts with a role header {first_line!r}")
    lowered = instruction.lower()
    for line in prequery.visible_lines:
        if line.lower() in lowered:
            return Cleaned(instruction, "leaked template: repeats the template's system prompt")
    words = len(instruction.split())
    if words < min_words:
        reason = f"instruction too short ({words} words < min_words {min_words})"
        return Cleaned(instruction, reason)
    return Cleaned(instruction, None)


@register_stage
class Magpie(RowStage):
    type: Literal["magpie"] = "magpie"
    backend: str = Field(default="default", description="Backend that writes the instruction.")
    response_backend: str | None = Field(
        default=None, description="Backend that answers it; default: the same (as in the paper)."
    )
    system: str | None = Field(
        default=None,
        description="System prompt put in the prefix (and the answer's messages); default: none, "
        "so the template's own default system prompt, if it has one, is used.",
    )
    pre_query_template: str | None = Field(
        default=None,
        description="The prefix text, or a preset (" + ", ".join(PRESETS) + "); default: derived "
        "from the backend's chat template (needed for servers, which cannot render it here).",
    )
    temperature: float = Field(default=1.0, ge=0, le=2, description="Instruction; paper: 1.0.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Instruction; paper: 1.0.")
    max_tokens: int = Field(default=256, ge=1, description="Instruction length cap.")
    stop: list[str] | None = Field(
        default=None, description="Instruction stop strings; default: the end-of-turn marker. "
        "stop_at_newline and stop_at_assistant add theirs to these."
    )
    stop_at_newline: bool = Field(
        default=True,
        description="End the instruction at its first newline (the reference's early stopping, "
        "on by default there); turn off for multi-line instructions.",
    )
    stop_at_assistant: bool = Field(
        default=True,
        description=f"End the instruction at {ASSISTANT_STOP!r}, as the reference does for every "
        "model (an answer that starts after a skipped assistant header).",
    )
    min_words: int = Field(default=3, ge=1, description="Drop shorter instructions.")
    drop_truncated: bool = Field(
        default=True, description="Drop an instruction that ran into max_tokens (unfinished)."
    )
    response_temperature: float = Field(default=0.0, ge=0, le=2, description="Paper: greedy.")
    response_top_p: float | None = Field(default=None, gt=0, le=1)
    response_max_tokens: int | None = Field(default=1024, ge=1)
    truncated_response: Literal["flag", "drop"] = Field(
        default="flag",
        description="An answer cut at response_max_tokens: flag keeps the row (as the reference "
        "does) with response_truncated: true; drop moves it to dropped/ with the reason.",
    )
    seed: int | None = Field(
        default=None, description="Mixed into each row's seed; default: the pipeline seed alone."
    )
    messages: bool = Field(
        default=False,
        description="Also write `messages` (system?, user, assistant); with turns above 1 they "
        "are always written, in place of prompt/completion.",
    )
    turns: int = Field(
        default=1, ge=1, le=64,
        description="Exchanges per row; above 1, conversations in `messages` (the paper's "
        "multi-turn extension) instead of prompt/completion.",
    )

    # The prefix found per backend instance: the template is rendered once per run.
    _prequeries: weakref.WeakKeyDictionary[Backend, PreQuery] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )

    def backend_names(self) -> set[str]:
        return {self.backend, self.response_backend or self.backend}

    def generated_columns(self) -> list[str]:
        if self.turns > 1:
            return ["messages", "messages:user"]  # the queries are written too (report.diversity)
        flag = ["response_truncated"] if self.truncated_response == "flag" else []
        return ["prompt", "completion", *flag]

    def summary_columns(self) -> list[str]:
        return ["messages"] if self.turns > 1 else []

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        return turn_summary(rows) if self.turns > 1 else {}

    def result_line(self, figures: dict[str, Any]) -> str | None:
        return turn_line(self.name or self.type, figures)

    def instruction_stops(self, prequery: PreQuery) -> list[str]:
        """The instruction request's stop strings: ``stop`` (default: the end-of-turn marker),
        then the newline and the assistant word when those switches are on."""
        stops = list(self.stop) if self.stop is not None else (
            [prequery.end_of_turn] if prequery.end_of_turn else []
        )
        extras = (("\n", self.stop_at_newline), (ASSISTANT_STOP, self.stop_at_assistant))
        for extra, wanted in extras:
            if wanted and extra not in stops:
                stops.append(extra)
        return stops

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        backend_class = configs[self.backend].backend_class()
        if not backend_class.supports_raw_prompt:
            raise ConfigError(
                f"magpie sends a raw prompt (the chat template's pre-query prefix) and backend "
                f"{self.backend!r} ({backend_class.kind}) accepts only chat messages; use a "
                "llama.cpp, transformers or OpenAI-compatible backend",
                key="backend",
            )
        if self.pre_query_template is None and not backend_class.renders_chat_template:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) applies its chat template out "
                "of sight, so the pre-query prefix cannot be derived; set pre_query_template to "
                "the text the template renders before the user's message, or to a preset: "
                + ", ".join(PRESETS),
                key="pre_query_template",
            )
        if self.pre_query_template is not None:
            try:
                prequery_from_config(self.pre_query_template, self.system)
            except ValueError as error:
                raise ConfigError(str(error), key="pre_query_template") from None
            if self.turns > 1 and self.pre_query_template not in PRESETS:
                raise ConfigError(
                    "turns above 1 render the conversation so far before each new prefix, which "
                    "an explicit pre_query_template text cannot do; use a preset ("
                    + ", ".join(PRESETS) + ") or a backend that renders its chat template",
                    key="turns",
                )

    def check_row(self, row: Row) -> str | None:
        if row.get("id") is None:
            return (
                "magpie needs an `id` on every row (each row's seed comes from it); "
                "use `input: {rows: N}` for N instructions"
            )
        return None

    async def prequery(self, backend: Backend) -> PreQuery:
        """The pre-query prefix for ``backend``: configured, or cut from its chat template."""
        found = self._prequeries.get(backend)
        if found is not None:
            return found
        try:
            if self.pre_query_template is not None:
                found = prequery_from_config(self.pre_query_template, self.system)
            else:
                messages: list[Message] = [{"role": "user", "content": SENTINEL}]
                if self.system is not None:
                    messages.insert(0, {"role": "system", "content": self.system})
                rendered = await backend.render_chat_template(
                    messages, add_generation_prompt=False
                )
                found = prequery_from_rendered(rendered, "magpie.chat_template")
        except ValueError as error:  # also jinja's "System role not supported" and the like
            raise RowFailure(f"pre-query prefix: {error}", kind="ChatTemplateError") from error
        self._prequeries[backend] = found
        return found

    def row_seed(self, row: Row, ctx: StageContext) -> int:
        """A seed for this row alone, so N rows give N different instructions reproducibly
        (the seed is part of the request cache key: no two rows share an answer)."""
        key = row_id(row) or orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str).decode()
        return ctx.rng("instruction", self.seed, key).getrandbits(31)

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        client = ctx.client(self.backend)
        prequery = await self.prequery(client.backend)
        stops = self.instruction_stops(prequery)
        seed = self.row_seed(row, ctx)
        asked = await client.generate(
            Request(prompt=prequery.prefix, params=self._instruction_params(stops, seed))
        )
        cleaned = clean_instruction(
            asked.text,
            prequery,
            truncated=self.drop_truncated and asked.finish_reason == "length",
            min_words=self.min_words,
            stops=stops,
        )
        source_id = row_id(row)
        # Rows of `input: {rows: N}` hold only an id: the instruction comes from nothing.
        parent_id = source_id if set(row) - {"id", "metadata"} else None
        out = dict(row)
        out["id"] = derived_id("magpie", source_id, seed, cleaned.instruction)
        out["prompt"] = cleaned.instruction
        lineage: dict[str, Any] = {
            "method": "magpie",
            "parent_id": parent_id,
            "seed_id": out["id"] if parent_id is None else seed_id_of(row),
            "model": asked.model or client.backend.model,
            "template": prequery.template,
            "input_id": source_id,
            "seed": seed,
            "instruction_finish_reason": asked.finish_reason,
            "raw_instruction": asked.text,
        }
        if cleaned.drop_reason is not None:
            dropped = with_lineage(out, ctx.stage_name, step="instruction", **lineage)
            return [Dropped(dropped, cleaned.drop_reason)]
        asking: list[Message] = [{"role": "user", "content": cleaned.instruction}]
        answer = await self._answer(asking, seed, ctx)
        lineage["response_model"] = answer.model or client.backend.model
        lineage["response_finish_reason"] = answer.finish_reason
        if self.turns > 1:
            talk = [*asking, {"role": "assistant", "content": answer.text}]
            first = [asked, answer]
            return [await self._conversation(out, lineage, talk, first, prequery, stops, ctx)]
        out["completion"] = answer.text
        truncated = answer.finish_reason == "length"
        if self.truncated_response == "flag":
            out["response_truncated"] = truncated
        if self.messages:
            out["messages"] = [
                *self._system_messages(),
                {"role": "user", "content": cleaned.instruction},
                {"role": "assistant", "content": answer.text},
            ]
        done = with_lineage(out, ctx.stage_name, step="response", **lineage)
        if not answer.text.strip():
            return [Dropped(done, f"empty response (finish_reason={answer.finish_reason})")]
        if truncated and self.truncated_response == "drop":
            limit = self.response_max_tokens
            at = f"response_max_tokens ({limit})" if limit else "the backend's max_tokens"
            return [Dropped(done, f"response cut off at {at}")]
        return [done]

    def _system_messages(self) -> list[Message]:
        return [] if self.system is None else [{"role": "system", "content": self.system}]

    def _instruction_params(self, stops: list[str], seed: int) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(stops) or None,
            seed=seed,
        )

    async def _answer(self, talk: list[Message], seed: int, ctx: StageContext) -> Completion:
        """The answer to the conversation ``talk`` (user first, ending with a user turn)."""
        client = ctx.client(self.response_backend or self.backend)
        return await client.generate(
            Request(
                messages=[*self._system_messages(), *talk],
                params=GenerationParams(
                    temperature=self.response_temperature,
                    top_p=self.response_top_p,
                    max_tokens=self.response_max_tokens,
                    seed=seed,
                ),
            )
        )


    # -- the multi-turn extension ------------------------------------------------------------------

    async def _conversation(
        self, out: Row, lineage: dict[str, Any], talk: list[Message], first: list[Completion],
        prequery: PreQuery, stops: list[str], ctx: StageContext,
    ) -> Row | Dropped:
        """Turns 2..K after the first exchange in ``talk``: the whole conversation, kept, or
        dropped with the turn that spoiled it (a failed request fails it: see the module)."""
        client = ctx.client(self.backend)
        responder = self.response_backend or self.backend
        seed = lineage["seed"]
        records = [
            turn_record(1, "user", backend=self.backend, model=lineage["model"],
                        template=prequery.template, system=self.system, seed=seed,
                        finish_reason=first[0].finish_reason),
            turn_record(1, "assistant", backend=responder, model=lineage["response_model"],
                        system=self.system, seed=seed, finish_reason=first[1].finish_reason),
        ]
        problem = self._answer_problem(first[1], 1)
        turn = 1
        while problem is None and turn < self.turns:
            turn += 1
            seed = ctx.rng("instruction", self.seed, lineage["input_id"], turn).getrandbits(31)
            prefix = await self._turn_prefix(client.backend, prequery, talk, turn)
            asked = await self._turn(client.generate(
                Request(prompt=prefix, params=self._instruction_params(stops, seed))
            ), turn, "user")
            records.append(turn_record(
                turn, "user", backend=self.backend, model=asked.model or client.backend.model,
                template=prequery.template, system=self.system, seed=seed,
                finish_reason=asked.finish_reason,
            ))
            # Cleaned against the first turn's prefix: its system prompt is what must not leak
            # (the conversation's own earlier lines are in this turn's prefix too).
            cleaned = clean_instruction(
                asked.text, prequery, truncated=self.drop_truncated
                and asked.finish_reason == "length", min_words=self.min_words, stops=stops,
            )
            if cleaned.drop_reason is not None:
                problem = f"turn {turn} instruction: {cleaned.drop_reason}"
                break
            talk.append({"role": "user", "content": cleaned.instruction})
            answer = await self._turn(self._answer(talk, seed, ctx), turn, "assistant")
            records.append(turn_record(
                turn, "assistant", backend=responder,
                model=answer.model or ctx.client(responder).backend.model, system=self.system,
                seed=seed, finish_reason=answer.finish_reason,
            ))
            talk.append({"role": "assistant", "content": answer.text})
            problem = self._answer_problem(answer, turn)
        for column in FORMAT_COLUMNS:  # beside `messages`, TRL would read the row as these
            out.pop(column, None)
        out["messages"] = [*self._system_messages(), *talk]
        lineage.update(turns=records, turn_count=sum(m["role"] == "assistant" for m in talk))
        done = with_lineage(out, ctx.stage_name, step="conversation", **lineage)
        return done if problem is None else Dropped(done, problem)

    async def _turn(self, request: Awaitable[Completion], turn: int, role: str) -> Completion:
        try:
            return await request
        except RequestFailed as error:
            backend = self.backend if role == "user" else self.response_backend or self.backend
            raise failed_turn(error, turn, role, backend) from None

    def _answer_problem(self, answer: Completion, turn: int) -> str | None:
        if not answer.text.strip():
            return f"turn {turn}: empty response (finish_reason={answer.finish_reason})"
        if answer.finish_reason == "length":
            limit = self.response_max_tokens
            at = f"response_max_tokens ({limit})" if limit else "the backend's max_tokens"
            return f"turn {turn}: response cut off at {at}"
        return None

    async def _turn_prefix(
        self, backend: Backend, prequery: PreQuery, talk: list[Message], turn: int
    ) -> str:
        """The raw prompt of turn ``turn``'s instruction: the conversation so far as the chat
        template renders it, then the template's opening of a new user turn."""
        if self.pre_query_template is None:
            messages = [*self._system_messages(), *talk, {"role": "user", "content": SENTINEL}]
            try:
                rendered = await backend.render_chat_template(
                    messages, add_generation_prompt=False
                )
                return prequery_from_rendered(rendered, "magpie.chat_template").prefix
            except ValueError as error:
                raise RowFailure(
                    f"turn {turn} pre-query prefix: {error}", kind="ChatTemplateError"
                ) from error
        preset = PRESETS[self.pre_query_template]  # check_backends refused explicit texts
        end = preset.end_of_turn + preset.separator
        text = prequery.prefix  # ends with the first user turn's header
        for message in talk:
            if message["role"] == "user":
                text += message["content"].strip() + end
            else:
                text += preset.assistant_header + message["content"].strip() + end
                text += preset.user_header
        return text
