"""vLLM run in-process (offline ``vllm.LLM``): a GPU engine without a server.

Usage in a pipeline file::

    backends:
      teacher:
        kind: vllm
        model: /models/Qwen2.5-7B-Instruct   # a local folder, or a hub name already in the HF cache
        tensor_parallel_size: 2              # GPUs of one engine (one replica)
        dtype: bfloat16
        gpu_memory_utilization: 0.9
        max_model_len: 8192
        batch_size: 256                      # requests handed to one LLM.generate call at most
    stages:
      - type: complete
        backend: teacher
        top_logprobs: 5                      # logprobs work, e.g. for offline KD

stillroom downloads nothing: ``model`` is a folder on this machine or a hub name vLLM finds in
the Hugging Face cache (set ``HF_HUB_OFFLINE=1`` to make sure vLLM does not fetch it either).
vllm is imported on first use, never with this module; ``pip install vllm`` provides it
(vLLM 0.10.2 or newer: earlier V1 engines refuse to start outside the main thread).

When to pick it. ``kind: vllm`` suits a batch job on GPUs you hold for the run: no server to
start, wait for and stop, and the engine is sized for the run. ``vllm serve MODEL`` with the
``openai`` backend suits a model shared by several runs or users, or one on another machine;
it also keeps the model loaded between runs (see docs/gpu-engines.md).

What is batched. Requests arriving together are micro-batched: each waits in a queue on the event
loop and, while the single worker thread runs one ``LLM.generate`` call, the next batch gathers
(at most ``batch_size`` requests a call; ``concurrency`` defaults to two batches). vLLM schedules
the prompts of one call together (continuous batching), which is what makes it fast; one request
per call would leave the GPU mostly idle. Each request keeps its own ``SamplingParams``: seed,
stop strings, token budget, logprobs, penalties. ``score()`` calls join the same batches.

Meaning of the settings, as in the other backends: temperature and top_p have their OpenAI
meaning (unset: 1.0 each; vLLM applies no top_k, min_p or repetition penalty to explicit
``SamplingParams``, and the model's generation_config only fills in when none are given), a
request without ``max_tokens`` gets ``max_new_tokens``, and the budget is capped to what fits in
``max_model_len``. A seeded request samples with its own generator, but vLLM does not promise
the same numbers whatever the batch holds, so its answer may change in the last bits with its
neighbours (the request cache keeps the first answer). Logprobs are vLLM's, i.e. of the raw
model distribution (temperature-unscaled), in the llama.cpp backend's format; the EOS or stop
token a request ended on is not reported, and a stop string is cut with the tokens from the one
holding it on.

Errors: a prompt longer than the model holds fails that request alone (``BadRequestError``
400); an engine failure fails the batch's requests, not retried (``InternalServerError``).

GPUs per replica. One backend is one engine on ``tensor_parallel_size`` GPUs
(:meth:`VLLMConfig.gpus_per_replica`). Under the Ray executor each worker builds its own engine,
so N workers are N data-parallel replicas, each reserving that many GPUs.

Cache identity: a local folder's name and a hash of its config.json (as for the transformers
backend), or the hub name; plus dtype, max_new_tokens, max_model_len and any ``engine_args``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.batching import Job, MicroBatcher
from stillroom.llm.transformers_backend import _plain_messages
from stillroom.llm.types import BackendError, Completion, Message, Request

Prompt = list[Message] | str | None
"""Chat messages (the chat template is applied), raw text, or nothing (unconditional)."""


@dataclass(slots=True)
class _Prepared:
    """One job turned into an engine input, and what its output becomes."""

    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams
    job: Any  # the Request, or (context ids, target ids, top_logprobs) for a score


def _local_folder(model: str) -> Path | None:
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def _engine_max_len(llm: Any) -> int | None:
    """The context length the engine settled on (max_model_len, or the model's own)."""
    engine = getattr(llm, "llm_engine", None)
    for owner in (engine, getattr(engine, "vllm_config", None), llm):
        value = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        if isinstance(value, int):
            return value
    return None


class VLLMBackend(Backend):
    kind = "vllm"
    supports_logprobs = True
    supports_json_schema = True  # vLLM's structured outputs constrain decoding to the schema
    supports_tools = False  # LLMClient emulates tools (stillroom.llm.tool_emulation)
    supports_raw_prompt = True
    supports_scoring = True
    supports_token_scoring = True
    renders_chat_template = True

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        max_logprobs: int = 20,
        batch_size: int = 256,
        max_new_tokens: int = 1024,
        engine_args: dict[str, Any] | None = None,
    ):
        folder = _local_folder(model)
        super().__init__(folder.name if folder is not None else model)
        self.model_path = str(folder) if folder is not None else model
        self.folder = folder
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.max_logprobs = max_logprobs
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.engine_args = dict(engine_args or {})
        self._llm: Any = None
        self._tokenizer: Any = None
        self._max_len: int | None = None
        self._pieces: dict[int, str] = {}
        # Job kinds: "generate" or "score"; both go into the same LLM.generate call.
        self._batcher = MicroBatcher("vllm", self._take_batch, self._run_sync)

    def cache_identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.kind, "model": self.model}
        if self.folder is not None and (self.folder / "config.json").is_file():
            config = (self.folder / "config.json").read_bytes()
            out["config"] = hashlib.sha256(config).hexdigest()[:16]
        # Each changes answers: bf16 drifts from fp32, the default length caps requests with no
        # max_tokens, the context length caps every budget, engine_args may quantize.
        out.update(dtype=self.dtype, max_new_tokens=self.max_new_tokens)
        if self.max_model_len is not None:
            out["max_model_len"] = self.max_model_len
        if self.engine_args:
            out["engine_args"] = self.engine_args
        return out

    # -- the engine, on its own thread ----------------------------------------------------------

    def _worker(self) -> ThreadPoolExecutor:
        # One thread: an LLM object is not safe to call from two threads at once.
        return self._batcher.worker()

    def load(self) -> None:
        """Start the engine now rather than on the first request (blocks until loaded)."""
        self._worker().submit(self._load_sync).result()

    def _load_sync(self) -> None:
        if self._llm is not None:
            return
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "max_logprobs": self.max_logprobs,
            **self.engine_args,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        try:
            llm = LLM(**kwargs)
        except Exception as error:
            raise BackendError(
                f"vLLM could not start {self.model_path} ({type(error).__name__}: {error})",
                kind="InternalServerError",
            ) from error
        self._tokenizer = llm.get_tokenizer()
        self._max_len = _engine_max_len(llm) or self.max_model_len
        self._llm = llm

    # -- micro-batching on the event loop -------------------------------------------------------

    async def _submit(self, kind: str, payload: Any) -> Any:
        return await self._batcher.submit(kind, payload)

    def _take_batch(self, waiting: list[Job]) -> tuple[list[Job], list[Job]]:
        """Up to batch_size waiting jobs, oldest first (generations and scores mix freely)."""
        return waiting[: self.batch_size], waiting[self.batch_size :]

    def _run_sync(self, jobs: list[Job]) -> list[Any]:
        """One LLM.generate call for every job that could be prepared; results in job order."""
        self._load_sync()
        results: list[Any] = [None] * len(jobs)
        prepared: list[tuple[int, _Prepared]] = []
        for index, job in enumerate(jobs):
            try:
                item: _Prepared | None
                if job.kind == "generate":
                    item = self._prepare_generate(job.payload)
                elif job.kind == "score_tokens":
                    item = self._prepare_score_tokens(*job.payload)
                else:
                    item = self._prepare_score(*job.payload)
            except BackendError as error:
                results[index] = error
                continue
            if item is None:  # an empty completion to score: nothing to ask the engine
                results[index] = []
            else:
                prepared.append((index, item))
        outputs = self._engine_generate([item for _, item in prepared])
        for (index, item), output in zip(prepared, outputs, strict=True):
            if isinstance(output, BackendError):
                results[index] = output
                continue
            try:
                results[index] = (
                    self._completion(item, output)
                    if isinstance(item.job, Request)
                    else self._scored(item, output)
                )
            except Exception as error:  # an output of a shape we do not know
                results[index] = BackendError(
                    f"vLLM returned an unreadable output ({type(error).__name__}: {error})",
                    kind="InternalServerError",
                )
        return results

    def _engine_generate(self, items: list[_Prepared]) -> list[Any]:
        """RequestOutputs in input order; a BackendError in place of each that failed."""
        if not items:
            return []
        prompts = [{"prompt_token_ids": item.prompt_ids} for item in items]
        try:
            outputs = self._llm.generate(
                prompts, [item.params for item in items], use_tqdm=False
            )
        except (ValueError, TypeError) as error:
            # vLLM validates every request before running any: one bad request fails the
            # call. Run them one by one so only that request fails.
            if len(items) > 1:
                return [out for item in items for out in self._engine_generate([item])]
            return [
                BackendError(
                    f"vLLM refused the request ({type(error).__name__}: {error})",
                    kind="BadRequestError",
                    status=400,
                )
            ]
        except Exception as error:  # the engine died (out of memory, a CUDA error...)
            failure = BackendError(
                f"the vLLM engine failed ({type(error).__name__}: {error})",
                kind="InternalServerError",
            )
            return [failure] * len(items)
        return list(outputs)

    # -- prompts and parameters -----------------------------------------------------------------

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self._tokenizer
        if prompt is None:
            return []
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            bos = tokenizer.bos_token_id
            # A prompt cut from a chat template may already start with the BOS text.
            if bos is not None and ids[:2] == [bos, bos]:
                ids = ids[1:]
            return ids
        try:
            text = tokenizer.apply_chat_template(
                _plain_messages(prompt), add_generation_prompt=True, tokenize=False
            )
        except Exception as error:  # no chat template, or the template rejects these messages
            raise BackendError(
                f"{self.model}'s chat template cannot format these messages "
                f"({type(error).__name__}: {error}); fix the messages or send a raw `prompt`",
                kind="BadRequestError",
            ) from error
        # The template already holds any BOS token.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _check_logprobs(self, count: int | None) -> None:
        if count is not None and count > self.max_logprobs:
            raise BackendError(
                f"{count} top logprobs were asked for and the engine allows {self.max_logprobs}; "
                "raise `max_logprobs` in the backend's config",
                kind="BadRequestError",
                status=400,
            )

    def _too_long(self, length: int, what: str) -> BackendError:
        return BackendError(
            f"{what} {length} tokens and {self.model} holds {self._max_len}; shorten it",
            kind="BadRequestError",
            status=400,
        )

    def _prepare_generate(self, request: Request) -> _Prepared:
        from vllm import SamplingParams

        params = request.params
        self._check_logprobs(params.top_logprobs)
        prompt_ids = self._prompt_ids(
            request.messages if request.messages is not None else request.prompt
        )
        if not prompt_ids:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise BackendError(
                    "the prompt is empty; give the model something to continue",
                    kind="BadRequestError",
                )
            prompt_ids = [int(bos)]
        budget = params.max_tokens if params.max_tokens is not None else self.max_new_tokens
        if self._max_len:
            room = self._max_len - len(prompt_ids)
            if room <= 0:
                raise self._too_long(len(prompt_ids), "the prompt is")
            budget = min(budget, room)
        seed = request.effective_seed()
        kwargs: dict[str, Any] = {
            "n": 1,
            "temperature": 1.0 if params.temperature is None else float(params.temperature),
            "top_p": 1.0 if params.top_p is None else float(params.top_p),
            "max_tokens": budget,
            "stop": [s for s in params.stop or () if s] or None,
            # vLLM seeds a torch generator, which takes 64 bits at most.
            "seed": None if seed is None else seed & 0x7FFF_FFFF_FFFF_FFFF,
            "presence_penalty": float(params.presence_penalty or 0.0),
            "frequency_penalty": float(params.frequency_penalty or 0.0),
            "logprobs": params.top_logprobs,
        }
        if params.json_schema is not None:
            kwargs.update(_structured(params.json_schema))
        return _Prepared(prompt_ids, SamplingParams(**kwargs), request)

    def _prepare_score(
        self,
        prompt: Prompt,
        completion: str,
        top_logprobs: int | None,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> _Prepared | None:
        from vllm import SamplingParams

        self._check_logprobs(top_logprobs)
        tokenizer = self._tokenizer
        # Raw text, "" included, is read with the tokenizer's default leading special tokens;
        # None is the completion alone after the BOS token.
        context = self._prompt_ids(prompt)
        if prompt is None and tokenizer.bos_token_id is not None:
            context = [int(tokenizer.bos_token_id)]
        target = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        cut = False
        if max_tokens is not None and len(target) > max_tokens:
            target, cut = target[: max(0, max_tokens)], True
        # The engine must still generate one token after the scored text.
        limit = self._max_len - 1 if self._max_len else None
        if max_length is not None:
            limit = min(limit, max_length) if limit else max_length
        if limit and len(context) + len(target) > limit:
            if max_length is None:
                raise self._too_long(
                    len(context) + len(target) + 1,
                    "prompt and completion (and one generated token) are",
                )
            target, cut = target[: max(0, limit - len(context))], True
        if len(target) <= (0 if context else 1):  # nothing to score
            return None
        params = SamplingParams(
            n=1, temperature=0.0, max_tokens=1, prompt_logprobs=max(1, top_logprobs or 0)
        )
        return _Prepared(context + target, params, (context, target, top_logprobs, cut))

    def _prepare_score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None
    ) -> _Prepared:
        """Given ids as the prompt, as they are (no template, no BOS): the engine's prompt
        logprobs of ids[start:] are the scores; ``_scored`` reads them as a text score's."""
        from vllm import SamplingParams

        self._check_logprobs(top_logprobs)
        if self._max_len and len(token_ids) + 1 > self._max_len:
            raise self._too_long(len(token_ids) + 1, "the ids to score (and one generated token) are")
        params = SamplingParams(
            n=1, temperature=0.0, max_tokens=1, prompt_logprobs=max(1, top_logprobs or 0)
        )
        job = (token_ids[:start], token_ids[start:], top_logprobs, False)
        return _Prepared(list(token_ids), params, job)

    # -- outputs --------------------------------------------------------------------------------

    def _piece(self, token: int) -> str:
        # The tokenizer's text of the token alone, as the transformers backend stores it (KD
        # checks that the student's tokenizer decodes each id to it); vLLM's decoded_token can
        # carry context from its incremental detokenizer.
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._tokenizer.decode([token])
            self._pieces[token] = piece
        return piece

    def _entry(self, token: int, position: dict[int, Any], k: int | None) -> dict[str, Any]:
        """One position's logprob entry; with k, its k most likely tokens, best first."""
        entry: dict[str, Any] = {
            "token": self._piece(token),
            "id": token,
            "logprob": float(position[token].logprob),
        }
        if k is not None:
            ranked = sorted(
                position.items(),
                key=lambda item: (-float(item[1].logprob), getattr(item[1], "rank", None) or 0),
            )
            entry["top_logprobs"] = [
                {"token": self._piece(int(t)), "id": int(t), "logprob": float(lp.logprob)}
                for t, lp in ranked[:k]
            ]
        return entry

    def _text(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _completion(self, item: _Prepared, output: Any) -> Completion:
        request: Request = item.job
        out = output.outputs[0]
        ids = [int(t) for t in out.token_ids]
        k = request.params.top_logprobs
        entries = (
            [self._entry(t, pos, k) for t, pos in zip(ids, out.logprobs or [], strict=False)]
            if k is not None
            else []
        )
        finish = out.finish_reason or "length"
        stop_reason = getattr(out, "stop_reason", None)
        if finish == "stop" and isinstance(stop_reason, str):
            # vLLM cut the text before the stop string but reports every token generated: keep
            # the tokens that begin before the cut, so counts and logprobs describe the text.
            kept = 0
            while kept < len(ids) and len(self._text(ids[:kept])) < len(out.text):
                kept += 1
            ids, entries = ids[:kept], entries[:kept]
        elif finish == "stop" and ids:
            # Ended on EOS or a stop token id: left out, as the other backends leave it out.
            ids, entries = ids[:-1], entries[: len(ids) - 1]
        return Completion(
            text=out.text,
            finish_reason=finish,
            prompt_tokens=len(item.prompt_ids),
            completion_tokens=len(ids),
            model=self.model,
            logprobs=entries if k is not None else None,
        )

    def _scored(self, item: _Prepared, output: Any) -> list[dict[str, Any]]:
        context, target, k, cut = item.job
        positions = output.prompt_logprobs
        scored = []
        for j, token in enumerate(target):
            at = len(context) + j
            if at == 0:  # nothing predicts the first token of a text with no context
                continue
            scored.append(self._entry(token, positions[at], k))
        if cut and scored:
            scored[-1]["truncated"] = True
        return scored

    # -- the Backend protocol -------------------------------------------------------------------

    async def generate(self, request: Request) -> Completion:
        result: Completion = await self._submit("generate", request)
        return result

    async def score(
        self,
        prompt: Prompt,
        completion: str,
        top_logprobs: int | None = None,
        *,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``completion``'s tokens following ``prompt``.

        ``prompt`` is chat messages (the chat template with the assistant turn opened is put
        first), raw text (with the tokenizer's default leading special tokens: ``""`` is only
        those), or None for the completion on its own. ``max_length`` and ``max_tokens`` cut the
        completion as ``Backend.score`` says (the last entry then has ``"truncated": True``);
        without ``max_length`` a pair the engine cannot hold fails. One entry per completion
        token: ``{"token", "id", "logprob"}``, plus with ``top_logprobs`` the ``"top_logprobs":
        [{"token", "id", "logprob"}]`` most likely tokens at that position, best first (the
        shape a ``complete`` stage stores, so offline KD data can come from any text). With no
        prompt, the first token is scored after the BOS token, or left out when the model has
        none. Concurrent calls are batched with the requests.
        """
        result: list[dict[str, Any]] = await self._submit(
            "score", (prompt, completion, top_logprobs, max_length, max_tokens)
        )
        return result

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,  # only for text-only servers; the ids are scored here
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``token_ids[start:]`` (see ``Backend.score_tokens``):
        the ids are the engine's prompt as given, and its ``prompt_logprobs`` the scores.
        Batched with the other requests."""
        ids = [int(token) for token in token_ids]
        if not 1 <= start < len(ids):
            raise BackendError(
                f"start must be in [1, {len(ids) - 1}], got {start}", kind="BadRequestError"
            )
        result: list[dict[str, Any]] = await self._submit(
            "score_tokens", (ids, start, top_logprobs)
        )
        return result

    async def render_chat_template(
        self, messages: list[Message], *, add_generation_prompt: bool
    ) -> str:
        def render() -> str:
            self._load_sync()
            return str(
                self._tokenizer.apply_chat_template(
                    _plain_messages(messages),
                    add_generation_prompt=add_generation_prompt,
                    tokenize=False,
                )
            )

        return await asyncio.get_running_loop().run_in_executor(self._worker(), render)

    def count_tokens(self, text: str) -> int | None:
        """``text``'s tokens in the model's tokenizer (an inline trace's exact count); None
        before the model is loaded."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            return None
        return len(tokenizer.encode(text, add_special_tokens=False))

    async def aclose(self) -> None:
        await self._batcher.aclose()
        # Dropping the last reference shuts the engine down and frees its GPU memory.
        self._llm = None
        self._tokenizer = None
        self._pieces.clear()
        gc.collect()


def _structured(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keywords constraining decoding to ``schema``, for old and new vLLM."""
    try:  # vLLM 0.11+: structured_outputs (guided_decoding was removed in 0.12)
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


def _vllm_installed() -> bool:
    if sys.modules.get("vllm") is not None:
        return True
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # a module without a spec stands in sys.modules
        return False


@backends.register("vllm")
class VLLMConfig(BackendConfig):
    """vLLM's offline engine in-process, on ``tensor_parallel_size`` GPUs."""

    kind: Literal["vllm"] = "vllm"
    model: str = Field(
        description="A local model folder, or a hub name already in the Hugging Face cache "
        "(stillroom downloads nothing)."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs of one engine.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of each GPU's memory vLLM may take."
    )
    max_model_len: int | None = Field(
        default=None, ge=1, description="Context length; none = the model's own."
    )
    enforce_eager: bool = Field(
        default=False, description="No CUDA graphs: starts faster, generates slower."
    )
    max_logprobs: int = Field(
        default=20, ge=1, description="Most top logprobs (and prompt logprobs) a request may ask."
    )
    batch_size: int = Field(
        default=256, ge=1, description="Requests handed to one LLM.generate call at most."
    )
    max_new_tokens: int = Field(
        default=1024, ge=1, description="When a request sets no max_tokens."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vllm.LLM keywords (quantization, trust_remote_code, ...).",
    )
    concurrency: int = Field(default=512, ge=1, description="Default: 2 x batch_size.")
    # One engine behind a queue: a request may wait behind many batches, which is no timeout.
    timeout: float | None = Field(default=None, gt=0)

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "enforce_eager",
        "max_logprobs",
        "batch_size",
    }

    @model_validator(mode="before")
    @classmethod
    def _concurrency_follows_batch(cls, data: Any) -> Any:
        # Two batches' worth in flight: one generating while the next gathers.
        if isinstance(data, dict) and data.get("concurrency") is None:
            data = {**data, "concurrency": 2 * int(data.get("batch_size") or 256)}
        return data

    @model_validator(mode="after")
    def _engine_args_not_doubled(self) -> VLLMConfig:
        doubled = sorted(set(self.engine_args) & _OWN_KEYS)
        if doubled:
            raise ValueError(
                f"engine_args {', '.join(doubled)}: set these as the backend's own options"
            )
        return self

    def backend_class(self) -> type[Backend]:
        return VLLMBackend

    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        folder = _local_folder(self.model)
        out["model"] = folder.name if folder is not None else self.model
        return out

    def build(self) -> Backend:
        if not _vllm_installed():
            raise ConfigError(
                "the vllm backend needs vLLM: install it with `pip install vllm` "
                "(on a machine with a supported GPU)",
                key="kind",
            )
        if self.model.startswith(("/", ".", "~")) and _local_folder(self.model) is None:
            raise ConfigError(
                f"no model folder at {self.model}; stillroom downloads nothing, so name a "
                "folder on this machine or a hub name already in the Hugging Face cache",
                key="model",
            )
        return VLLMBackend(
            self.model,
            tensor_parallel_size=self.tensor_parallel_size,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            max_logprobs=self.max_logprobs,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            engine_args=self.engine_args,
        )


_OWN_KEYS = frozenset({"model", "tensor_parallel_size", "dtype", "gpu_memory_utilization",
                       "max_model_len", "enforce_eager", "max_logprobs"})
