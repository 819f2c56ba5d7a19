"""``conversation``: multi-turn conversations between a simulated user and an assistant, as
UltraChat (Ding et al. 2023) makes them.

    - type: conversation
      backend: teacher          # the assistant
      user_backend: simulator   # plays the user; default: the same backend
      turns: 3                  # user/assistant exchanges per conversation
      stop_marker: "[END]"      # the simulator may end early by writing it
      min_turns: 2              # a conversation it ended sooner is dropped, with the reason

Each input row is a seed: an opening ``question`` (the first user turn, as written), or a
``topic`` (the simulator writes the opening), and optionally a ``persona`` and a ``goal`` that go
into the simulator's system prompt (column names are options). The simulator sees the
conversation with the roles swapped (see :mod:`~.conversation_prompts`); the assistant sees it as
it is, after its own ``system`` prompt. They take turns until ``turns`` answers are written or
the simulator writes ``stop_marker`` (that message is not kept; ``end_reason`` says which).

Output: ``messages`` in TRL's shape (``system`` first when set, then user/assistant alternating,
ending with an assistant turn), the seed's columns kept, except the TRL format columns
``prompt``/``completion``/``chosen``/``rejected``: beside ``messages`` they would make TRL read
the row as something else (see :mod:`stillroom.data.rows`); the opening they held is the first
user turn. ``metadata[<stage>]["turns"]`` records every turn: who wrote it (``source``: ``seed``
or ``model``; ``backend``, ``model``), its ``template`` (the simulator prompts' version) and
``system_digest`` (a digest of the system prompt sent), its request ``seed`` and
``finish_reason``.

Every request is seeded from the row's key, the turn and the role, so the same row asks the same
requests in the same order on every run: a resumed run replays answered turns from the request
cache and asks only the rest.

A conversation is one row and is committed whole: a turn that fails after the client's retries,
comes back empty, or ends inside an unfinished reasoning trace sends the conversation to
``failed/`` naming the turn and role; a turn cut at its ``max_tokens`` drops it
(``truncated_turn: drop``, the default) or is kept with its finish reason in lineage (``keep``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from stillroom.data.rows import Row, derived_id, row_id, seed_id_of, with_lineage
from stillroom.generate import conversation_prompts as prompts
from stillroom.llm.reasoning import TRUNCATED_REASONING
from stillroom.llm.types import Completion, GenerationParams, Message, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.client import LLMClient

# Columns TRL reads as a row's format: beside `messages`, TRL might read the row as one of those.
FORMAT_COLUMNS = ("prompt", "completion", "chosen", "rejected")


def check_turn(completion: Completion, turn: int, role: str) -> None:
    """Raise the RowFailure that fails the whole conversation when a turn is no message."""
    if not completion.reasoning_ended:
        raise RowFailure(
            f"turn {turn} ({role}): the reasoning trace never ended "
            f"(finish_reason={completion.finish_reason}); raise max_tokens",
            kind=TRUNCATED_REASONING,
        )
    if not completion.text.strip():
        raise RowFailure(
            f"turn {turn} ({role}) came back empty (finish_reason={completion.finish_reason})",
            kind="EmptyTurn",
        )


def failed_turn(error: RequestFailed, turn: int, role: str, backend: str) -> RequestFailed:
    """The client's failure, its kind and attempts kept, naming the turn it broke."""
    error.args = (f"turn {turn} ({role}, backend {backend!r}): {error.args[0]}",)
    return error


def turn_summary(rows: list[Row]) -> dict[str, Any]:
    """Assistant turns per conversation over the run's ``messages`` (kept and dropped rows, as
    every summary sees them): what the card reports for a multi-turn stage."""
    counts = [sum(1 for m in row["messages"] if isinstance(m, dict) and m.get("role") == "assistant")
              for row in rows if isinstance(row.get("messages"), list)]
    if not counts:
        return {}
    return {"conversations": len(counts), "turns_mean": round(sum(counts) / len(counts), 2),
            "turns_min": min(counts), "turns_max": max(counts)}


def turn_line(stage: str, figures: dict[str, Any]) -> str | None:
    if not figures:
        return None
    return (f"{stage}: {figures['conversations']:,} conversations, {figures['turns_mean']} "
            f"assistant turns on average (min {figures['turns_min']}, max {figures['turns_max']})")


def turn_record(
    turn: int, role: str, *, source: str = "model", backend: str | None = None,
    model: str | None = None, template: str | None = None, system: str | None = None,
    seed: int | None = None, finish_reason: str | None = None,
) -> dict[str, Any]:
    """One turn's lineage; every record has every key (Parquet stores them as one struct)."""
    return {
        "turn": turn, "role": role, "source": source, "backend": backend, "model": model,
        "template": template, "system_digest": prompts.digest(system), "seed": seed,
        "finish_reason": finish_reason,
    }


@register_stage
class Conversation(RowStage):
    type: Literal["conversation"] = "conversation"
    backend: str = Field(default="default", description="Backend that plays the assistant.")
    user_backend: str | None = Field(
        default=None, description="Backend that plays the user; default: the same backend."
    )
    system: str | None = Field(
        default=None, description="The assistant's system prompt (the first turn of `messages`)."
    )
    user_system: str | None = Field(
        default=None,
        description="The simulator's system prompt instead of the built-in one; may use "
        "{persona}, {goal} and {stop_marker}.",
    )
    question_column: str = Field(
        default="question", description="Column with the opening user turn, used as written."
    )
    topic_column: str = Field(
        default="topic", description="Column with a topic the simulator opens on (rows without "
        "a question)."
    )
    persona_column: str = Field(default="persona", description="Optional column: who the user is.")
    goal_column: str = Field(default="goal", description="Optional column: what the user wants.")
    turns: int = Field(default=3, ge=1, le=64, description="User/assistant exchanges to write.")
    min_turns: int = Field(
        default=1, ge=1, description="Drop a conversation the simulator ends with fewer turns."
    )
    stop_marker: str | None = Field(
        default=None,
        description="Text the simulator writes to end the conversation early (it is told so); "
        "default: none, every conversation has `turns` exchanges.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="The assistant's.")
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1, description="Per assistant turn.")
    # UltraChat samples its user model freely so conversations wander as people's do.
    user_temperature: float = Field(default=1.0, ge=0, le=2, description="The simulator's.")
    user_top_p: float | None = Field(default=None, gt=0, le=1)
    user_max_tokens: int = Field(default=256, ge=1, description="Per simulated user turn.")
    user_stop: list[str] | None = Field(
        default=None,
        description="Stop strings of the simulator's turns (e.g. [\"\\n\"]: one-line messages, "
        "which keeps a small model from rambling past user_max_tokens).",
    )
    truncated_turn: Literal["drop", "keep"] = Field(
        default="drop",
        description="A turn cut at its max_tokens: drop the conversation (with the reason) or "
        "keep it (the finish reason is in the turn's lineage).",
    )
    seed: int | None = Field(
        default=None, description="Mixed into each turn's seed; default: the pipeline seed alone."
    )

    @model_validator(mode="after")
    def _check(self) -> Conversation:
        if self.min_turns > self.turns:
            raise ValueError(f"min_turns ({self.min_turns}) is above turns ({self.turns})")
        if self.stop_marker is not None and not self.stop_marker.strip():
            raise ValueError("stop_marker is blank; give a text the simulator can write")
        if self.user_system is not None:
            try:  # here rather than on the first row: a stray brace would fail every row
                self.user_system.format(persona="", goal="", stop_marker="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"user_system: {error!r}; it may use only {{persona}}, {{goal}} and "
                    "{stop_marker} (write a literal brace as {{ or }})"
                ) from None
        return self

    def backend_names(self) -> set[str]:
        return {self.backend, self.user_backend or self.backend}

    def generated_columns(self) -> list[str]:
        return ["messages", "messages:user"] if self.turns > 1 else ["messages"]  # user: simulated

    def summary_columns(self) -> list[str]:
        return ["messages"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        return turn_summary(rows)

    def result_line(self, figures: dict[str, Any]) -> str | None:
        return turn_line(self.name or self.type, figures)

    def _text(self, row: Row, column: str) -> str | None:
        value = row.get(column)
        return (value.strip() or None) if isinstance(value, str) else None

    def check_row(self, row: Row) -> str | None:
        if self._text(row, self.question_column) is None and self._text(
            row, self.topic_column
        ) is None:
            return (
                f"conversation needs an opening question in `{self.question_column}` or a topic "
                f"in `{self.topic_column}` (set question_column / topic_column to other columns)"
            )
        for column in (self.persona_column, self.goal_column):
            if row.get(column) is not None and not isinstance(row[column], str):
                return f"`{column}` must be text (or missing)"
        if row.get("messages") is not None:
            return "the row already has `messages`, which this stage writes; rename that column"
        return None

    def row_key(self, row: Row) -> str:
        """The row's id, or one from its seed columns: every turn's seed comes from it."""
        given = row_id(row)
        if given is not None:
            return given
        columns = (self.question_column, self.topic_column, self.persona_column, self.goal_column)
        return derived_id("conversation", *(row.get(column) for column in columns))

    def turn_seed(self, key: str, turn: int, role: str, ctx: StageContext) -> int:
        return ctx.rng("turn", self.seed, key, turn, role).getrandbits(31)

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        key = self.row_key(row)
        question = self._text(row, self.question_column)
        topic = self._text(row, self.topic_column) if question is None else None
        user_name = self.user_backend or self.backend
        simulator_system = prompts.user_system(
            self._text(row, self.persona_column), self._text(row, self.goal_column),
            self.stop_marker, self.user_system,
        )
        first = prompts.kickoff(topic)
        talk: list[Message] = []
        records: list[dict[str, Any]] = []
        end_reason = "turns"
        problem: str | None = None
        for turn in range(1, self.turns + 1):
            if turn == 1 and question is not None:
                text: str | None = question
                records.append(turn_record(1, "user", source="seed"))
            else:
                text, problem = await self._user_turn(
                    ctx.client(user_name), prompts.simulator_view(simulator_system, first, talk),
                    turn, key, ctx, records,
                )
                if text is None:  # the simulator wrote the stop marker
                    end_reason = "stop_marker"
                    break
            talk.append({"role": "user", "content": text})
            if problem is not None:
                break
            problem = await self._assistant_turn(ctx.client(self.backend), talk, turn, key, ctx,
                                                 records)
            if problem is not None:
                break
        answered = sum(1 for m in talk if m["role"] == "assistant")
        out = self._output(row, key, talk, records, end_reason, ctx, user_name)
        if problem is not None:
            return [Dropped(out, problem)]
        if answered < self.min_turns:
            return [Dropped(out, f"the user simulator ended the conversation after {answered} "
                                 f"turn(s), fewer than min_turns {self.min_turns}")]
        return out

    async def _user_turn(
        self, client: LLMClient, view: list[Message], turn: int, key: str, ctx: StageContext,
        records: list[dict[str, Any]],
    ) -> tuple[str | None, str | None]:
        """The simulator's next message (None when it wrote the stop marker), and why the
        conversation must be dropped, if it must."""
        seed = self.turn_seed(key, turn, "user", ctx)
        params = GenerationParams(temperature=self.user_temperature, top_p=self.user_top_p,
                                  max_tokens=self.user_max_tokens, seed=seed,
                                  stop=tuple(self.user_stop) if self.user_stop else None)
        completion = await self._ask(client, Request(messages=view, params=params), turn, "user",
                                     self.user_backend or self.backend)
        records.append(turn_record(
            turn, "user", backend=self.user_backend or self.backend,
            model=completion.model or client.backend.model, template=prompts.PROMPT_VERSION,
            system=view[0]["content"], seed=seed, finish_reason=completion.finish_reason,
        ))
        text = completion.text.strip()
        if self.stop_marker is not None and self.stop_marker in text:
            records[-1]["source"] = "stop_marker"
            return None, None
        return text, self._truncated(completion, turn, "user", self.user_max_tokens)

    async def _assistant_turn(
        self, client: LLMClient, talk: list[Message], turn: int, key: str, ctx: StageContext,
        records: list[dict[str, Any]],
    ) -> str | None:
        """Append the assistant's answer to ``talk``; why to drop the conversation, if so."""
        seed = self.turn_seed(key, turn, "assistant", ctx)
        system: list[Message] = [] if self.system is None else [
            {"role": "system", "content": self.system}]
        params = GenerationParams(temperature=self.temperature, top_p=self.top_p,
                                  max_tokens=self.max_tokens, seed=seed)
        completion = await self._ask(
            client, Request(messages=[*system, *talk], params=params), turn, "assistant",
            self.backend,
        )
        records.append(turn_record(
            turn, "assistant", backend=self.backend,
            model=completion.model or client.backend.model, system=self.system, seed=seed,
            finish_reason=completion.finish_reason,
        ))
        talk.append({"role": "assistant", "content": completion.text})
        return self._truncated(completion, turn, "assistant", self.max_tokens)

    async def _ask(
        self, client: LLMClient, request: Request, turn: int, role: str, backend: str
    ) -> Completion:
        try:
            completion = await client.generate(request)
        except RequestFailed as error:
            raise failed_turn(error, turn, role, backend) from None
        check_turn(completion, turn, role)
        return completion

    def _truncated(self, completion: Completion, turn: int, role: str, limit: int) -> str | None:
        if completion.finish_reason == "length" and self.truncated_turn == "drop":
            return f"turn {turn} ({role}) cut off at max_tokens ({limit})"
        return None

    def _output(
        self, row: Row, key: str, talk: list[Message], records: list[dict[str, Any]],
        end_reason: str, ctx: StageContext, user_name: str,
    ) -> Row:
        out = {name: value for name, value in row.items() if name not in FORMAT_COLUMNS}
        if out.get("id") is None:  # an input id is carried through as it is (an int stays one)
            out["id"] = key
        system: list[Message] = [] if self.system is None else [
            {"role": "system", "content": self.system}]
        out["messages"] = [*system, *talk]
        answers = [r for r in records if r["role"] == "assistant"]
        users = [r for r in records if r["role"] == "user" and r["source"] == "model"]
        return with_lineage(
            out, ctx.stage_name, method="conversation", step="turns",
            parent_id=row_id(row), seed_id=seed_id_of(row) or key,
            model=answers[0]["model"] if answers else None,
            template=prompts.PROMPT_VERSION,
            user_model=users[0]["model"] if users else None,
            user_backend=user_name,
            turns=records,
            turn_count=len(answers),
            end_reason=end_reason,
        )
