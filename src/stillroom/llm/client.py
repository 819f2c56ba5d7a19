"""What every backend gets for free: the request cache, retries with backoff, a concurrency limit
that backs off on overload, a timeout per attempt, structured-output validation, token counts,
and tool calls for backends without a tool API.

Tool emulation lives here rather than in the Backend base class because it must sit between the
cache and the backend: the cache key is the request as asked (with its ``tools`` and
``tool_choice``) and the record is the answer with its calls already parsed, so a replay gives
the same ``tool_calls``; a base class could not wrap the ``generate`` every backend overrides
without renaming it in each of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from stillroom.llm.backend import Backend
from stillroom.llm.cache import RequestCache, request_key
from stillroom.llm.limiter import AdaptiveLimiter
from stillroom.llm.reasoning import (
    THINK_END,
    TRUNCATED_REASONING,
    ThinkTags,
    estimate_reasoning_tokens,
    unended_reason,
)
from stillroom.llm.stats import BackendStats
from stillroom.llm.structured import StructuredOutputError, parse_structured, reask_messages
from stillroom.llm.tool_emulation import emulated_request, read_answer
from stillroom.llm.types import BackendError, Completion, Message, Request, RequestFailed

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig

T = TypeVar("T")


def score_key(
    identity: dict[str, Any],
    prompt: list[Message] | str | None,
    completion: str,
    top_logprobs: int | None,
    limits: dict[str, int] | None = None,
) -> str:
    """The cache key of a scoring call. The ``score`` field keeps it apart from every generate
    request's key (:func:`stillroom.llm.cache.request_key`), whatever the texts. ``limits``
    (max_length, max_tokens) join the key only when set, so calls without them keep their keys."""
    asked: dict[str, Any] = {"prompt": prompt, "completion": completion, "top_logprobs": top_logprobs}
    asked.update(limits or {})
    payload = {"id": identity, "score": asked}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def score_tokens_key(
    identity: dict[str, Any], token_ids: list[int], start: int, top_logprobs: int | None
) -> str:
    """The cache key of a token-scoring call: apart from generate and text-scoring keys by its
    ``score_tokens`` field."""
    payload = {"id": identity, "score_tokens": {"ids": token_ids, "start": start,
                                                "top_logprobs": top_logprobs}}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _has_text(completion: Completion) -> bool:
    """An answer: some text or a tool call, and not a trace that never ended (its text is no
    answer)."""
    return completion.reasoning_ended and (bool(completion.text.strip())
                                           or bool(completion.tool_calls))


class LLMClient:
    def __init__(
        self,
        backend: Backend,
        *,
        cache: RequestCache | None = None,
        concurrency: int = 16,
        timeout: float | None = 300.0,
        max_retries: int = 6,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        max_reasks: int = 2,
        think: ThinkTags | None = None,
    ):
        self.backend = backend
        # Inline traces to split off every answer (the backend config's think_tags), or None.
        self.think = think
        self.cache = cache
        self.limiter = AdaptiveLimiter(concurrency)
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.max_reasks = max_reasks
        self.stats = BackendStats(model=backend.model, kind=backend.kind)
        self._identity = backend.cache_identity()
        # Backoff jitter only decides *when* a retry goes out, never what is asked, so it need
        # not be seeded for a run to be reproducible.
        self._jitter = random.Random()

    @classmethod
    def from_config(
        cls,
        config: BackendConfig,
        *,
        cache: RequestCache | None = None,
        backend: Backend | None = None,
        **options: Any,
    ) -> LLMClient:
        """A client for ``config`` (built now unless ``backend`` is given) with the config's
        concurrency, timeout, retries and inline-trace parsing; ``options`` override them."""
        settings: dict[str, Any] = {
            "concurrency": config.concurrency,
            "timeout": config.timeout,
            "max_retries": config.max_retries,
            "retry_base_delay": config.retry_base_delay,
            "retry_max_delay": config.retry_max_delay,
            "think": config.think(),
        }
        settings.update(options)
        return cls(backend if backend is not None else config.build(), cache=cache, **settings)

    async def generate(self, request: Request, *, split_traces: bool = True) -> Completion:
        """One completion for one request; raises RequestFailed after the retries are spent.

        ``split_traces=False`` leaves an inline trace in the text even when the config has
        ``think_tags``: for a caller that continues the text as the model wrote it (budget
        forcing looks for the closing tag itself). A trace the backend returned apart stays
        apart either way.
        """
        if request.params.json_schema is not None:
            return await self._generate_structured(request)
        return await self._generate_cached(request, split_traces=split_traces)

    async def _generate_cached(
        self,
        request: Request,
        accept: Callable[[Completion], bool] | None = None,
        *,
        split_traces: bool = True,
    ) -> Completion:
        """One completion, from the cache when it holds an acceptable one.

        Only an answer is cached: an empty text, a trace that never ended (and, with
        ``accept``, one it refuses, such as JSON that does not fit the schema) is returned to
        the caller, which fails the row, but not stored, so a rerun asks again instead of being
        served the same non-answer forever.

        The cache keeps the backend's text as it came; inline traces are split off afterwards
        (:meth:`_read_trace`), for cached and fresh answers alike.
        """
        accept = accept or _has_text
        key = request_key(self._identity, request) if self.cache is not None else None
        if key is not None:
            record = self.cache.get(key)  # type: ignore[union-attr]
            if record is not None:
                cached = self._read_trace(Completion.from_record(record, cached=True),
                                          split_traces)
                if accept(cached):  # a non-answer stored by an older stillroom is asked again
                    stats = self.stats
                    stats.cache_hits += 1
                    stats.cached_prompt_tokens += record.get("prompt_tokens", 0)
                    stats.cached_completion_tokens += record.get("completion_tokens", 0)
                    stats.cached_reasoning_tokens += cached.reasoning_tokens
                    return cached
        completion = await self._send_with_retries(request)
        record = completion.to_record() if key is not None else None
        completion = self._read_trace(completion, split_traces)
        self.stats.reasoning_tokens += completion.reasoning_tokens
        if completion.reasoning_tokens_estimated:
            self.stats.estimated_reasoning_tokens += completion.reasoning_tokens
        if record is not None and accept(completion):
            self.cache.put(key, record)  # type: ignore[union-attr,arg-type]
        return completion

    def _read_trace(self, completion: Completion, split_traces: bool = True) -> Completion:
        """``completion`` with its inline trace split off (when the config says the model
        writes one and the backend did not already return it apart) and its reasoning tokens
        counted: by the backend's tokenizer when it has one, else estimated by characters."""
        think = self.think if split_traces else None
        raw = completion.text
        if think is not None and completion.reasoning is None:
            split = think.split(raw)
            if split.reasoning is not None or not split.ended:
                completion.text = split.answer
                completion.reasoning = split.reasoning
                completion.reasoning_ended = split.ended
                completion.reasoning_tokens = 0
                completion.reasoning_tokens_estimated = False
                if completion.completion_tokens > 0:
                    counted = self._count_tokens(think.trace_part(raw))
                    if counted is not None:
                        completion.reasoning_tokens = min(counted, completion.completion_tokens)
        if (completion.reasoning and not completion.reasoning_tokens
                and completion.completion_tokens > 0):
            completion.reasoning_tokens = estimate_reasoning_tokens(
                completion.reasoning, completion.text, completion.completion_tokens
            )
            completion.reasoning_tokens_estimated = completion.reasoning_tokens > 0
        return completion

    def _count_tokens(self, text: str) -> int | None:
        try:
            return self.backend.count_tokens(text)
        except Exception:  # noqa: BLE001 - a count is a nicety; the estimate stands in for it
            return None

    async def score(
        self,
        prompt: list[Message] | str | None,
        completion: str,
        top_logprobs: int | None = None,
        *,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``completion`` after ``prompt`` (see ``Backend.score``,
        with its ``max_length`` and ``max_tokens``), with the same cache, concurrency limit,
        timeout and retries as ``generate``; raises RequestFailed after the retries are spent.
        The cache key is marked as a score, so it never meets a generate request's. The scored
        tokens count as prompt tokens in the stats (the model reads them, it writes nothing)."""
        limits = {name: value for name, value in
                  (("max_length", max_length), ("max_tokens", max_tokens)) if value is not None}
        key = None
        if self.cache is not None:
            key = score_key(self._identity, prompt, completion, top_logprobs, limits)
            record = self.cache.get(key)
            if record is not None:
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += len(record["entries"])
                cached: list[dict[str, Any]] = record["entries"]
                return cached
        entries = await self._send_with_retries_of(
            lambda: self.backend.score(prompt, completion, top_logprobs, **limits)
        )
        self.stats.prompt_tokens += len(entries)
        if key is not None:
            self.cache.put(key, {"entries": entries})  # type: ignore[union-attr]
        return entries

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``token_ids[start:]`` (see ``Backend.score_tokens``) with
        the same cache, concurrency limit, timeout and retries as ``generate``; RequestFailed
        after the retries are spent. An answer with the wrong number of entries, or whose ids
        are not the ids asked, is a retryable BackendError (never cached, never returned).
        The scored tokens count as prompt tokens in the stats. ``text``: the ids' text, for a
        backend that needs it (``Backend.score_tokens_needs_text``); not part of the cache key
        (the ids are)."""
        token_ids = [int(token) for token in token_ids]
        if not 1 <= start < len(token_ids):
            raise ValueError(f"start must be in [1, {len(token_ids) - 1}], got {start}")
        key = None
        if self.cache is not None:
            key = score_tokens_key(self._identity, token_ids, start, top_logprobs)
            record = self.cache.get(key)
            if record is not None:
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += len(token_ids)
                cached: list[dict[str, Any]] = record["entries"]
                return cached
        wanted = token_ids[start:]

        async def checked() -> list[dict[str, Any]]:
            if self.backend.score_tokens_needs_text:
                entries = await self.backend.score_tokens(token_ids, start, top_logprobs,
                                                          text=text)
            else:
                entries = await self.backend.score_tokens(token_ids, start, top_logprobs)
            got = [entry.get("id") for entry in entries]
            if got != wanted:
                raise BackendError(
                    f"the backend scored {len(entries)} tokens, not the {len(wanted)} asked"
                    if len(got) != len(wanted) else
                    "the backend scored other token ids than the ones asked",
                    kind="ScoreMismatch", retryable=True,
                )
            return entries

        entries = await self._send_with_retries_of(checked)
        self.stats.prompt_tokens += len(token_ids)
        if key is not None:
            self.cache.put(key, {"entries": entries})  # type: ignore[union-attr]
        return entries

    async def _send_with_retries(self, request: Request) -> Completion:
        completion = await self._send_with_retries_of(lambda: self._generate_once(request))
        self.stats.prompt_tokens += completion.prompt_tokens
        self.stats.completion_tokens += completion.completion_tokens
        return completion

    async def _generate_once(self, request: Request) -> Completion:
        """One attempt at the backend; a request with tools to a backend without a tool API is
        asked in plain turns and its calls read out of the text (see the module docstring)."""
        if not request.params.tools or self.backend.supports_tools:
            return await self.backend.generate(request)
        # Inside the retried call so a refused request (BadRequestError) fails the row like any
        # other backend error, with its reason.
        completion = await self.backend.generate(emulated_request(request))
        return read_answer(completion, request)

    async def _send_with_retries_of(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` under the concurrency limit and timeout, retried with backoff while its
        BackendError is retryable; RequestFailed when the retries are spent."""
        stats = self.stats
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire()
            ok = False
            started = time.perf_counter()
            sent_at = self.limiter.now()
            try:
                stats.requests_sent += 1
                if self.timeout is None:
                    result = await call()
                else:
                    async with asyncio.timeout(self.timeout):
                        result = await call()
                ok = True
            except TimeoutError:
                error = BackendError(
                    f"no answer within {self.timeout:g} s (--timeout)",
                    kind="APITimeoutError",
                    retryable=True,
                )
            except BackendError as backend_error:
                error = backend_error
            except asyncio.CancelledError:
                raise
            except Exception as unexpected:  # a bug in a backend: report it, do not retry it
                error = BackendError(
                    f"{type(unexpected).__name__}: {unexpected}", kind="BackendCrash"
                )
            finally:
                self.limiter.release(ok=ok)
            if ok:
                stats.responses += 1
                stats.add_request(time.perf_counter() - started)  # request and wall seconds
                return result
            stats.errors[error.kind] += 1
            too_long = error.retry_after is not None and error.retry_after > self.retry_max_delay
            if error.slow_down:
                # The pause applies to every request of this backend, so it is capped like a
                # retry: one `Retry-After: 86400` must not stop the whole run for a day.
                pause = min(error.retry_after, self.retry_max_delay) if error.retry_after else None
                self.limiter.slow_down(pause, sent_at)
            if not error.retryable or attempt > self.max_retries or too_long:
                stats.failed_requests += 1
                if too_long and error.retryable and attempt <= self.max_retries:
                    error = BackendError(
                        f"{error.message} (the server asked to wait {error.retry_after:g} s "
                        f"before retrying, more than retry_max_delay {self.retry_max_delay:g} s)",
                        kind=error.kind, status=error.status,
                    )
                raise RequestFailed(error, attempt)
            stats.retries += 1
            await asyncio.sleep(self._backoff(attempt, error.retry_after))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never sooner than the server asked (a wait longer than
        ``retry_max_delay`` fails the request instead; see ``_send_with_retries_of``)."""
        delay = min(self.retry_max_delay, self.retry_base_delay * (2 ** (attempt - 1)))
        delay *= self._jitter.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after) + self._jitter.uniform(0.0, 0.1 * (retry_after or 1.0))
        return delay

    async def _generate_structured(self, request: Request) -> Completion:
        """Ask, validate against the schema, and re-ask with the error when it does not parse."""
        schema = request.params.json_schema
        assert schema is not None
        current = request
        last_error: StructuredOutputError | None = None
        # id(completion) -> (completion, its parse error or None). fits() is what the cache
        # asks before storing or serving an answer; its verdict is kept so nothing is parsed
        # twice (the completion is held too, so its id cannot be reused meanwhile).
        verdicts: dict[int, tuple[Completion, StructuredOutputError | None]] = {}

        def fits(completion: Completion) -> bool:
            problem = None
            try:
                completion.parsed = parse_structured(completion.text, schema)
            except StructuredOutputError as error:
                problem = error
            verdicts[id(completion)] = (completion, problem)
            return problem is None

        for _ in range(self.max_reasks + 1):
            completion = await self._generate_cached(current, accept=fits)
            if not completion.reasoning_ended:
                # Re-asking would only cut the trace again (length) or end it the same way.
                end = self.think.end if self.think is not None else THINK_END
                raise RequestFailed(
                    BackendError(unended_reason(completion.finish_reason, end),
                                 kind=TRUNCATED_REASONING),
                    attempts=1,
                )
            if id(completion) not in verdicts:  # no cache: nobody asked yet
                fits(completion)
            error = verdicts[id(completion)][1]
            if error is None:
                return completion
            if completion.finish_reason == "length":
                # A cut-off answer is rarely valid JSON; say so, or the cause looks like a
                # model that cannot follow a schema.
                error = StructuredOutputError(
                    f"{error.problem} (the answer was cut off at max_tokens "
                    f"{current.params.max_tokens})",
                    error.raw_text,
                )
            last_error = error
            if current.messages is None:
                break  # a raw prompt has no conversation to continue
            current = Request(
                messages=reask_messages(current.messages, completion.text, error),
                params=current.params,
                sample=current.sample,
            )
        assert last_error is not None
        raise RequestFailed(
            BackendError(str(last_error), kind="InvalidStructuredOutput"),
            attempts=self.max_reasks + 1 if request.messages is not None else 1,
        )

    def snapshot(self) -> dict[str, Any]:
        return self.stats.as_dict()

    async def aclose(self) -> None:
        await self.backend.aclose()
