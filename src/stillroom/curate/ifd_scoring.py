"""IFD scoring: the instruction-answer pair of a row (:func:`example_of`), the scorer
(:class:`IFDScorer`, two teacher-forced scoring requests per pair through a backend) and the
top-fraction selection (:func:`select_top`). The stage that runs them is
:class:`stillroom.curate.ifd.IFDFilter`; the method is described there."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stillroom.data.readers import resolve_input_path
from stillroom.data.rows import PromptTemplate
from stillroom.errors import ConfigError, InputError
from stillroom.llm.cache import RequestCache
from stillroom.llm.client import LLMClient
from stillroom.llm.types import RequestFailed
from stillroom.pipeline.stage import Row

Format = Literal["auto", "alpaca", "prompt_completion", "messages"]
Dtype = Literal["float32", "bfloat16", "float16"]

PROMPT_WITH_INPUT = PromptTemplate("ifd.prompt_input", "{instruction}\n{input}\n")
PROMPT_NO_INPUT = PromptTemplate("ifd.prompt_no_input", "{instruction}\n")
DEFAULT_TOP_FRACTION = 0.1
INSTALL_HINT = "pip install 'stillroom[train]'"

REASON_EMPTY = "empty answer (nothing to score)"
REASON_ONE_TOKEN = "answer too short to score without the instruction (one token, no BOS)"
REASON_PROMPT_TOO_LONG = "the prompt fills max_length: no answer token left to score"


# -- input columns ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Example:
    """One instruction-answer pair as IFD reads it."""

    instruction: str
    input: str
    answer: str
    format: str

    @property
    def template(self) -> PromptTemplate:
        return PROMPT_WITH_INPUT if self.input else PROMPT_NO_INPUT

    @property
    def prompt(self) -> str:
        """The conditioning text: the reference's template, no system prompt, no chat markup."""
        return self.template.format(instruction=self.instruction, input=self.input)


def _text_of(content: Any) -> str:
    """A message's content as text (a list of content blocks is joined)."""
    if isinstance(content, list):
        return "".join(
            block.get("text", "") if isinstance(block, dict) else str(block) for block in content
        )
    if not isinstance(content, str):
        raise ValueError(f"a message's content must be text, got {type(content).__name__}")
    return content


def _last_turn(messages: Any, role: str, column: str, before: int | None = None) -> tuple[int, str]:
    """Index and text of the last ``role`` message in ``messages`` (before index ``before``)."""
    if not isinstance(messages, list):
        raise ValueError(f"`{column}` must be a list of messages, got {type(messages).__name__}")
    end = len(messages) if before is None else before
    for index in range(end - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"`{column}` item {index} is not a message with a `role`")
        if message["role"] == role:
            return index, _text_of(message.get("content"))
    where = "" if before is None else " before the last assistant turn"
    raise ValueError(f"`{column}` has no {role} turn{where}")


def _text_column(row: Row, column: str, *, optional: bool = False) -> str:
    value = row.get(column)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"`{column}` must be text, got {type(value).__name__}")
    return value


def detect_format(row: Row) -> str | None:
    """Which input mapping a row fits (``auto``): alpaca, prompt_completion, messages or None."""
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "messages" in row:
        return "messages"
    return None


def example_of(row: Row, format: Format = "auto") -> Example:
    """The pair in ``row``; ValueError says what is missing or wrong."""
    chosen = detect_format(row) if format == "auto" else format
    if chosen is None:
        raise ValueError(
            "IFD needs `instruction` and `output` (Alpaca; `input` optional), `prompt` and "
            f"`completion`, or `messages`; the row has {sorted(row)}"
        )
    if chosen == "alpaca":
        return Example(
            _text_column(row, "instruction"),
            _text_column(row, "input", optional=True),
            _text_column(row, "output"),
            chosen,
        )
    if chosen == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if prompt is None or completion is None:
            raise ValueError(f"format prompt_completion needs `prompt` and `completion`; the row "
                             f"has {sorted(row)}")
        instruction = (_last_turn(prompt, "user", "prompt")[1] if isinstance(prompt, list)
                       else _text_column(row, "prompt"))
        answer = (_last_turn(completion, "assistant", "completion")[1]
                  if isinstance(completion, list) else _text_column(row, "completion"))
        return Example(instruction, "", answer, chosen)
    messages = row.get("messages")
    if messages is None:
        raise ValueError(f"format messages needs `messages`; the row has {sorted(row)}")
    at, answer = _last_turn(messages, "assistant", "messages")
    _, instruction = _last_turn(messages, "user", "messages", before=at)
    return Example(instruction, "", answer, chosen)


# -- the scorer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IFDScore:
    """One pair's result. ``ifd`` and the perplexities are None when ``unscored`` says why, or
    when ``failure`` says which scoring request failed (its error kind in ``failure_kind``)."""

    ifd: float | None
    ppl_conditioned: float | None
    ppl_direct: float | None
    loss_conditioned: float | None
    loss_direct: float | None
    answer_tokens: int
    truncated: bool
    unscored: str | None = None
    failure: str | None = None
    failure_kind: str | None = None


def _not_scored(reason: str) -> IFDScore:
    return IFDScore(None, None, None, None, None, 0, False, unscored=reason)


def check_installed(gguf: bool) -> None:
    needed = ["torch", "transformers", *(["gguf"] if gguf else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"IFD scoring needs {', '.join(missing)}: install them with `{INSTALL_HINT}`",
            key="model",
        )


def resolve_model(model: str | os.PathLike[str] | None, base_dir: Path | None = None
                  ) -> tuple[Path, str | None, str]:
    """(folder, GGUF file name or None, display name) for ``model``; None = the embedded model.

    Raises ConfigError (key ``model``) for a path that is not a GGUF file or a model folder.
    """
    from stillroom.llm.llamacpp import EMBEDDED_MODEL_NAME
    from stillroom.llm.transformers_backend import locate

    if model is None:
        folder, gguf_file = locate(None)
        return folder, gguf_file, EMBEDDED_MODEL_NAME
    try:
        path = resolve_input_path(model, base_dir)
    except InputError as error:
        raise ConfigError(error.reason, key="model") from None
    folder, gguf_file = locate(str(path))
    return folder, gguf_file, gguf_file or folder.name


def _own_client(backend: Any, batch_size: int, cache: RequestCache | None) -> LLMClient:
    """A client for a backend the scorer built: enough requests in flight that the backend's
    score pools fill (two pools: one running, one gathering), no timeout (a local model's queue
    is no hang)."""
    from stillroom.llm.transformers_scoring import SCORE_POOL_BATCHES

    return LLMClient(backend, cache=cache, concurrency=2 * SCORE_POOL_BATCHES * batch_size,
                     timeout=None)


class IFDScorer:
    """IFD of (prompt, answer) pairs, scored by a backend: ``score(pairs) -> [IFDScore]``.

    ``prompt`` is the conditioning text as the model reads it (:attr:`Example.prompt` gives the
    reference's template). Each pair is two scoring requests through an
    :class:`~stillroom.llm.client.LLMClient` (its request cache, retries and limits), sent
    together so the backend batches them: the answer after the prompt, cut to ``max_length``
    tokens (``Backend.score``'s ``max_length``), and the answer read alone (``""`` as the
    prompt) under the same cut, of which the tokens kept with the prompt count. Any
    backend that can score serves them (transformers, vllm); by default a transformers backend
    on ``model`` (None: the embedded SmolLM2), which loads on first use or with :meth:`load`.
    Wrap a model and tokenizer already loaded with :meth:`from_model`, or a client of a
    pipeline's backend with :meth:`from_client`. :meth:`score` blocks (on a private event
    loop); :meth:`ascore` is the same on the caller's loop (await it where a loop already runs,
    as in a notebook). Close with :meth:`close` or :meth:`aclose` to free a model the scorer
    loaded.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 1024,
        batch_size: int = 16,
        batch_tokens: int = 4096,
        device: str = "auto",
        dtype: Dtype = "float32",
        base_dir: Path | None = None,
        cache: RequestCache | None = None,
    ):
        from stillroom.llm.torch_device import device_problem
        from stillroom.llm.transformers_backend import TransformersBackend

        _check_settings(max_length, batch_size, batch_tokens)
        problem = device_problem(device)
        if problem:
            raise ValueError(f"device {device!r}: {problem}")
        folder, gguf_file, name = resolve_model(model, base_dir)
        check_installed(gguf_file is not None)
        backend = TransformersBackend(
            None if model is None else str(folder / gguf_file if gguf_file else folder),
            device=device, dtype=dtype, batch_size=batch_size, batch_tokens=batch_tokens,
        )
        self._start(_own_client(backend, batch_size, cache), max_length, name, owns_client=True)
        self.folder: Path | None = folder
        self.gguf_file = gguf_file

    def _start(self, client: LLMClient, max_length: int, name: str, *, owns_client: bool) -> None:
        self.client = client
        self.max_length = max_length
        self.name = name
        self.folder = None
        self.gguf_file = None
        self._owns_client = owns_client
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        max_length: int = 1024,
        batch_size: int = 16,
        batch_tokens: int = 4096,
    ) -> IFDScorer:
        """A scorer over a causal LM and tokenizer already in memory (a test, a notebook),
        through a transformers backend made of them (no request cache)."""
        from stillroom.llm.transformers_backend import TransformersBackend

        _check_settings(max_length, batch_size, batch_tokens)
        backend = TransformersBackend.from_model(
            model, tokenizer, name=name, batch_size=batch_size, batch_tokens=batch_tokens
        )
        scorer = cls.__new__(cls)
        scorer._start(_own_client(backend, batch_size, None), max_length, name, owns_client=True)
        return scorer

    @classmethod
    def from_client(cls, client: LLMClient, *, max_length: int = 1024) -> IFDScorer:
        """A scorer sending its requests through ``client`` (a pipeline's backend, which must
        support scoring); the client stays open when the scorer closes."""
        if not client.backend.supports_scoring:
            raise ConfigError(
                f"the {client.backend.kind} backend cannot score a given completion; IFD needs "
                "a `transformers` or `vllm` backend",
                key="backend",
            )
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        scorer = cls.__new__(cls)
        scorer._start(client, max_length, client.backend.model, owns_client=False)
        return scorer

    @property
    def forward_calls(self) -> int | None:
        """Forward passes the backend made for scores so far (transformers), for a look at how
        the sequences were batched; None for a backend that does not count them."""
        return getattr(self.client.backend, "score_passes", None)

    def load(self) -> None:
        """Load the model now rather than on the first :meth:`score` (blocks until loaded)."""
        load = getattr(self.client.backend, "load", None)
        if load is not None:
            load()

    # -- scoring ---------------------------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[IFDScore]:
        """One :class:`IFDScore` per ``(prompt, answer)``, in order (blocks). ``progress(done,
        total)`` is called as requests finish, with counts of scoring requests (two per pair)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.ascore(pairs, progress))

    async def ascore(
        self,
        pairs: Sequence[tuple[str, str]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[IFDScore]:
        """:meth:`score` on the running event loop. Pairs are sent longest first, as many at
        once as the client lets through (its ``concurrency``), both requests of a pair
        together, so the backend batches them; only numbers are kept of each answer. A request
        that fails (after the client's retries) gives an IFDScore with ``failure`` set."""
        results: list[IFDScore | None] = [None] * len(pairs)
        todo = []
        for index, (_, answer) in enumerate(pairs):
            if answer.strip():
                todo.append(index)
            else:
                results[index] = _not_scored(REASON_EMPTY)
        # Longest first, as the backend batches: requests queued together have similar lengths.
        todo.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        total, done = 2 * len(todo), 0
        # The answer alone is scored on the tokens kept with the prompt. With the tokenizer's
        # leading special token (a Llama BOS) each of them is scored; without one nothing
        # predicts the first, which is left out: `skipped` (1 or 0), the same for every pair.
        # A pair whose answer fit whole shows it; a cut one waits for it in `pending`.
        skipped: int | None = None
        pending: dict[int, _Cut] = {}

        async def scored(prompt: str, answer: str) -> list[dict[str, Any]] | RequestFailed:
            nonlocal done
            try:
                entries: list[dict[str, Any]] | RequestFailed = await self.client.score(
                    prompt, answer, max_length=self.max_length
                )
            except RequestFailed as failed:
                entries = failed
            done += 1
            if progress is not None:
                progress(done, total)
            return entries

        async def score_pair(index: int) -> None:
            nonlocal skipped
            prompt, answer = pairs[index]
            # With the prompt (the reference cuts the joined text at max_length, so what goes is
            # the answer's end), and alone as plain text ("") under the same cut.
            with_prompt, alone = await asyncio.gather(scored(prompt, answer), scored("", answer))
            if isinstance(with_prompt, RequestFailed) or isinstance(alone, RequestFailed):
                failed = with_prompt if isinstance(with_prompt, RequestFailed) else alone
                results[index] = _failed(failed)  # type: ignore[arg-type]
            elif not with_prompt:
                results[index] = _not_scored(REASON_PROMPT_TOO_LONG)
            elif not with_prompt[-1].get("truncated"):  # nor is the answer alone cut
                skipped = len(with_prompt) - len(alone)
                results[index] = _ifd_score(
                    _logprobs(with_prompt), _logprobs(alone), truncated=False
                )
            else:
                pending[index] = _Cut(_logprobs(with_prompt), _logprobs(alone)[: len(with_prompt)])

        await _each(todo, score_pair, max(1, self.client.limiter.max_limit))
        if pending and skipped is None:  # every answer was cut: ask once how many are left out
            index, cut = next(iter(pending.items()))
            try:
                probe = await self.client.score("", pairs[index][1], max_tokens=len(cut.conditioned))
                skipped = len(cut.conditioned) - len(probe)
            except RequestFailed as failed:
                for index in pending:
                    results[index] = _failed(failed)
                pending = {}
        for index, cut in pending.items():
            assert skipped is not None
            results[index] = _ifd_score(
                cut.conditioned, cut.alone[: len(cut.conditioned) - skipped], truncated=True
            )
        return [result for result in results if result is not None]

    # -- closing ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Free the model of a backend this scorer made (a pipeline's client is left open)."""
        if self._owns_client:
            await self.client.aclose()

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.aclose())
        finally:
            loop.close()


def _check_settings(max_length: int, batch_size: int, batch_tokens: int) -> None:
    if max_length < 2 or batch_size < 1 or batch_tokens < 1:
        raise ValueError("max_length must be at least 2, batch_size and batch_tokens at least 1")


@dataclass(frozen=True, slots=True)
class _Cut:
    """A pair whose answer was cut, until it is known how many tokens alone leaves out."""

    conditioned: array[float]  # logprobs of the answer tokens kept with the prompt
    alone: array[float]  # logprobs of the answer alone: as many, or one fewer (no BOS)


async def _each(items: Sequence[int], work: Callable[[int], Awaitable[None]], width: int) -> None:
    """``work(item)`` for every item, in order, at most ``width`` at once (not one task per
    item: a million rows would be millions of tasks)."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:  # shared: each worker takes the next item
            await work(item)

    await asyncio.gather(*(worker() for _ in range(min(width, len(items)))))


def _logprobs(entries: list[dict[str, Any]]) -> array[float]:
    """The entries' logprobs, compactly; NaN for a missing one (a non-finite number comes back
    from the cache as null)."""
    return array("d", (math.nan if e.get("logprob") is None else e["logprob"] for e in entries))


def _ifd_score(conditioned: array[float], direct: array[float], *, truncated: bool) -> IFDScore:
    """The score from the logprobs of the answer tokens kept, with the prompt and alone."""
    if not direct:
        return _not_scored(REASON_ONE_TOKEN)
    conditioned_loss = -math.fsum(conditioned) / len(conditioned)
    direct_loss = -math.fsum(direct) / len(direct)
    return IFDScore(
        ifd=_exp(conditioned_loss - direct_loss),
        ppl_conditioned=_exp(conditioned_loss),
        ppl_direct=_exp(direct_loss),
        loss_conditioned=conditioned_loss,
        loss_direct=direct_loss,
        answer_tokens=len(conditioned),
        truncated=truncated,
    )


def _failed(failed: RequestFailed) -> IFDScore:
    return IFDScore(None, None, None, None, None, 0, False, failure=str(failed),
                    failure_kind=failed.kind)


def _usable(score: IFDScore | None) -> float | None:
    """The score to rank by; None for a row that was not scored or whose loss is not finite."""
    if score is None or score.unscored is not None or score.failure is not None:
        return None
    if not _finite(score.loss_conditioned, score.loss_direct):
        return None
    return score.ifd


def _finite(*values: float | None) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


# -- selection -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which scored rows are kept: ``ranks`` (index -> rank among IFD < max_ifd, 1 = highest),
    ``kept`` (indices), ``cutoff`` (the lowest kept IFD, None when none is kept)."""

    ranks: dict[int, int]
    kept: frozenset[int]
    cutoff: float | None
    count: int  # how many the fraction or top_k asks for


def select_top(
    scores: Sequence[float | None],
    total: int,
    *,
    top_fraction: float | None,
    top_k: int | None,
    max_ifd: float = 1.0,
) -> Selection:
    """Rank the rows with IFD < ``max_ifd`` by IFD, highest first (ties: the earlier row), and
    keep the first ``top_k``, or ``ceil(top_fraction * total)`` (``total``: every row the stage
    received, scored or not)."""
    eligible = [i for i, s in enumerate(scores) if s is not None and not math.isnan(s) and s < max_ifd]
    ranked = sorted(eligible, key=lambda i: (-float(scores[i]), i))  # type: ignore[arg-type]
    if top_k is not None:
        count = top_k
    else:
        fraction = DEFAULT_TOP_FRACTION if top_fraction is None else top_fraction
        # The small epsilon: 0.1 * 30 is 3.0000000000000004 in floating point, and means 3.
        count = math.ceil(fraction * total - 1e-9)
    kept = ranked[:count]
    cutoff = float(scores[kept[-1]]) if kept else None  # type: ignore[arg-type]
    return Selection(
        ranks={index: rank for rank, index in enumerate(ranked, start=1)},
        kept=frozenset(kept),
        cutoff=cutoff,
        count=count,
    )
