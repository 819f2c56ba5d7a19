"""``complete``: answer each row's ``prompt`` or ``messages`` with one or ``n`` completions.

    - type: complete
      backend: teacher        # a name under `backends:`; "default" is the embedded model
      n: 4                    # completions per row -> `completions` (a list) instead of `completion`
      temperature: 0.7
      top_logprobs: 5         # keep each token's top-5 logprobs in `logprobs` (for distillation)

A row is answered only when every one of its ``n`` samples is: a sample that failed after retries,
or came back empty, sends the whole row to ``failed/`` (the samples that did succeed stay in the
request cache, so a rerun asks only for the missing ones). ``data/`` never holds an empty answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from stillroom.errors import ConfigError
from stillroom.llm.types import Completion, GenerationParams, Request, RequestFailed
from stillroom.pipeline.stage import Row, RowFailure, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig


def _template_columns(template: str) -> list[str]:
    import string

    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list of {role, content} objects"
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"`messages[{position}]` must be an object with `role` and `content`"
        if message["role"] not in ("system", "user", "assistant", "tool"):
            return f"`messages[{position}].role` is {message['role']!r}; use system, user or assistant"
        if not isinstance(message["content"], (str, list)):
            return f"`messages[{position}].content` must be text"
    return None


def build_messages(
    row: Row, prompt_template: str | None = None, system: str | None = None
) -> list[dict[str, Any]]:
    """The chat request for a row: its template filled in, its ``messages`` or its ``prompt``,
    with ``system`` put first unless the conversation has its own."""
    if prompt_template is not None:
        messages = [{"role": "user", "content": prompt_template.format(**row)}]
    elif row.get("messages") is not None:
        messages = list(row["messages"])
        # A conversation that already ends in an answer gets that answer regenerated.
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    else:
        messages = [{"role": "user", "content": row["prompt"]}]
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def check_prompt(
    row: Row, *, messages_allowed: bool = True, prompt_template: str | None = None
) -> str | None:
    """What is wrong with the row's ``messages`` or ``prompt`` (the input of a generation stage),
    or, with a ``prompt_template``, which of the columns it needs the row lacks."""
    if prompt_template is not None:
        missing = [c for c in _template_columns(prompt_template) if c not in row]
        if missing:
            return f"prompt_template needs column(s) {missing}; the row has {sorted(row)}"
        return None
    if messages_allowed and row.get("messages") is not None:
        return check_messages(row["messages"])
    prompt = row.get("prompt")
    if prompt is None:
        columns = "a `prompt` or `messages` column" if messages_allowed else "a `prompt` column"
        return f"the row needs {columns}; it has {sorted(row)}"
    if not isinstance(prompt, str):
        return f"`prompt` must be text, got {type(prompt).__name__}"
    if not prompt.strip():
        return "`prompt` is empty"
    return None


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
    json_schema: dict[str, Any] | None = None
    output_column: str = Field(default="completion", description="`completions` when n > 1.")

    @model_validator(mode="after")
    def _plural_output(self) -> Complete:
        if self.n > 1 and self.output_column == "completion":
            self.output_column = "completions"
        return self

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        return [self.output_column]

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        backend_class = configs[self.backend].backend_class()
        if self.top_logprobs is not None and not backend_class.supports_logprobs:
            raise ConfigError(
                f"backend {self.backend!r} ({backend_class.kind}) does not return logprobs; "
                "remove top_logprobs or use an OpenAI-compatible, llama.cpp or transformers backend",
                key="top_logprobs",
            )

    def check_row(self, row: Row) -> str | None:
        return check_prompt(row, prompt_template=self.prompt_template)

    def messages_for(self, row: Row) -> list[dict[str, Any]]:
        return build_messages(row, self.prompt_template, self.system)

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
        completions = _all_answered(results)
        out = dict(row)
        texts = [c.text for c in completions]
        keep_logprobs = self.top_logprobs is not None
        if self.n == 1:
            out[self.output_column] = texts[0]
            if keep_logprobs:
                out["logprobs"] = completions[0].logprobs
            if self.json_schema is not None:
                out[f"{self.output_column}_json"] = completions[0].parsed
        else:
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
        out["metadata"] = metadata
        return out


def _all_answered(results: list[Completion | BaseException]) -> list[Completion]:
    """The completions, or the reason the row fails: a failed request or an empty answer."""
    for sample, result in enumerate(results):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, RequestFailed):
            if len(results) > 1:
                result.args = (f"sample {sample}: {result.args[0]}",)
            raise result
        if isinstance(result, BaseException):
            raise result
        if not result.text.strip():
            raise RowFailure(
                f"sample {sample} came back empty (finish_reason={result.finish_reason})",
                kind="EmptyCompletion",
            )
    return results  # type: ignore[return-value]
