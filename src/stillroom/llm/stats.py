"""Counters one backend keeps while a run goes: requests, tokens, retries, failures by kind."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BackendStats:
    model: str = ""
    kind: str = ""
    requests_sent: int = 0  # attempts that reached the backend, retries included
    responses: int = 0  # attempts that produced a completion
    cache_hits: int = 0
    retries: int = 0
    failed_requests: int = 0  # requests that still failed after their retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    busy_seconds: float = 0.0  # summed latency of successful attempts
    errors: Counter[str] = field(default_factory=Counter)  # by SDK-style kind, every attempt

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = dict(self.errors)
        return out

    def add(self, other: dict[str, Any]) -> None:
        """Accumulate a dict produced by :meth:`as_dict` (from an earlier session)."""
        for name, value in other.items():
            if name == "errors":
                self.errors.update(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)
            elif value and not getattr(self, name):
                setattr(self, name, value)
