"""A scripted backend for unit tests (mocks stay in unit tests; integration uses real servers)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.types import BackendError, Completion, Request


def last_user(request: Request) -> str:
    if request.messages is None:
        return request.prompt or ""
    return next(m["content"] for m in reversed(request.messages) if m["role"] == "user")


class ScriptedBackend(Backend):
    """Answers "answer to <prompt> #<sample>", or whatever ``script(request, attempt)`` says.

    ``script`` may return text, or raise BackendError to simulate a server error.
    """

    kind = "scripted"
    supports_logprobs = True
    supports_json_schema = True
    supports_raw_prompt = True

    def __init__(self, script: Callable[[Request, int], str] | None = None, latency: float = 0.0):
        super().__init__("scripted-model")
        self.script = script
        self.latency = latency
        self.calls: list[Request] = []
        self.attempts: Counter[tuple[str, int]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: Request) -> Completion:
        self.calls.append(request)
        key = (repr(request.messages or request.prompt), request.sample)
        self.attempts[key] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.script is not None:
                text = self.script(request, self.attempts[key])
            else:
                text = f"answer to {last_user(request)} #{request.sample}"
        finally:
            self.in_flight -= 1
        logprobs = None
        if request.params.top_logprobs is not None:
            logprobs = [
                {"token": word, "logprob": -0.1, "top_logprobs": [{"token": word, "logprob": -0.1}]}
                for word in text.split()
            ]
        return Completion(text=text, finish_reason="stop", prompt_tokens=3,
                          completion_tokens=len(text.split()), model=self.model, logprobs=logprobs)


# The backend instance a ScriptedConfig builds: tests set it, then read its calls.
CURRENT: dict[str, ScriptedBackend] = {}


@backends.register("scripted")
class ScriptedConfig(BackendConfig):
    kind: Literal["scripted"] = "scripted"
    model: str | None = "scripted-model"
    slot: str = "default"
    retry_base_delay: float = 0.001
    retry_max_delay: float = 0.01

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {"slot"}

    def backend_class(self) -> type[Backend]:
        return ScriptedBackend

    def build(self) -> Backend:
        return CURRENT.setdefault(self.slot, ScriptedBackend())


def server_error(status: int = 500, retry_after: float | None = None) -> BackendError:
    return BackendError("boom", kind="InternalServerError" if status >= 500 else "RateLimitError",
                        status=status, retryable=True, retry_after=retry_after,
                        slow_down=status in (429, 503))


def rows(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"p{i}", **extra} for i in range(n)]
