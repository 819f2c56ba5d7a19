"""``budget_forced``: s1's budget forcing at generation time (Muennighoff et al. 2025, "s1: Simple
test-time scaling"): each row's answer is written after a thinking trace whose length is
controlled, capped at a token budget and extended with "Wait" up to N times.

    - type: budget_forced
      backend: teacher
      max_thinking_tokens: 512      # cap: thinking is cut here and the model made to answer
      max_waits: 2                  # ignore the model's end of thinking twice (s1's num_ignore)
      min_thinking_tokens: 0        # floor: also ignore it while fewer tokens were spent
      think_start: "<think>"        # written to open the trace ("" if the template opens it)
      think_end: "</think>"
      wait: "Wait"
      answer_prefix: "Final Answer:"
      max_answer_tokens: 256        # default: max_tokens
      max_tokens: 1024              # thinking's cap when max_thinking_tokens is unset

The method is the one ``stillroom eval`` runs with ``budget_forcing:`` (the same steps, from
:mod:`stillroom.evaluate.budget`, whose docstring gives the semantics of every option), here one
row at a time through the pipeline's client: the request cache, retries and limits apply to
every round, so a rerun is served from the cache round by round.

What the row gets:

* ``completion`` (in the row's TRL shape, as ``complete`` writes it, see
  :mod:`stillroom.stages.complete`): the answer *with* ``answer_prefix``
  ("Final Answer: 12"). That is the text a verifier grades in evaluation, and the form the
  model was made to answer in, so a student trained on ``reasoning`` + ``completion`` learns
  to answer as it was forced to.
* ``reasoning``: the trace without its delimiters, the waits included, as the model saw it.
* ``metadata.<stage>``: ``thinking_tokens``, ``answer_tokens``, ``waits``, ``capped`` (the trace
  was cut at the cap), ``requests`` and the backend and model.

A trace cut at ``max_thinking_tokens`` is not a failure: s1 cuts it and forces the answer, and
``capped`` says so. An *answer* cut at ``max_answer_tokens`` is: the row goes to ``failed/``
(kind ``AnswerTruncated``) rather than put a half answer, which a verifier could not grade, in
``data/``; the thinking rounds stay in the request cache, so a rerun with a larger
``max_answer_tokens`` asks only for the answer. A request that fails after its retries fails
the row, as an empty answer does.

Continuing the assistant's turn: budget forcing writes into the model's turn (``<think>``, the
waits, the end of thinking), which a plain chat request cannot do. Two ways are supported, and
a backend that offers neither is refused before any request:

* a backend that renders its own chat template and takes raw prompts (llama.cpp and vLLM in
  this process): the conversation is rendered with the assistant turn open and the text
  continued as it is;
* any backend that takes raw prompts (an OpenAI-compatible server's ``/v1/completions``), given
  the model's chat template in ``chat_template``: a Jinja file, or a ``tokenizer_config.json``
  (its ``chat_template``, ``bos_token`` and ``eos_token`` are used). The conversation is
  rendered here, as transformers' ``apply_chat_template`` renders it, with the assistant turn
  open; ``chat_template_kwargs`` adds variables the template reads (``bos_token``, a thinking
  switch). Given for an in-process backend, it replaces the backend's own template;
* an OpenAI-compatible server that continues a final assistant message, as vLLM's chat API
  does with its extra parameters ``continue_final_message: true`` and
  ``add_generation_prompt: false``: put both in the backend's ``extra_body``. Each round then
  sends the conversation with the partial assistant turn (``think_start`` + the trace so far)
  last. A server that splits a reasoning field off its output (``reasoning_content``) gets it
  joined back in front of the text, since a continuation's text is all one trace.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from stillroom.data.readers import option_file
from stillroom.data.rows import (
    Message,
    Row,
    build_messages,
    check_prompt,
    checked_prompt_template,
    with_answer,
)
from stillroom.errors import ConfigError
from stillroom.evaluate.budget import (
    Forced,
    answer_budget,
    answer_step,
    answer_tail,
    start,
    think_step,
    thinking_cap,
)
from stillroom.evaluate.config import BudgetForcing
from stillroom.evaluate.generation import Generation
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import (
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig
    from stillroom.llm.client import LLMClient

# vLLM's chat extension that continues the last (assistant) message instead of opening a new turn.
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}


def continues_final_message(config: BackendConfig) -> bool:
    """Whether ``config`` is an OpenAI-compatible backend whose every chat request asks the
    server to continue the final assistant message (see the module docstring)."""
    extra = getattr(config, "extra_body", None) or {}
    return config.kind == "openai" and all(extra.get(k) is v
                                           for k, v in CONTINUE_FINAL_MESSAGE.items())


@register_stage
class BudgetForced(RowStage, BudgetForcing):
    """Answers written after a length-controlled thinking trace (s1's budget forcing)."""

    type: Literal["budget_forced"] = "budget_forced"
    path_options: ClassVar[tuple[str, ...]] = ("chat_template",)
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    system: str | None = Field(default=None, description="System prompt put before the prompt.")
    prompt_template: str | None = Field(
        default=None,
        description="Build the user message from columns, e.g. '{instruction}\\n\\n{input}'.",
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    max_tokens: int = Field(
        default=1024, ge=1,
        description="Thinking's cap when max_thinking_tokens is unset, and the answer's when "
        "max_answer_tokens is.",
    )

    chat_template: str | None = Field(
        default=None,
        description="The model's chat template (a Jinja file, or a tokenizer_config.json), "
        "rendered here so that the backend gets raw prompts (a server's /v1/completions).",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Variables the chat template reads, e.g. bos_token."
    )
    _template: str | None = PrivateAttr(default=None)
    _template_variables: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _load_template(self, info: ValidationInfo) -> BudgetForced:
        if self.chat_template is not None:
            self._template, self._template_variables = load_chat_template(
                self.chat_template, pipeline_dir(info))
        return self

    @field_validator("prompt_template")
    @classmethod
    def _usable_template(cls, value: str | None) -> str | None:
        return checked_prompt_template(value)

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        return ["completion", "reasoning"]

    def identity(self) -> dict[str, Any]:
        """The options, and the template's own text (a digest): an edited template file makes
        different prompts, so a different run."""
        identity = super().identity()
        if self._template is not None:
            identity["chat_template_sha256"] = hashlib.sha256(
                self._template.encode()).hexdigest()[:16]
        return identity

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        config = configs[self.backend]
        backend_class = config.backend_class()
        if getattr(config, "think_tags", False) and getattr(config, "think_opened", False):
            # The client would read every continuation as a trace that never ended: no answer,
            # never cached. This stage opens and closes the trace itself.
            raise ConfigError(
                f"budget_forced writes the trace's tags itself; backend {self.backend!r} has "
                "think_opened: true, which reads each continued round as an unfinished trace. "
                "Give this stage a backend entry without think_opened (set the stage's "
                "think_start: \"\" if the chat template opens the trace)", key="backend")
        if self._template is not None:
            if backend_class.supports_raw_prompt:
                return
            raise ConfigError(
                f"budget_forced with a chat_template sends raw prompts; backend {self.backend!r} "
                f"({config.kind}) does not take them: use an OpenAI-compatible, llamacpp, "
                "transformers or vllm backend", key="chat_template")
        if backend_class.renders_chat_template and backend_class.supports_raw_prompt:
            return
        if continues_final_message(config):
            return
        how = ("add `extra_body: {continue_final_message: true, add_generation_prompt: false}` "
               "to it if the server is vLLM (or another that continues a final assistant "
               "message), or name the model's chat_template so that the server gets raw "
               "prompts (/v1/completions)"
               if config.kind == "openai" else
               "name the model's chat_template if the backend takes raw prompts (transformers "
               "does), or use a llamacpp or vllm backend, or a vLLM server with "
               "continue_final_message")
        raise ConfigError(
            f"budget_forced needs a backend that can continue the assistant's turn; backend "
            f"{self.backend!r} ({config.kind}) cannot: {how}",
            key="backend",
        )

    def check_row(self, row: Row) -> str | None:
        return check_prompt(row, prompt_template=self.prompt_template)

    def options(self) -> BudgetForcing:
        return BudgetForcing(**{name: getattr(self, name) for name in BudgetForcing.model_fields})

    def answered(self, row: Row, answer: str) -> Row:
        if self.prompt_template is None:
            return with_answer(row, answer)
        return {**row, "completion": answer}

    async def process(self, row: Row, ctx: StageContext) -> Row:
        client = ctx.client(self.backend)
        turn = _Turn(client, build_messages(row, self.prompt_template, self.system),
                     template=(self._template,
                               {**self._template_variables, **self.chat_template_kwargs}),
                     seed=self.seed if self.seed is not None else ctx.seed,
                     temperature=self.temperature, top_p=self.top_p)
        options = self.options()
        cap = thinking_cap(options, self.max_tokens)
        await turn.open()
        state = start("", options)
        thinking = True
        while thinking:
            out = await turn.continue_(state.prompt + state.thinking,
                                       cap - state.thinking_tokens, stop=(options.think_end,),
                                       thinking=True)
            thinking = think_step(state, out, options, cap)
        out = await turn.continue_(state.prompt + state.thinking + answer_tail(options),
                                   answer_budget(options, self.max_tokens))
        answer_step(state, out, options)
        if not out.text.strip():
            raise RowFailure(f"the answer came back empty after {state.thinking_tokens} thinking "
                             "tokens", kind="EmptyCompletion")
        if out.finish_reason == "length":
            raise RowFailure(
                f"the answer was cut at max_answer_tokens "
                f"({answer_budget(options, self.max_tokens)}) after {state.thinking_tokens} "
                "thinking tokens; raise max_answer_tokens", kind="AnswerTruncated")
        out_row = self.answered(row, state.answer)
        out_row["reasoning"] = state.thinking
        metadata = dict(out_row.get("metadata") or {})
        metadata[ctx.stage_name] = {"backend": self.backend, "model": turn.model,
                                    "requests": turn.requests, **_figures(state)}
        out_row["metadata"] = metadata
        return out_row


def _figures(state: Forced) -> dict[str, Any]:
    return {"thinking_tokens": state.thinking_tokens, "answer_tokens": state.answer_tokens,
            "waits": state.waits, "capped": state.capped}


class _Turn:
    """The assistant's turn of one row, continued round after round through the client: as
    raw text after the rendered conversation, or as a final assistant message the server
    continues (see the module docstring). A failed request raises RequestFailed, which fails
    the row."""

    def __init__(self, client: LLMClient, messages: list[Message], *,
                 template: tuple[str | None, dict[str, Any]], seed: int,
                 temperature: float | None, top_p: float | None):
        self.client = client
        self.messages = messages
        self.template, self.variables = template
        backend = client.backend
        self.raw = self.template is not None or bool(
            backend.renders_chat_template and backend.supports_raw_prompt)
        self.seed = seed
        self.temperature = temperature
        self.top_p = top_p
        self.requests = 0
        self.model = ""
        self._rendered = ""

    async def open(self) -> None:
        """Raw: render the conversation with the assistant turn open, once; each round's text
        goes after it. (A server renders it itself; the partial turn is a message of its own.)"""
        if self.template is not None:
            self._rendered = render_chat_template(self.template, self.variables, self.messages)
        elif self.raw:
            self._rendered = await self.client.backend.render_chat_template(
                self.messages, add_generation_prompt=True)

    async def continue_(self, text: str, max_tokens: int, stop: tuple[str, ...] = (),
                        *, thinking: bool = False) -> Generation:
        """One round: ``text`` (the assistant's turn so far) continued for at most
        ``max_tokens``; ``thinking``: a round inside the trace, whose tokens the backend's
        figures count as reasoning tokens."""
        if max_tokens <= 0:  # nothing left of the budget: no request (as in evaluation)
            return Generation(text="", tokens=0, finish_reason="length")
        params = GenerationParams(temperature=self.temperature, top_p=self.top_p,
                                  max_tokens=max_tokens, stop=stop or None, seed=self.seed)
        if self.raw:
            request = Request(prompt=self._rendered + text, params=params)
        else:
            request = Request(messages=[*self.messages, {"role": "assistant", "content": text}],
                              params=params)
        # The trace's tags are ours here: the text must come back as the model wrote it.
        completion = await self.client.generate(request, split_traces=False)
        self.requests += 1
        self.model = completion.model or self.model
        if thinking:
            # The backend saw plain text (the trace's tags are ours), so the client counted none
            # of it as reasoning; usage, cost, card and report count traces apart.
            uncounted = max(0, completion.completion_tokens - completion.reasoning_tokens)
            if completion.cached:
                self.client.stats.cached_reasoning_tokens += uncounted
            else:
                self.client.stats.reasoning_tokens += uncounted
        return Generation(text=_continuation(completion), tokens=completion.completion_tokens,
                          finish_reason="length" if completion.finish_reason == "length"
                          else "stop")


def load_chat_template(spec: str, base_dir: Any) -> tuple[str, dict[str, Any]]:
    """The template text of ``spec`` (a Jinja file, or a ``tokenizer_config.json``, whose
    ``bos_token``/``eos_token`` come along as variables), checked to compile; ConfigErrors
    name the file and ``chat_template``."""
    path = option_file(spec, base_dir, key="chat_template", what="chat template")
    text = path.read_text(encoding="utf-8")
    variables: dict[str, Any] = {}
    if path.suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"not JSON: {error}", path=str(path), key="chat_template") from None
        template = config.get("chat_template") if isinstance(config, dict) else None
        if not isinstance(template, str):
            raise ConfigError("holds no chat_template text (a list of named templates is not "
                              "supported; save the one you want as a Jinja file)",
                              path=str(path), key="chat_template")
        for name in ("bos_token", "eos_token"):
            token = config.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str):
                variables[name] = token
        text = template
    import jinja2

    try:  # a template with a syntax error would fail every row: refuse it now
        render_chat_template(text, variables, [{"role": "user", "content": "Hi"}])
    except RowFailure as failure:
        if isinstance(failure.__context__, jinja2.TemplateSyntaxError):
            raise ConfigError(f"the chat template does not compile: {failure.__context__}",
                              path=str(path), key="chat_template") from None
    return text, variables


def render_chat_template(template: str, variables: dict[str, Any], messages: list[Message]) -> str:
    """``messages`` rendered with the assistant turn open, by transformers' chat-template
    renderer (what ``apply_chat_template`` runs; no tokenizer needed), so templates behave as
    they do for the model's own tokenizer. A template that raises for this row fails the row."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        # (rendered texts, generation indices), whatever transformers' annotation says
        rendered: Any = render_jinja_template([messages], chat_template=template,
                                              add_generation_prompt=True, **variables)
    except Exception as error:  # jinja2 errors and the template's own raise_exception()
        raise RowFailure(f"the chat template failed on this row: {error}",
                         kind="ChatTemplateError") from None
    return str(rendered[0][0])


def _continuation(completion: Completion) -> str:
    """All the text the model wrote: a backend or server that splits a trace off (a reasoning
    parser, inline-tag parsing) has it joined back in front, because here the whole
    continuation is part of one turn that we, not the backend, take apart."""
    return (completion.reasoning or "") + completion.text


__all__ = ["BudgetForced"]
