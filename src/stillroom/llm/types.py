"""The request and response types every backend speaks.

These are plain slotted dataclasses rather than pydantic models because they sit on the hot path:
at cluster scale one process builds thousands of them a second. Their fields follow the OpenAI chat
API (the lingua franca of inference servers), so a backend maps to and from them in a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}: an assistant turn that calls
# tools also has "tool_calls", a tool turn "tool_call_id" and "name" (see stillroom.llm.tool_calls
# for the exact shapes, the same in rows, requests and answers).
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling parameters of one request. ``None`` means "the backend's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    # OpenAI's meaning: a generated token's logit is lowered by presence_penalty once it has
    # appeared and by frequency_penalty times its count (Self-Instruct sends 2 and 1.5 to keep a
    # model from repeating itself).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # When set, each generated token comes back with this many alternatives and their logprobs.
    top_logprobs: int | None = None
    # JSON schema the answer must satisfy; backends that can constrain decoding do so.
    json_schema: dict[str, Any] | None = None
    # Functions the model may call, OpenAI's shape ({"type": "function", "function": {"name",
    # "description", "parameters"}}, see stillroom.llm.tool_calls.normalize_tools), and whether it
    # must: "auto" (the default when tools are given), "none", "required", or one function
    # ({"type": "function", "function": {"name": ...}}). Part of the cache key like the rest.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The parameters that are set, for cache keys and request bodies."""
        out: dict[str, Any] = {}
        for name in _PARAM_NAMES:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


_PARAM_NAMES = tuple(GenerationParams.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Request:
    """One sample of one prompt: either chat ``messages`` or a raw ``prompt`` (no chat template)."""

    messages: list[Message] | None = None
    prompt: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    # Which of the ``n`` samples this is; part of the cache key so sample 3 is never served sample 1.
    sample: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of `messages` or `prompt`")
        if self.messages is not None and any(
            value is None and key != "content"
            for message in self.messages if isinstance(message, dict)
            for key, value in message.items()
        ):
            # Rows read back from Arrow (Parquet, a checkpoint) have every turn padded with the
            # keys other turns have (`tool_calls: None` on a user turn): servers validating
            # OpenAI's message types refuse them, and the cache key would differ from the same
            # conversation held in memory. A missing key and a null one mean the same here.
            object.__setattr__(self, "messages", [
                {key: value for key, value in message.items()
                 if value is not None or key == "content"} if isinstance(message, dict) else message
                for message in self.messages
            ])

    def effective_seed(self) -> int | None:
        """Each sample gets its own seed so ``n`` samples differ yet reproduce."""
        if self.params.seed is None:
            return None
        return self.params.seed + self.sample


@dataclass(slots=True)
class Completion:
    """What came back for one request."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    # One entry per generated token: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}.
    logprobs: list[dict[str, Any]] | None = None
    # Set by the client, not the backend: True when served from the request cache.
    cached: bool = False
    # Structured output, when a JSON schema was asked for and the text validated against it.
    parsed: Any = None
    # The model's reasoning trace, kept apart from ``text`` (the final answer): a server's
    # ``reasoning_content`` / ``reasoning`` field, Anthropic's thinking blocks, or the inside of
    # inline ``<think>...</think>`` tags split off the text (see :mod:`stillroom.llm.reasoning`).
    # None: the model gave no trace (or the backend does not return one).
    reasoning: str | None = None
    # How many of ``completion_tokens`` were spent on the trace (0 when unknown or no trace);
    # ``reasoning_tokens_estimated`` when the count is a share of ``completion_tokens`` by
    # characters rather than a count the backend reported or a tokenizer made.
    reasoning_tokens: int = 0
    reasoning_tokens_estimated: bool = False
    # False when a trace was begun and never ended (the model ran out of tokens while thinking):
    # such an answer is no answer (see stillroom.llm.reasoning.TRUNCATED_REASONING).
    reasoning_ended: bool = True
    # The calls the model made, in the row shape of stillroom.llm.tool_calls (``id``, ``type``
    # "function", ``function`` {``name``, ``arguments``: the JSON text as the model wrote it,
    # which need not parse: the format check says so}); None when it made none. ``text`` is
    # whatever it wrote beside them ("" for none).
    tool_calls: list[dict[str, Any]] | None = None

    def to_record(self) -> dict[str, Any]:
        """The cacheable form (no ``cached`` flag: that is a property of the lookup). The trace
        fields are written only when there is a trace, and ``tool_calls`` only when there are
        calls, so records of answers without them keep their old form."""
        record: dict[str, Any] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "model": self.model,
            "logprobs": self.logprobs,
        }
        if self.reasoning is not None or not self.reasoning_ended:
            record["reasoning"] = self.reasoning
            record["reasoning_tokens"] = self.reasoning_tokens
            record["reasoning_tokens_estimated"] = self.reasoning_tokens_estimated
            record["reasoning_ended"] = self.reasoning_ended
        if self.tool_calls is not None:
            record["tool_calls"] = self.tool_calls
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], *, cached: bool = False) -> Completion:
        return cls(
            text=record["text"],
            finish_reason=record.get("finish_reason"),
            prompt_tokens=record.get("prompt_tokens", 0),
            completion_tokens=record.get("completion_tokens", 0),
            model=record.get("model", ""),
            logprobs=record.get("logprobs"),
            cached=cached,
            reasoning=record.get("reasoning"),
            reasoning_tokens=record.get("reasoning_tokens", 0),
            reasoning_tokens_estimated=record.get("reasoning_tokens_estimated", False),
            reasoning_ended=record.get("reasoning_ended", True),
            tool_calls=record.get("tool_calls"),
        )


class BackendError(Exception):
    """A request that did not produce a completion.

    ``kind`` uses the class names of the openai SDK's errors (``RateLimitError``,
    ``InternalServerError``, ``APITimeoutError``, ``APIConnectionError``, ``BadRequestError``...)
    whatever the backend, so failure reasons read the same everywhere.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        slow_down: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retryable = retryable
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said.
        self.retry_after = retry_after
        # 429 and 503 mean the whole backend is overloaded, not just this request.
        self.slow_down = slow_down

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.kind}{status}: {self.message}"


class RequestFailed(Exception):
    """A request that still failed after its retries. The row carrying it goes to ``failed/``."""

    def __init__(self, error: BackendError | Exception, attempts: int):
        self.error = error
        self.attempts = attempts
        kind = error.kind if isinstance(error, BackendError) else type(error).__name__
        self.kind = kind
        super().__init__(f"{error} (after {attempts} attempt{'s' if attempts != 1 else ''})")


# Status codes the openai SDK treats as worth retrying; we keep the same meaning.
_STATUS_KINDS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "APITimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


def error_for_status(
    status: int, message: str, headers: Any = None
) -> BackendError:
    """Classify an HTTP error response the way the openai SDK does."""
    kind = _STATUS_KINDS.get(status) or ("InternalServerError" if status >= 500 else "APIStatusError")
    retryable = status in (408, 409, 429) or status >= 500
    should_retry = _header(headers, "x-should-retry")
    if should_retry == "true":
        retryable = True
    elif should_retry == "false":
        retryable = False
    return BackendError(
        message,
        kind=kind,
        status=status,
        retryable=retryable,
        retry_after=parse_retry_after(headers),
        slow_down=status in (429, 503),
    )


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    return None if value is None else str(value)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
