"""A Hugging Face ``transformers`` model run in-process: a local model folder or a GGUF file.

torch and transformers are imported on first use, never with this module: the core (generation,
pipeline, CLI) must work without the ``train`` extra installed.

How requests become batches. Requests arriving together are micro-batched: each one waits in a
queue on the event loop, and while the single worker thread runs one batch the next gathers.
All model work (loading, generating, scoring) runs on that one thread, so the event loop never
blocks and the model is never used from two threads at once.

Decoding is a small loop of our own rather than ``model.generate``, for three reasons: each row of
a batch keeps its own stop strings, token budget, logprobs and random generator (``generate``
takes one setting per batch and no ``torch.Generator``); temperature and top_p mean exactly what
they mean in the OpenAI API (``generate`` also applies the model's generation_config, e.g.
top_k=50 or a repetition penalty); and the logprobs come from the raw, temperature-unscaled
scores, the same shape as the llama.cpp backend returns.

What decides a batch:

* greedy requests (temperature 0) and unseeded sampled requests share batches, left-padded;
* a *seeded* sampled request runs alone. A row's numbers depend in their last bits on the shape
  of the batch it runs in (padding shifts how matrix products and softmax sums are grouped), and
  sampling turns such a difference into a different token whenever a random draw falls near a
  boundary. Alone, a seeded request gives the same text whatever else is queued; batched, it
  would depend on its neighbours. Greedy rows are batched anyway: an argmax flips only on a
  near-tie, which is rare, and a pipeline caches the first answer.

Scoring (:meth:`TransformersBackend.score`, teacher forcing) is pooled: up to
``SCORE_POOL_BATCHES`` batches' worth of waiting score calls are taken at once, sorted by length
(longest first) and run ``batch_size`` sequences (and at most ``batch_tokens`` padded tokens) a
forward pass, left-padded with position ids counted from each row's first real token, with
logits made only for the scored positions. This is what IFD (:mod:`stillroom.curate.ifd`) and
the teacher_logprobs stage score through; ``score_tokens`` (given ids, an on-policy teacher)
joins the same pool.

A folder's cache identity is its name and a hash of its config.json; a GGUF's is its file name
and size (as for the llama.cpp backend), also when its weights load from the de-quantized copy
that :mod:`stillroom.llm.gguf_dense` keeps (the same numbers, loaded in a fraction of the time);
a model handed over in memory (:meth:`TransformersBackend.from_model`) is known by the name it is
given. Weights retrained
into the same folder with the same config are therefore not told apart: save each checkpoint
under a new name, or run without the request cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.batching import Job, MicroBatcher
from stillroom.llm.gguf_dense import dense_folder
from stillroom.llm.llamacpp import EMBEDDED_MODEL_NAME, embedded_model_path
from stillroom.llm.torch_device import resolve_device
from stillroom.llm.transformers_scoring import SCORE_POOL_BATCHES, Prompt, TeacherForcedScoring
from stillroom.llm.types import BackendError, Completion, Message, Request

_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(slots=True)
class _Row:
    """One sequence being decoded, with its own settings and results."""

    index: int
    prompt_ids: list[int]
    budget: int
    stop: tuple[str, ...]
    top_logprobs: int | None
    temperature: float  # 0 = greedy
    top_p: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    generator: Any = None
    ids: list[int] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None


def locate(model: str | None) -> tuple[Path, str | None]:
    """The folder to load from and, for a GGUF, the file name inside it."""
    path = Path(model).expanduser() if model else embedded_model_path()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_file():
        raise ConfigError(
            f"{path} is a file but not a .gguf; name the folder holding the model instead",
            key="model",
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} has no config.json, so it is not a transformers model folder; "
                "name a folder written by save_pretrained, or a .gguf file",
                key="model",
            )
        return path, None
    raise ConfigError(
        f"no model folder or .gguf file at {path}; the transformers backend loads local files "
        "only (download the model first, e.g. with `huggingface-cli download`)",
        key="model",
    )


def _plain_messages(messages: list[Message]) -> list[Message]:
    """Content lists flattened to text: chat templates of small models expect strings."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(
                block.get("text", "") if isinstance(block, dict) else str(block)
                for block in content
            )
        out.append({**message, "content": content})
    return out


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids ``tokenizer`` puts before plain text when it adds special tokens (its BOS, if
    any), found by tokenizing a probe both ways: a post-processor may also add ids after the
    text (an EOS), which a prompt to be continued must not end with."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    bos = tokenizer.bos_token_id  # the probe merged with a special token: assume a plain BOS
    return [int(bos)] if bos is not None and full[:1] == [bos] else []


class TransformersBackend(TeacherForcedScoring, Backend):
    kind = "transformers"
    supports_logprobs = True
    # Decoding is not constrained: LLMClient validates the text against the schema and re-asks.
    supports_json_schema = False
    # No tool API: LLMClient asks in plain turns and parses <tool_call> blocks
    # (stillroom.llm.tool_emulation). Decoding is not constrained, so under tool_choice
    # "required" the model is only told the call format and may not follow it.
    supports_tools = False
    supports_raw_prompt = True
    supports_scoring = True
    supports_token_scoring = True

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        max_new_tokens: int = 1024,
        batch_tokens: int | None = None,
    ):
        folder, gguf_file = locate(model_path)
        super().__init__(EMBEDDED_MODEL_NAME if model_path is None else gguf_file or folder.name)
        self.folder: Path | None = folder
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = dtype
        self._setup(batch_size, batch_tokens, max_new_tokens)

    def _setup(self, batch_size: int, batch_tokens: int | None, max_new_tokens: int) -> None:
        self.batch_size = batch_size
        # Most padded tokens in one scoring pass (None: batch_size alone bounds it).
        self.batch_tokens = batch_tokens
        self.max_new_tokens = max_new_tokens
        self.score_passes = 0  # forward passes made by score(), for a look at the batching
        self._model: Any = None
        self._tokenizer: Any = None
        self._leading: list[int] = []  # what the tokenizer adds before raw text (a BOS)
        self._torch: Any = None
        self._device: Any = None
        self._eos: set[int] = set()
        self._pad_id = 0
        self._max_positions: int | None = None
        self._keeps_logits = False
        self._pieces: dict[int, str] = {}
        # Job kinds: "batch" (greedy or unseeded), "seeded" (runs alone) or "score".
        self._batcher = MicroBatcher("transformers", self._take_batch, self._run_batch)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        batch_size: int = 8,
        batch_tokens: int | None = None,
        max_new_tokens: int = 1024,
    ) -> TransformersBackend:
        """A backend over a causal LM and its tokenizer already in memory (a test, a notebook,
        a model just loaded or trained); it runs where the weights are. Its cache identity is
        ``name``: give each model its own name, or use no request cache."""
        backend = cls.__new__(cls)
        Backend.__init__(backend, name)
        backend.folder = None
        backend.gguf_file = None
        parameter = next(model.parameters())
        backend.device = str(parameter.device)
        backend.dtype = str(parameter.dtype).removeprefix("torch.")
        backend._setup(batch_size, batch_tokens, max_new_tokens)
        backend._use(model.eval(), tokenizer, model.config, parameter.device)
        return backend

    def cache_identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.kind}
        if self.folder is None:
            out.update(model=self.model)
        elif self.gguf_file is not None:
            path = self.folder / self.gguf_file
            out.update(model=path.name, size=path.stat().st_size)
        else:
            config = (self.folder / "config.json").read_bytes()
            out.update(model=self.folder.name, config=hashlib.sha256(config).hexdigest()[:16])
        # Both change the answer: bf16 greedy decoding drifts from fp32's, and the default
        # length caps every request that sets no max_tokens.
        out.update(dtype=self.dtype, max_new_tokens=self.max_new_tokens)
        return out

    # -- the worker thread ---------------------------------------------------------------------

    def _worker(self) -> ThreadPoolExecutor:
        return self._batcher.worker()

    def load(self) -> None:
        """Load the weights now rather than on the first request (blocks until loaded)."""
        self._worker().submit(self._load_sync).result()

    def _load_sync(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        assert self.folder is not None  # from_model backends are loaded already
        folder, kwargs = self._source()
        device = resolve_device(self.device)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        # Parsed once here and handed on: given no config, from_pretrained parses a GGUF twice.
        config = AutoConfig.from_pretrained(folder, **kwargs)
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, **kwargs)
        model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to oddly
        self._use(model, tokenizer, config, torch.device(device))

    def _source(self) -> tuple[Path, dict[str, Any]]:
        """Where the weights load from: the model folder, or for a GGUF its de-quantized copy
        (made on the first load; the same float32 weights, cast to ``dtype`` as the GGUF's
        would be), else the GGUF itself. The cache identity still names the GGUF."""
        assert self.folder is not None
        if self.gguf_file is None:
            return self.folder, {}
        dense = dense_folder(self.folder / self.gguf_file)
        if dense is not None:
            return dense, {}
        return self.folder, {"gguf_file": self.gguf_file}

    def _use(self, model: Any, tokenizer: Any, config: Any, device: Any) -> None:
        """Take a loaded model and tokenizer into use (``device``: where the weights are)."""
        import torch

        eos: set[int] = set()
        for source in (
            tokenizer.eos_token_id,
            getattr(model.generation_config, "eos_token_id", None),
        ):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(token) for token in source)
        pad = tokenizer.pad_token_id
        # Padding is masked out, so its id only has to be a valid one.
        self._pad_id = int(pad if pad is not None else min(eos, default=0))
        self._eos = eos
        self._max_positions = getattr(config, "max_position_embeddings", None)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._torch = torch
        self._device = device
        self._tokenizer = tokenizer
        self._leading = leading_special_ids(tokenizer)
        self._model = model

    # -- micro-batching on the event loop --------------------------------------------------------

    async def _submit(self, kind: str, payload: Any) -> Any:
        return await self._batcher.submit(kind, payload)

    def _take_batch(self, waiting: list[Job]) -> tuple[list[Job], list[Job]]:
        """The oldest waiting job and up to batch_size - 1 more of its kind, oldest first
        (scores: up to SCORE_POOL_BATCHES batches' worth, which _score_sync splits)."""
        kind = waiting[0].kind
        limit = 1 if kind == "seeded" else self.batch_size
        if kind == "score":
            limit *= SCORE_POOL_BATCHES
        batch: list[Job] = []
        rest: list[Job] = []
        for job in waiting:
            (batch if job.kind == kind and len(batch) < limit else rest).append(job)
        return batch, rest

    def _run_batch(self, jobs: list[Job]) -> list[Any]:
        work = self._score_sync if jobs[0].kind == "score" else self._generate_sync
        return work([job.payload for job in jobs])  # type: ignore[operator]

    # -- generation ------------------------------------------------------------------------------

    async def generate(self, request: Request) -> Completion:
        sampled = request.params.temperature != 0
        kind = "seeded" if sampled and request.effective_seed() is not None else "batch"
        result: Completion = await self._submit(kind, request)
        return result

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self._tokenizer
        if prompt is None:
            return []
        if isinstance(prompt, str):
            # Raw text is read as written, plus the tokenizer's leading special tokens (its BOS)
            # unless the text already starts with them: a prompt rendered from (or cut from) a
            # chat template holds the template's BOS text, and a second BOS would change what
            # the model sees (Magpie's reference tokenizes its pre-query text without special
            # tokens). Nothing is added after the text: an EOS there would end it.
            ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            leading = self._leading
            if leading and ids[: len(leading)] != leading:
                ids = [*leading, *ids]
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

    def _row(self, index: int, request: Request) -> _Row:
        params = request.params
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
        if self._max_positions:
            room = self._max_positions - len(prompt_ids)
            if room <= 0:
                raise BackendError(
                    f"the prompt is {len(prompt_ids)} tokens and {self.model} holds "
                    f"{self._max_positions}; shorten the prompt",
                    kind="BadRequestError",
                    status=400,
                )
            budget = min(budget, room)
        temperature = 1.0 if params.temperature is None else float(params.temperature)
        row = _Row(
            index=index,
            prompt_ids=prompt_ids,
            budget=budget,
            stop=tuple(s for s in params.stop or () if s),
            top_logprobs=params.top_logprobs,
            temperature=temperature,
            top_p=1.0 if params.top_p is None else float(params.top_p),
            presence_penalty=float(params.presence_penalty or 0.0),
            frequency_penalty=float(params.frequency_penalty or 0.0),
        )
        if temperature != 0:
            row.generator = self._torch.Generator(device=self._device)
            seed = request.effective_seed()
            if seed is None:
                row.generator.seed()  # fresh entropy: an unseeded request need not reproduce
            else:
                row.generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        return row

    def _generate_sync(self, requests: list[Request]) -> list[Completion | BackendError]:
        self._load_sync()
        results: list[Completion | BackendError | None] = [None] * len(requests)
        rows = []
        for index, request in enumerate(requests):
            try:
                rows.append(self._row(index, request))
            except BackendError as error:
                results[index] = error
        if rows:
            with self._torch.inference_mode():
                self._decode(rows)
            for row in rows:
                results[row.index] = self._completion(row)
        return results  # type: ignore[return-value]

    def _padded(self, sequences: list[list[int]]) -> tuple[Any, Any, Any]:
        """Left-padded ids, attention mask and position ids (each row's positions from 0)."""
        torch = self._torch
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[i, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self._device
        return input_ids.to(device), mask.to(device), positions.to(device)

    def _forward(
        self, input_ids: Any, mask: Any, positions: Any, *, keep: int, past: Any = None, cache: bool
    ) -> Any:
        """One forward pass; only the last ``keep`` positions' logits are made when possible
        (a full prompt's logits are prompt length x vocabulary floats per row)."""
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._keeps_logits else {}
        if past is not None:
            kwargs["past_key_values"] = past
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=cache,
            **kwargs,
        )
        if not self._keeps_logits:
            out.logits = out.logits[:, -keep:, :]
        return out

    def _decode(self, rows: list[_Row]) -> None:
        torch = self._torch
        input_ids, mask, positions = self._padded([row.prompt_ids for row in rows])
        top_k = max((row.top_logprobs or 0 for row in rows), default=0)
        want_logprobs = any(row.top_logprobs is not None for row in rows)
        every_row = torch.arange(len(rows), device=self._device)
        picked: list[float] = []
        top_values: list[list[float]] = []
        top_ids: list[list[int]] = []
        past = None
        for _ in range(max(row.budget for row in rows)):
            out = self._forward(input_ids, mask, positions, keep=1, past=past, cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            for i, row in enumerate(rows):
                if row.finish is None and row.ids and (row.presence_penalty or row.frequency_penalty):
                    self._penalize(logits[i], row)
            chosen = logits.argmax(dim=-1).tolist()
            for i, row in enumerate(rows):
                if row.finish is None and row.temperature != 0:
                    chosen[i] = self._sample(logits[i], row)
            if want_logprobs:
                logprobs = torch.log_softmax(logits, dim=-1)
                picked = logprobs[every_row, torch.tensor(chosen, device=self._device)].tolist()
                if top_k:
                    top = logprobs.topk(top_k, dim=-1)
                    top_values, top_ids = top.values.tolist(), top.indices.tolist()
            for i, row in enumerate(rows):
                if row.finish is not None:
                    continue
                token = chosen[i]
                if token in self._eos:
                    row.finish = "stop"
                    continue
                row.ids.append(token)
                if row.top_logprobs is not None:
                    k = row.top_logprobs
                    row.entries.append(
                        {
                            "token": self._piece(token),
                            "id": token,
                            "logprob": picked[i],
                            "top_logprobs": [
                                {"token": self._piece(t), "id": t, "logprob": v}
                                for t, v in zip(top_ids[i][:k], top_values[i][:k], strict=True)
                            ]
                            if k
                            else [],
                        }
                    )
                if row.stop and self._stop_at(row) is not None:
                    row.finish = "stop"
                elif len(row.ids) >= row.budget:
                    row.finish = "length"
            if all(row.finish is not None for row in rows):
                break
            # Finished rows keep stepping (on a pad token) until the batch ends; their output is
            # already decided, and dropping rows from the cache would cost more than it saves.
            next_ids = [
                chosen[i] if row.finish is None else self._pad_id for i, row in enumerate(rows)
            ]
            input_ids = torch.tensor(next_ids, dtype=torch.long, device=self._device)[:, None]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            positions = positions[:, -1:] + 1

    def _penalize(self, logits: Any, row: _Row) -> None:
        """OpenAI's presence and frequency penalties over the tokens generated so far, in place."""
        torch = self._torch
        ids, counts = torch.unique(torch.tensor(row.ids, device=logits.device), return_counts=True)
        logits[ids] -= row.frequency_penalty * counts.float() + row.presence_penalty

    def _sample(self, logits: Any, row: _Row) -> int:
        """One token from softmax(logits / T), restricted to the top_p nucleus."""
        torch = self._torch
        probs = torch.softmax(logits / row.temperature, dim=-1)
        if row.top_p >= 1.0:
            return int(torch.multinomial(probs, 1, generator=row.generator))
        sorted_probs, order = probs.sort(descending=True)
        # Keep the most likely tokens until their mass reaches top_p; the first always stays.
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= row.top_p] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=row.generator)])

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._tokenizer.decode([token])
            self._pieces[token] = piece
        return piece

    def _text(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_at(self, row: _Row) -> int | None:
        """Where the first stop string starts in the row's text so far, if one appeared."""
        text = self._text(row.ids)
        found = [at for at in (text.find(stop) for stop in row.stop) if at >= 0]
        return min(found) if found else None

    def _completion(self, row: _Row) -> Completion:
        text = self._text(row.ids)
        ids, entries = row.ids, row.entries
        cut = self._stop_at(row) if row.stop else None
        if cut is not None:
            text = text[:cut]
            # Keep the tokens that begin before the stop string, so the token count and the
            # logprobs describe the text that is returned.
            kept = 0
            while kept < len(ids) and len(self._text(ids[:kept])) < cut:
                kept += 1
            ids, entries = ids[:kept], entries[:kept]
        return Completion(
            text=text,
            finish_reason=row.finish or "length",
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(ids),
            model=self.model,
            logprobs=entries if row.top_logprobs is not None else None,
        )

    def count_tokens(self, text: str) -> int | None:
        """``text``'s tokens in the model's tokenizer (an inline trace's exact count); None
        before the model is loaded."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            return None
        return len(tokenizer.encode(text, add_special_tokens=False))

    async def aclose(self) -> None:
        await self._batcher.aclose()
        self._model = None
        self._tokenizer = None
        self._pieces.clear()


@backends.register("transformers")
class TransformersConfig(BackendConfig):
    """A transformers model in-process: a local folder, a GGUF file, or the embedded SmolLM2."""

    kind: Literal["transformers"] = "transformers"
    model: str | None = Field(
        default=None, description="Path to a model folder or a .gguf file; none = embedded GGUF."
    )
    device: str = Field(default="cpu", description='"cpu", "cuda", "cuda:1"... or "auto".')
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(default=8, ge=1, description="Requests decoded together at most.")
    batch_tokens: int | None = Field(
        default=None, ge=1,
        description="Most padded tokens in one scoring pass (bounds memory); none: batch_size alone.",
    )
    max_new_tokens: int = Field(
        default=1024, ge=1, description="When a request sets no max_tokens."
    )
    concurrency: int = Field(default=16, ge=1, description="Default: 2 x batch_size.")
    # One model behind a queue: a request may wait behind many batches, which is no timeout.
    timeout: float | None = Field(default=None, gt=0)

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {
        "device",
        "batch_size",
        "batch_tokens",
    }

    @model_validator(mode="before")
    @classmethod
    def _concurrency_follows_batch(cls, data: Any) -> Any:
        # Two batches' worth in flight: one decoding while the next gathers.
        if isinstance(data, dict) and data.get("concurrency") is None:
            data = {**data, "concurrency": 2 * int(data.get("batch_size") or 8)}
        return data

    def backend_class(self) -> type[Backend]:
        return TransformersBackend

    def gpus_per_replica(self) -> float:
        # "auto" reserves none: a Ray worker without a GPU sees none, and the model runs on CPU.
        return 1 if self.device.startswith("cuda") else 0

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["model"] = Path(self.model).name if self.model else EMBEDDED_MODEL_NAME
        return out

    def build(self) -> Backend:
        needed = ["torch", "transformers"]
        if self.model is None or str(self.model).endswith(".gguf"):
            needed.append("gguf")
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(
                f"the transformers backend needs {', '.join(missing)}: "
                "install them with `pip install 'stillroom[train]'`",
                key="kind",
            )
        return TransformersBackend(
            self.model,
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            batch_tokens=self.batch_tokens,
        )
