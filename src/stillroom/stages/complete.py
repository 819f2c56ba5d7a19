"""``complete``: answer each row's ``prompt`` or ``messages`` with one or ``n`` completions.

    - type: complete
      backend: teacher        # a name under `backends:`; "default" is the embedded model
      n: 4                    # completions per row -> `completions` (a list) instead of `completion`
      temperature: 0.7
      top_logprobs: 5         # keep each token's top-5 logprobs in `logprobs` (for distillation)
      logprobs_format: compact  # ids + int16-quantized logprobs in `logprobs_*` columns (default records)
      truncated_reasoning: fail  # a trace cut at max_tokens: fail the row (or `flag` it)

Where the answer goes (``n: 1``): in TRL's shape for the row, so that TRL's ``SFTTrainer`` and
``stillroom train sft`` both train on it (see ``stillroom.data.rows``):

* a text ``prompt`` (or a ``prompt_template``) -> ``completion``: the answer text;
* a conversational ``prompt`` (a list of ``{role, content}`` messages ending in a user, system or
  tool turn) -> ``completion``: ``[{"role": "assistant", "content": answer}]``;
* ``messages`` (and no ``prompt``) -> ``messages``: the conversation followed by
  ``{"role": "assistant", "content": answer}``, and no ``completion`` column (TRL would read a
  ``messages`` list beside a text ``completion`` as either shape, depending on the hash seed).
  A conversation that already ends in assistant turns gets them regenerated: they are left out
  of the request and the new answer replaces them.
* a row with both ``messages`` and a ``prompt`` is asked with its ``messages`` (say, worked
  examples for the teacher) and gets ``completion`` in its ``prompt``'s shape, as above: TRL
  trains a row that has a ``prompt`` as prompt + completion and does not read its ``messages``.

A custom ``output_column`` always gets the answer text (a stillroom column TRL does not read).

With ``n > 1`` the row gets ``completions``: the ``n`` answer texts, in sample order, whatever
the row's shape, and its ``prompt``/``messages`` stay as they came. Such a row holds candidates,
not a training example: a later stage picks from them (``rejection_sample``/``majority_vote``
write the chosen answer in the row's shape as above; ``preference_pairs`` and the judges write
``chosen``/``rejected``) before SFT.

A row is answered only when every one of its ``n`` samples is: a sample that failed after retries,
or came back empty, sends the whole row to ``failed/`` (the samples that did succeed stay in the
request cache, so a rerun asks only for the missing ones). ``data/`` never holds an empty answer
(but for a cut trace kept flagged, see below).

``json_schema`` asks for a JSON answer that fits a schema: a dict (a JSON Schema), or, from Python,
a pydantic model class (``Complete(json_schema=Answer)``). The row gets the parsed value in
``<output_column>_json`` beside the text (``Answer.model_validate(row["completion_json"])`` turns
it back into the model). A model class is turned into its ``model_json_schema()`` in the strict
form OpenAI's structured outputs require (what the ``openai`` SDK itself sends for a model: every
object closed with ``additionalProperties: false``, every property required, optional ones as
``anyOf [..., null]``), because the OpenAI-compatible backend asks with ``strict: true``; the same
schema constrains llama.cpp's grammar and vLLM, and nested models stay ``$defs``/``$ref``, which
those and the validator resolve. The stage keeps only that dict, so the run's config,
fingerprint and card hold plain JSON, and the class's name is the schema's ``title``.

An answer is checked against the schema the way a dict schema's is (one that misses it is asked
again with the error, then fails its row). The class's own validators (``field_validator``, ...),
which no JSON Schema carries, are not run: the class is not kept, because a stage must pickle to
Ray's workers, and a pydantic class defined in a script does not reliably do so (cloudpickle
rebuilds it by value, which fails with ``KeyError: 'type'`` for a module that uses
``from __future__ import annotations``; compare pydantic issue #13085). Validate
``completion_json`` with the class after the run where those validators matter.

Reasoning traces. A reasoning model's trace (a server's ``reasoning_content``, Anthropic's
thinking blocks, inline ``<think>`` tags the backend was told to split) goes into ``reasoning``
beside the answer, never into it: the trace text for ``n: 1``, a list aligned with
``completions`` for ``n > 1`` (None for a sample without a trace), and
``<output_column>_reasoning`` for a custom ``output_column``. The column is written only when
some sample has a trace, so rows of models without one are as before.
``metadata[<stage>]`` adds ``reasoning_tokens`` (and ``reasoning_tokens_estimated`` when a
backend's count was a share of the completion by characters).

A trace that never ended (the model ran out of ``max_tokens`` while thinking) holds no answer.
By default (``truncated_reasoning: fail``) its row goes to ``failed/`` with kind
``ReasoningTruncated``, naming the sample and finish reason; raise ``max_tokens`` and rerun.
``truncated_reasoning: flag`` keeps the row with an empty answer, the partial trace in
``reasoning`` and ``reasoning_truncated`` (``<output_column>_reasoning_truncated``) true, a
list per sample for ``n > 1``; the flag column is written on every row that has a trace, so
filter on it before training. With ``json_schema`` a cut trace always fails its row (the client
refuses it before any JSON is read).

``prompt_template`` is checked when the stage is built: a template with an unbalanced brace, no
``{column}`` field, or a positional field (``{}``, ``{0}``) is a validation error then, not a
failure at the first request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from stillroom.data import logit_store
from stillroom.data.logit_store import LogprobsFormat
from stillroom.data.rows import (
    Message,
    Row,
    build_messages,
    check_prompt,
    checked_prompt_template,
    has_trace,
    trace_columns,
    trace_usage,
    truncated_reason,
    with_answer,
)
from stillroom.errors import ConfigError
from stillroom.llm.reasoning import TRUNCATED_REASONING
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig


@register_stage
class Complete(RowStage):
    type: Literal["complete"] = "complete"
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    n: int = Field(default=1, ge=1, le=128, description="Completions per row.")
    system: str | None = Field(default=None, description="System prompt put before the prompt.")
    prompt_template: str | None = Field(
        default=None,
        description="Build the user message from columns, e.g. '{instruction}\\n\\n{input}'.",
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logprobs_format: LogprobsFormat = Field(
        default="records",
        description="How top_logprobs are stored: `records` (per-token dicts in `logprobs`) or "
        "`compact` (integer id and quantized logprob columns, see stillroom.data.logit_store).",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the answer must fit (from Python: a pydantic model)."
    )
    output_column: str = Field(default="completion", description="`completions` when n > 1.")
    truncated_reasoning: Literal["fail", "flag"] = Field(
        default="fail",
        description="A trace that never ended: fail the row, or keep it flagged with no answer.",
    )

    @model_validator(mode="before")
    @classmethod
    def _schema_from_model(cls, data: Any) -> Any:
        """``json_schema=SomeModel``: the model's strict JSON schema (see the module docstring)."""
        model = data.get("json_schema") if isinstance(data, dict) else None
        if isinstance(model, BaseModel):
            raise ValueError(
                f"json_schema got an instance of {type(model).__name__}; pass the class itself"
            )
        if isinstance(model, type) and issubclass(model, BaseModel):
            return {**data, "json_schema": strict_schema(model)}
        return data

    @field_validator("prompt_template")
    @classmethod
    def _usable_template(cls, value: str | None) -> str | None:
        return checked_prompt_template(value)

    @model_validator(mode="after")
    def _compact_needs(self) -> Complete:
        if self.logprobs_format == "compact" and (self.top_logprobs is None or self.n > 1):
            raise ValueError("logprobs_format: compact needs top_logprobs and n: 1 (offline KD "
                             "reads one completion per row)")
        return self

    @model_validator(mode="after")
    def _plural_output(self) -> Complete:
        if self.n > 1 and self.output_column == "completion":
            self.output_column = "completions"
        return self

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        return [self.output_column]

    def reasoning_column(self) -> str:
        """Where the traces go: ``reasoning`` beside the default answer columns."""
        if self.output_column in ("completion", "completions"):
            return "reasoning"
        return f"{self.output_column}_reasoning"

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        backend_class = configs[self.backend].backend_class()
        if self.top_logprobs is not None and not backend_class.supports_logprobs:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) does not return logprobs; "
                "remove top_logprobs or use an OpenAI-compatible, llama.cpp or transformers backend",
                key="top_logprobs",
            )
        if self.logprobs_format == "compact":
            logit_store.check_backend(backend_class.kind, self.backend)
        # Sampling the backend refuses as configured (Anthropic's extended thinking: max_tokens
        # above the budget, temperature 1) is named here, before any request.
        configs[self.backend].check_params(
            GenerationParams(temperature=self.temperature, top_p=self.top_p,
                             max_tokens=self.max_tokens),
            key="",
        )

    def check_row(self, row: Row) -> str | None:
        return check_prompt(row, prompt_template=self.prompt_template)

    def messages_for(self, row: Row) -> list[Message]:
        return build_messages(row, self.prompt_template, self.system)

    def answered(self, row: Row, text: str) -> Row:
        """The row with its one answer: in the row's TRL shape (see the module docstring), or
        as text in a custom ``output_column`` or after a ``prompt_template``."""
        if self.output_column == "completion" and self.prompt_template is None:
            return with_answer(row, text)
        out = dict(row)
        out[self.output_column] = text
        return out

    def params(self, ctx: StageContext) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop) if self.stop else None,
            seed=self.seed if self.seed is not None else ctx.seed,
            top_logprobs=self.top_logprobs,
            json_schema=self.json_schema,
        )

    async def process(self, row: Row, ctx: StageContext) -> Row:
        client = ctx.client(self.backend)
        messages = self.messages_for(row)
        params = self.params(ctx)
        requests = [Request(messages=messages, params=params, sample=i) for i in range(self.n)]
        if self.n == 1:  # the common case, without gather's task and future per row
            results: list[Completion | BaseException] = []
            try:
                results.append(await client.generate(requests[0]))
            except RequestFailed as failure:
                results.append(failure)
        else:
            results = await asyncio.gather(*map(client.generate, requests), return_exceptions=True)
        completions = _all_answered(results, flag_truncated=self.truncated_reasoning == "flag")
        texts = [c.text for c in completions]
        keep_logprobs = self.top_logprobs is not None
        if self.n == 1:
            out = self.answered(row, texts[0])
            if keep_logprobs:
                out.update(self._stored_logprobs(completions[0]))
            if self.json_schema is not None:
                out[f"{self.output_column}_json"] = completions[0].parsed
        else:
            out = dict(row)
            out[self.output_column] = texts
            if keep_logprobs:
                out["logprobs"] = [c.logprobs for c in completions]
            if self.json_schema is not None:
                out[f"{self.output_column}_json"] = [c.parsed for c in completions]
        metadata = dict(out.get("metadata") or {})
        metadata[ctx.stage_name] = {
            "backend": self.backend,
            "model": completions[0].model,
            "finish_reasons": [c.finish_reason for c in completions],
            "prompt_tokens": sum(c.prompt_tokens for c in completions),
            "completion_tokens": sum(c.completion_tokens for c in completions),
        }
        if has_trace(completions):
            column = self.reasoning_column()
            out.update(trace_columns(column, completions, self.n > 1,
                                     flag=self.truncated_reasoning == "flag"))
            metadata[ctx.stage_name].update(trace_usage(completions))
        out["metadata"] = metadata
        return out


    def _stored_logprobs(self, completion: Completion) -> Row:
        if self.logprobs_format == "records" or completion.logprobs is None:
            return {"logprobs": completion.logprobs}
        try:
            return logit_store.to_compact(completion.logprobs, "logprobs")
        except ValueError as error:  # checked before the run; a backend that broke its contract
            raise RowFailure(f"logprobs_format compact: {error}", kind="NoTokenIds") from None


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema in the strict form OpenAI's structured outputs accept, made by the
    ``openai`` SDK's own helper (a dependency already) rather than by hand: its rules
    (``additionalProperties: false`` everywhere, all properties required, a ``$ref`` with
    siblings inlined) are OpenAI's to keep current. A model it cannot express is a ConfigError
    naming ``json_schema``."""
    import openai

    try:
        schema = openai.pydantic_function_tool(model)["function"].get("parameters")
    except Exception as error:  # the SDK raises plain errors for what strict mode cannot hold
        raise ConfigError(
            f"the model {model.__name__} has no strict JSON schema: {error}", key="json_schema"
        ) from None
    if not isinstance(schema, dict):
        raise ConfigError(f"the model {model.__name__} gave no JSON schema", key="json_schema")
    return schema


def truncated_trace(completion: Completion, where: str) -> RowFailure:
    """The failure of a sample whose trace never ended: it has no answer to keep."""
    return RowFailure(f"{where}{truncated_reason(completion)}", kind=TRUNCATED_REASONING)


def _all_answered(
    results: list[Completion | BaseException], *, flag_truncated: bool = False
) -> list[Completion]:
    """The completions, or the reason the row fails: a failed request, a trace that never ended
    (unless ``flag_truncated`` keeps it, flagged, with its empty answer) or an empty answer."""
    for sample, result in enumerate(results):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, RequestFailed):
            if len(results) > 1:
                result.args = (f"sample {sample}: {result.args[0]}",)
            raise result
        if isinstance(result, BaseException):
            raise result
        if not result.reasoning_ended:
            if flag_truncated:
                # Whatever a backend left after a cut trace is not an answer.
                results[sample] = dataclasses.replace(result, text="", parsed=None)
                continue
            raise truncated_trace(result, f"sample {sample}: " if len(results) > 1 else "")
        if not result.text.strip():
            raise RowFailure(
                f"sample {sample} came back empty (finish_reason={result.finish_reason})",
                kind="EmptyCompletion",
            )
    return results  # type: ignore[return-value]
