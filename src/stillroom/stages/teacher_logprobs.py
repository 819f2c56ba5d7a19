"""``teacher_logprobs``: a teacher's top-k log-probs for every token of a *given* completion.

Offline knowledge distillation (``stillroom train kd`` with ``mode: offline``) trains a student on
the teacher's top-k next-token log-probs, stored per completion token in a ``logprobs`` column. A
``complete`` stage with ``top_logprobs: K`` stores them for the teacher's *own* samples. This stage
gets the same data for any text -- answers another model wrote, human SFT data, samples verified
in another run -- by teacher forcing ("prompt logprobs" in vLLM): the teacher reads the prompt and
the completion in one forward pass, and at each completion token records the log-prob it gave
that token and its K most likely tokens there. Nothing is generated.

    backends:
      teacher:
        kind: vllm                  # or transformers; must be able to score (in-process weights)
        model: /models/teacher
    input: data/sft.jsonl           # rows with `prompt` and `completion`, or `messages` ending
                                    # with the answer (the shapes `complete` writes)
    stages:
      - type: teacher_logprobs
        backend: teacher            # required: a backend that supports scoring
        top_logprobs: 5             # alternatives per token, 1..20 (default 5)
        completion_column: completion
        output_column: logprobs     # what `stillroom train kd` reads (its `logprobs_column`)
        logprobs_format: records    # or compact: `logprobs_ids`, `_q`, `_top_ids`, `_top_q` integer
                                    # columns, ~10x smaller (see stillroom.data.logit_store)
        # system: / prompt_template: as in the `complete` stage

then, on the output folder::

    # stillroom train kd kd.yaml
    mode: offline
    student: embedded
    data: out/teacher-logprobs      # this pipeline's output
    alpha: 0.5

The context. A row's ``prompt`` becomes one user turn, ``messages`` a conversation (trailing
assistant turns removed, as ``complete`` does), or ``prompt_template`` fills a user turn from
columns; ``system`` is put first unless the conversation has its own. The backend applies the
teacher's chat template with the assistant turn opened -- the prompt KD renders for the student
(``render_prompt``), so teacher and student score the completion after the same text when they
share a chat template.

Output: the row, unchanged, plus ``output_column``: one entry per completion token,
``{"token", "logprob", "id", "top_logprobs": [{"token", "logprob", "id"}]}`` with the alternatives
best first, from the teacher's raw (temperature 1) distribution. This is the shape KD's offline
reader checks: the ids must decode to the completion with the student's tokenizer, so teacher and
student must share a tokenizer. ``metadata[<stage>]`` holds the lineage (method
``teacher_logprobs``) with the backend, ``top_logprobs`` and the number of scored tokens.

What is refused, dropped or failed, never silently:

* a backend that cannot score (llama.cpp, OpenAI-compatible servers, Anthropic): ConfigError on
  ``backend`` before any request;
* a row without a text ``completion_column``, or without a usable ``prompt``/``messages``: the
  input is refused before any request when this is the first stage (``check_row``); later in a
  pipeline such a row goes to ``failed/`` (kind ``BadInput``);
* an empty (or whitespace-only) completion: dropped, with lineage, to ``dropped/``;
* a scoring call that still fails after the client's retries (too long for the model, a chat
  template that rejects the messages): ``failed/`` with the backend's error.

The calls go through :meth:`stillroom.llm.client.LLMClient.score`, so they share the backend's
concurrency limit, timeout, retries and request cache with generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stillroom.data import logit_store
from stillroom.data.logit_store import LogprobsFormat
from stillroom.data.rows import (
    ANSWER_COLUMN,
    Row,
    build_messages,
    check_prompt,
    row_answer,
    row_id,
    seed_id_of,
    with_lineage,
)
from stillroom.errors import ConfigError
from stillroom.pipeline.stage import Dropped, RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig

METHOD = "teacher_logprobs"


@register_stage
class TeacherLogprobs(RowStage):
    type: Literal["teacher_logprobs"] = "teacher_logprobs"
    # No default: the default backend (llama.cpp) cannot score, so a default would only ever fail.
    backend: str = Field(description="A backend that supports scoring (vllm, transformers).")
    completion_column: str = Field(default="completion", min_length=1)
    system: str | None = Field(default=None, description="System prompt put before the prompt.")
    prompt_template: str | None = Field(
        default=None,
        description="Build the user message from columns, e.g. '{instruction}\\n\\n{input}'.",
    )
    top_logprobs: int = Field(default=5, ge=1, le=20, description="Alternatives per token.")
    output_column: str = Field(default="logprobs", min_length=1)
    logprobs_format: LogprobsFormat = Field(
        default="records",
        description="`records` (per-token dicts in output_column) or `compact` (integer columns "
        "named after it, see stillroom.data.logit_store).",
    )

    def backend_names(self) -> set[str]:
        return {self.backend}

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        backend_class = configs[self.backend].backend_class()
        if not backend_class.supports_scoring:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) cannot score a given completion "
                "(teacher forcing); use a `vllm` or `transformers` backend",
                key="backend",
            )
        if self.logprobs_format == "compact":
            logit_store.check_backend(backend_class.kind, self.backend)

    def check_row(self, row: Row) -> str | None:
        problem = check_prompt(row, prompt_template=self.prompt_template)
        if problem:
            return problem
        if row_answer(row, self.completion_column) is not None:
            return None
        completion = row.get(self.completion_column)
        if completion is None:
            also = (" (or `messages` ending with the answer)"
                    if self.completion_column == ANSWER_COLUMN else "")
            return (f"the row needs a `{self.completion_column}` column{also} to score; it has "
                    f"{sorted(row)}")
        return (f"`{self.completion_column}` must be text or an assistant message list, got "
                f"{type(completion).__name__}")

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:  # a row made by an earlier stage is checked here, not before the run
            raise RowFailure(problem, kind="BadInput")
        # The answer wherever the row keeps it: a text, an assistant message list, or the last
        # turn of `messages` (which `build_messages` leaves out of the context).
        completion = str(row_answer(row, self.completion_column))
        if not completion.strip():
            dropped = self._lineage(row, ctx, model=None, scored=0)
            return [Dropped(dropped, f"`{self.completion_column}` is empty: nothing to score")]
        client = ctx.client(self.backend)
        messages = build_messages(row, self.prompt_template, self.system)
        # Through LLMClient.score, not client.backend.score: the client's concurrency limit,
        # timeout, retries, stats and cache then hold for scoring as for generation, and a
        # rerun after a crash does not score again what it already scored.
        entries = await client.score(messages, completion, self.top_logprobs)
        if not entries:
            raise RowFailure(
                f"the backend scored no token of `{self.completion_column}` "
                f"({completion[:40]!r})",
                kind="NothingScored",
            )
        out = dict(row)
        if self.logprobs_format == "compact":  # scoring entries always carry ids (Backend.score)
            out.update(logit_store.to_compact(entries, self.output_column))
        else:
            out[self.output_column] = [_kd_entry(entry) for entry in entries]
        return self._lineage(out, ctx, model=client.backend.model, scored=len(entries))

    def _lineage(self, row: Row, ctx: StageContext, *, model: str | None, scored: int) -> Row:
        return with_lineage(
            row,
            ctx.stage_name,
            method=METHOD,
            step="score",
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=model,
            template=self.prompt_template,
            backend=self.backend,
            top_logprobs=self.top_logprobs,
            scored_tokens=scored,
        )


def _kd_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One scored token in exactly the shape KD's offline reader takes (extra keys left out)."""
    return {
        "token": entry["token"],
        "logprob": float(entry["logprob"]),
        "id": int(entry["id"]),
        "top_logprobs": [
            {"token": alt["token"], "logprob": float(alt["logprob"]), "id": int(alt["id"])}
            for alt in entry.get("top_logprobs") or []
        ],
    }
