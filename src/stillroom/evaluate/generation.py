"""Answers from the models under evaluation: a transformers model in this process, or any backend.

Both generators take a batch of prompts and return one :class:`Generation` per prompt. A prompt
is either chat turns (``[{role, content}, ...]``) or raw text that is continued as it is (budget
forcing needs that: it writes into the assistant's turn).

:class:`BackendGenerator` sends requests through :class:`~stillroom.llm.client.LLMClient`
(retries, the request cache) on one event loop that lives as long as the generator: the
llama.cpp backend, an OpenAI-compatible server, vLLM, the transformers backend. Chat turns go as
chat messages (the backend applies its template); raw text needs a backend that takes raw
prompts. A budget of 0 tokens is answered without a request (an empty text, ``length``).

:class:`TransformersGenerator` is a BackendGenerator over a transformers model already loaded in
this process (:meth:`stillroom.llm.transformers_backend.TransformersBackend.from_model`), so it
decodes with that backend's batched loop; no request cache (a checkpoint retrained into the
same folder would be served its old answers). What it adds:

* chat turns render as :func:`stillroom.train.common.render_prompt` renders them, the very text
  SFT trains on (the chat template with the assistant header, sent as messages, which the
  backend renders the same way and tokenizes without adding special tokens; a tokenizer with no
  template gets the turns' plain text, with its usual special tokens);
* prompts are sent shortest first, so the backend's batches (``batch_size`` requests) hold
  prompts of similar lengths, left-padded (the attention mask hides the padding, position ids
  count from each row's first real token);
* greedy by default (argmax, batched); with ``temperature > 0`` each prompt samples from
  softmax(logits / T) within the top_p nucleus with its own generator seeded by ``seed``, alone
  (so its text does not depend on its neighbours);
* a row stops at EOS, at a stop string (the text before it is returned; the token count is of
  that text) or at its own token budget.

Thinking modes (a model entry's ``thinking: on|off``, see :func:`thinking_prompts`): a chat
template with its own switch (``enable_thinking``, Qwen3's) is rendered with it; otherwise the
trace is opened (``on``) or closed empty before the answer (``off``: ``<think>\n\n</think>\n\n``,
the text Qwen3's template writes for ``enable_thinking=False``) in the raw prompt. A trace the
server parsed out (``Completion.reasoning``) comes back in :attr:`Generation.reasoning`; an
inline one stays in the text, for the caller to split. Without a mode, a prompt the template
itself ends with the opening tag (R1-style) is read as opened too
(:func:`stillroom.evaluate.run.opened_by_template`).

We do not call ``model.generate``: it also applies the checkpoint's ``generation_config``
(top_k, repetition penalties...), which would make "greedy" mean different things for different
checkpoints, and it gives no per-row budget or finish reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stillroom.llm.backend import Backend
from stillroom.llm.types import GenerationParams, Message, Request, RequestFailed

Prompt = list[Message] | str
"""Chat turns, or raw text continued as it is."""


@dataclass(slots=True)
class Generation:
    text: str
    tokens: int  # generated tokens (an EOS that ended the text is not counted)
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (the token budget ran out)
    error: str | None = None  # a request that failed after its retries (backends only)
    # A trace the backend returned apart from the text (a reasoning parser, thinking blocks);
    # None when it returned none (an inline trace, if any, is still in ``text``).
    reasoning: str | None = None
    reasoning_tokens: int = 0
    reasoning_tokens_estimated: bool = False
    reasoning_ended: bool = True


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class Generator(Protocol):
    """What evaluation and budget forcing need from a model."""

    name: str

    def render(self, turns: list[Message]) -> str:
        """The raw text a chat prompt becomes (chat template plus the assistant header)."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | Sequence[int],
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        """One generation per prompt; ``max_new_tokens`` is one budget or one per prompt."""
        ...

    def close(self) -> None: ...


def budgets(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    values = list(max_new_tokens)
    if len(values) != count:
        raise ValueError(f"{len(values)} token budgets for {count} prompts")
    return values


# -- any stillroom backend --------------------------------------------------------------------


class BackendGenerator:
    """Requests to a stillroom backend through an LLMClient, on one private event loop.

    ``config`` is a backend config (built here, with its retry and concurrency options);
    ``backend`` a backend already built (then ``concurrency`` requests in flight).
    """

    def __init__(
        self,
        config: Any = None,
        *,
        name: str,
        sampling: Sampling = Sampling(),
        use_cache: bool = True,
        backend: Backend | None = None,
        concurrency: int = 16,
    ):
        from stillroom.llm.cache import RequestCache
        from stillroom.llm.client import LLMClient

        self.name = name
        self.config = config
        self.sampling = sampling
        self.loop = asyncio.new_event_loop()
        self.cache = RequestCache.in_dir() if use_cache else None
        if backend is not None:
            self.client = LLMClient(backend, cache=self.cache, concurrency=concurrency,
                                    timeout=None)
        else:
            self.client = LLMClient.from_config(config, cache=self.cache)
        self.tokens_generated = 0
        self.seconds = 0.0

    @property
    def supports_raw_prompt(self) -> bool:
        return bool(self.client.backend.supports_raw_prompt)

    def render(self, turns: list[Message]) -> str:
        text = self.loop.run_until_complete(
            self.client.backend.render_chat_template(turns, add_generation_prompt=True)
        )
        return str(text)

    def _params(self, max_tokens: int, stop: Sequence[str]) -> GenerationParams:
        return GenerationParams(
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=max_tokens,
            stop=tuple(stop) or None,
            seed=self.sampling.seed,
        )

    def _request(self, prompt: Prompt, params: GenerationParams) -> Request:
        if isinstance(prompt, str):
            return Request(prompt=prompt, params=params)
        return Request(messages=list(prompt), params=params)

    def _order(self, prompts: Sequence[Prompt]) -> list[int]:
        """The order requests are sent in (the backend batches them as they come)."""
        return list(range(len(prompts)))

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | Sequence[int],
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        limits = budgets(max_new_tokens, len(prompts))
        results: list[Generation] = [Generation(text="", tokens=0, finish_reason="length")
                                     for _ in prompts]
        asked = [(index, self._request(prompts[index], self._params(limits[index], stop)))
                 for index in self._order(prompts) if limits[index] > 0]
        started = time.perf_counter()
        answers = self.loop.run_until_complete(self._all([request for _, request in asked]))
        self.seconds += time.perf_counter() - started
        for (index, _), answer in zip(asked, answers, strict=True):
            results[index] = answer
        self.tokens_generated += sum(r.tokens for r in answers)
        return results

    async def _all(self, requests: list[Request]) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request: Request) -> Generation:
        try:
            # A raw prompt is continued text whose trace tags evaluation places and reads itself
            # (thinking on, budget forcing); chat answers are split by the backend's config.
            completion = await self.client.generate(request, split_traces=request.prompt is None)
        except RequestFailed as failed:
            return Generation(text="", tokens=0, finish_reason="error", error=str(failed))
        finish = "length" if completion.finish_reason == "length" else "stop"
        return Generation(text=completion.text, tokens=completion.completion_tokens,
                          finish_reason=finish, reasoning=completion.reasoning,
                          reasoning_tokens=completion.reasoning_tokens,
                          reasoning_tokens_estimated=completion.reasoning_tokens_estimated,
                          reasoning_ended=completion.reasoning_ended)

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.aclose())
        finally:
            if self.cache is not None:
                self.cache.close()
            self.loop.close()


# -- transformers ------------------------------------------------------------------------------


class TransformersGenerator(BackendGenerator):
    """Batched decoding with a loaded transformers model and its tokenizer, through the
    transformers backend (see the module)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        batch_size: int = 8,
        sampling: Sampling = Sampling(),
    ):
        from stillroom.llm.transformers_backend import TransformersBackend

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.backend = TransformersBackend.from_model(
            self.model, tokenizer, name=name, batch_size=batch_size
        )
        # Two batches in flight: one decoding while the next gathers, in the order sent.
        super().__init__(name=name, sampling=sampling, use_cache=False, backend=self.backend,
                         concurrency=2 * batch_size)

    @classmethod
    def load(
        cls, model: str | Path | None, *, name: str, batch_size: int = 8, device: str = "cpu",
        sampling: Sampling = Sampling(),
    ) -> TransformersGenerator:
        """Load ``model`` (None = the embedded SmolLM2 GGUF) in float32 with its tokenizer."""
        from stillroom.train.student import load_model

        loaded, tokenizer = load_model(model)
        if device != "cpu":
            loaded = loaded.to(device)
        return cls(loaded, tokenizer, name=name, batch_size=batch_size, sampling=sampling)

    @property
    def templated(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, turns: list[Message]) -> str:
        from stillroom.train.common import render_prompt

        return render_prompt(_plain_turns(turns), self.tokenizer)

    def render_with(self, turns: list[Message], **template_options: Any) -> str:
        """:meth:`render` with options for the chat template (e.g. ``enable_thinking``)."""
        if not self.templated or not template_options:
            return self.render(turns)
        text: str = self.tokenizer.apply_chat_template(
            _plain_turns(turns), tokenize=False, add_generation_prompt=True, **template_options)
        return text

    def thinking_switch(self) -> bool:
        """Whether the chat template has an ``enable_thinking`` switch (it renders a prompt
        differently with it on and off)."""
        if not self.templated:
            return False
        probe: list[Message] = [{"role": "user", "content": "?"}]
        return self.render_with(probe, enable_thinking=True) != self.render_with(
            probe, enable_thinking=False)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt: a chat template's text already holds its special
        tokens, so none are added; plain text gets the tokenizer's usual ones (e.g. BOS)."""
        return list(self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"])

    def _request(self, prompt: Prompt, params: GenerationParams) -> Request:
        if isinstance(prompt, str):
            return Request(prompt=prompt, params=params)
        if self.templated:  # the backend renders them as render_prompt does
            return Request(messages=_plain_turns(prompt), params=params)
        return Request(prompt=self.render(prompt), params=params)

    def _order(self, prompts: Sequence[Prompt]) -> list[int]:
        # Shortest first: a batch then holds prompts of similar lengths (less padding).
        lengths = [len(self.encode_prompt(p if isinstance(p, str) else self.render(p)))
                   for p in prompts]
        return sorted(range(len(prompts)), key=lambda i: lengths[i])

    def close(self) -> None:
        super().close()
        self.model = None


def thinking_prompts(
    generator: Any, turns: Sequence[list[Message]], mode: str, start: str, end: str
) -> tuple[list[str], bool]:
    """Raw prompts that make a model think (``mode`` ``on``) or not (``off``), and whether the
    prompt leaves a trace open (its text then starts inside the trace).

    A transformers model whose template has an ``enable_thinking`` switch is rendered with it
    (the template's own way, whatever its tags). Otherwise the rendered prompt gets ``start``
    (on) or a trace closed empty (off), as Qwen3's template writes it for
    ``enable_thinking=False``; a template that already opens the trace in its generation prompt
    (DeepSeek-R1's distills) gets only what is missing."""
    if isinstance(generator, TransformersGenerator) and generator.thinking_switch():
        on = mode == "on"
        rendered = [generator.render_with(t, enable_thinking=on) for t in turns]
        # A switched-on template that ends in the opening tag has opened the trace itself.
        return rendered, on and all(p.rstrip().endswith(start) for p in rendered)
    prompts = []
    for turn in turns:
        prompt = generator.render(turn)
        opened = prompt.rstrip().endswith(start)
        if mode == "on":
            prompts.append(prompt if opened else f"{prompt}{start}\n")
        else:
            prompts.append(f"{prompt}\n{end}\n\n" if opened else f"{prompt}{start}\n\n{end}\n\n")
    return prompts, mode == "on"


def _plain_turns(turns: list[Message]) -> list[Message]:
    return [{"role": m["role"], "content": str(m["content"])} for m in turns]


__all__ = [
    "BackendGenerator",
    "Generation",
    "Generator",
    "Prompt",
    "Sampling",
    "TransformersGenerator",
    "budgets",
    "thinking_prompts",
]
