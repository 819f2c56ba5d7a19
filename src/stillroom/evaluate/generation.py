"""Answers from the models under evaluation: a transformers model in this process, or any backend.

Both generators take a batch of prompts and return one :class:`Generation` per prompt. A prompt
is either chat turns (``[{role, content}, ...]``) or raw text that is continued as it is (budget
forcing needs that: it writes into the assistant's turn).

:class:`TransformersGenerator` renders chat turns with
:func:`stillroom.train.common.render_prompt` (the chat template with the assistant header), the
very text SFT trains on, and decodes with a small loop of its own, batched:

* prompts are left-padded so every row's next token sits in the last column; the attention
  mask hides the padding and position ids count from each row's first real token. SmolLM2's
  pad token is its end-of-turn/EOS token (``<|im_end|>``), harmless here because padding is
  masked and a row stops at its first EOS, which is never part of the returned text;
* greedy by default (argmax); with ``temperature > 0`` it samples from softmax(logits / T)
  within the top_p nucleus, from a torch generator seeded by ``seed``;
* a row stops at EOS, at a stop string (the text before it is returned) or at its own token
  budget; finished rows step on padding until the batch ends.

We do not call ``model.generate``: it also applies the checkpoint's ``generation_config``
(top_k, repetition penalties...), which would make "greedy" mean different things for different
checkpoints, and it gives no per-row budget or finish reason.

:class:`BackendGenerator` sends requests through :class:`~stillroom.llm.client.LLMClient`
(retries, the request cache) on one event loop that lives as long as the generator: the
llama.cpp backend, an OpenAI-compatible server, the transformers backend. Chat turns go as chat
messages (the server applies its template); raw text needs a backend that takes raw prompts.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stillroom.llm.types import GenerationParams, Message, Request, RequestFailed

Prompt = list[Message] | str
"""Chat turns, or raw text continued as it is."""


@dataclass(slots=True)
class Generation:
    text: str
    tokens: int  # generated tokens (an EOS that ended the text is not counted)
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (the token budget ran out)
    error: str | None = None  # a request that failed after its retries (backends only)


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


# -- transformers ------------------------------------------------------------------------------


class TransformersGenerator:
    """Batched decoding with a loaded transformers model and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        batch_size: int = 8,
        sampling: Sampling = Sampling(),
    ):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.sampling = sampling
        self.device = next(model.parameters()).device
        eos = tokenizer.eos_token_id
        extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = [eos] + (extra if isinstance(extra, list) else [extra])
        self.eos: set[int] = {int(i) for i in ids if i is not None}
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (eos if eos is not None else 0))
        # Only the last position's logits are needed to pick a token; a whole prompt's logits
        # are prompt length x vocabulary floats per row (the LM head is the costliest matmul).
        forward = inspect.signature(model.forward).parameters
        self.keep_last: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self.tokens_generated = 0
        self.seconds = 0.0

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

    def render(self, turns: list[Message]) -> str:
        from stillroom.train.common import render_prompt

        return render_prompt([{"role": m["role"], "content": str(m["content"])} for m in turns],
                             self.tokenizer)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt: a chat template's text already holds its special
        tokens, so none are added; plain text gets the tokenizer's usual ones (e.g. BOS)."""
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | Sequence[int],
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        limits = budgets(max_new_tokens, len(prompts))
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        encoded = [self.encode_prompt(text) for text in texts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding
        results: list[Generation | None] = [None] * len(prompts)
        started = time.perf_counter()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            outs = self._decode([encoded[i] for i in chunk], [limits[i] for i in chunk],
                                tuple(s for s in stop if s), seed=self.sampling.seed + start)
            for index, out in zip(chunk, outs, strict=True):
                results[index] = out
                self.tokens_generated += out.tokens
        self.seconds += time.perf_counter() - started
        return [r for r in results if r is not None]

    def _decode(
        self, prompts: list[list[int]], limits: list[int], stop: tuple[str, ...], seed: int
    ) -> list[Generation]:
        torch = self.torch
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt_ids in enumerate(prompts):
            input_ids[row, width - len(prompt_ids):] = torch.tensor(prompt_ids, dtype=torch.long)
            mask[row, width - len(prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        generator = None
        if self.sampling.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        ids: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None if limit > 0 else "length" for limit in limits]
        past = None
        with torch.inference_mode():
            for _ in range(max(limits, default=0)):
                if all(f is not None for f in finish):
                    break
                out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=past, use_cache=True, **self.keep_last)
                past = out.past_key_values
                chosen = self._choose(out.logits[:, -1, :].float(), generator)
                for row, token in enumerate(chosen):
                    if finish[row] is not None:
                        continue
                    if token in self.eos:
                        finish[row] = "stop"
                        continue
                    ids[row].append(token)
                    if stop and self._stop_at(ids[row], stop) is not None:
                        finish[row] = "stop"
                    elif len(ids[row]) >= limits[row]:
                        finish[row] = "length"
                step = [t if f is None else self.pad_id for t, f in zip(chosen, finish, strict=True)]
                input_ids = torch.tensor(step, dtype=torch.long, device=self.device)[:, None]
                mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=-1)
                positions = positions[:, -1:] + 1
        return [self._result(row_ids, f or "length", stop) for row_ids, f in zip(ids, finish, strict=True)]

    def _choose(self, logits: Any, generator: Any) -> list[int]:
        torch = self.torch
        if self.sampling.temperature <= 0:
            return [int(t) for t in logits.argmax(dim=-1).tolist()]
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep the most likely tokens until their mass reaches top_p; the first always stays.
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= self.sampling.top_p] = 0.0
            picked = torch.multinomial(sorted_probs, 1, generator=generator)
            return [int(t) for t in order.gather(-1, picked)[:, 0].tolist()]
        return [int(t) for t in torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()]

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _stop_at(self, ids: list[int], stop: tuple[str, ...]) -> int | None:
        text = self._text(ids)
        found = [at for at in (text.find(s) for s in stop) if at >= 0]
        return min(found) if found else None

    def _result(self, ids: list[int], finish: str, stop: tuple[str, ...]) -> Generation:
        text = self._text(ids)
        cut = self._stop_at(ids, stop) if stop else None
        if cut is not None:
            text = text[:cut]
        return Generation(text=text, tokens=len(ids), finish_reason=finish)

    def close(self) -> None:
        self.model = None


# -- any stillroom backend --------------------------------------------------------------------


class BackendGenerator:
    """Requests to a stillroom backend through an LLMClient, on one private event loop."""

    def __init__(
        self, config: Any, *, name: str, sampling: Sampling = Sampling(), use_cache: bool = True
    ):
        from stillroom.llm.cache import RequestCache
        from stillroom.llm.client import LLMClient

        self.name = name
        self.config = config
        self.sampling = sampling
        self.loop = asyncio.new_event_loop()
        self.cache = RequestCache.in_dir() if use_cache else None
        self.client = LLMClient(
            config.build(), cache=self.cache, concurrency=config.concurrency, timeout=config.timeout,
            max_retries=config.max_retries, retry_base_delay=config.retry_base_delay,
            retry_max_delay=config.retry_max_delay,
        )
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

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | Sequence[int],
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        limits = budgets(max_new_tokens, len(prompts))
        requests = [
            Request(prompt=p, params=self._params(limit, stop)) if isinstance(p, str)
            else Request(messages=list(p), params=self._params(limit, stop))
            for p, limit in zip(prompts, limits, strict=True)
        ]
        started = time.perf_counter()
        results = self.loop.run_until_complete(self._all(requests))
        self.seconds += time.perf_counter() - started
        self.tokens_generated += sum(r.tokens for r in results)
        return results

    async def _all(self, requests: list[Request]) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request: Request) -> Generation:
        try:
            completion = await self.client.generate(request)
        except RequestFailed as failed:
            return Generation(text="", tokens=0, finish_reason="error", error=str(failed))
        finish = "length" if completion.finish_reason == "length" else "stop"
        return Generation(text=completion.text, tokens=completion.completion_tokens,
                          finish_reason=finish)

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.aclose())
        finally:
            if self.cache is not None:
                self.cache.close()
            self.loop.close()


__all__ = [
    "BackendGenerator",
    "Generation",
    "Generator",
    "Prompt",
    "Sampling",
    "TransformersGenerator",
    "budgets",
]
