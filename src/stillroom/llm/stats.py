"""Counters one backend keeps while a run goes: requests, tokens, retries, failures by kind, and
how long requests took, both summed over requests and as wall time.

Two kinds of seconds, kept apart because requests run concurrently:

* **request seconds** (``busy_seconds``): the latency of every successful attempt, summed. 200
  requests in flight for 100 s add up to 20,000 request seconds.
* **wall seconds** (``wall_seconds``): how long requests were in flight, from the start of the
  first successful attempt to the end of the last. Each process keeps one such span per session
  (``spans``, wall-clock ``time.time()`` values, so spans from other sessions and processes
  compare); spans are merged as a union of intervals. Overlapping spans (the Ray workers of one
  session) count once; disjoint ones (a run resumed later) add up, so a resumed run's wall time is
  the sum of its sessions' spans and the pause between them counts for nothing. A span runs from a
  session's first request to its last, so an idle stretch between two stages that use the same
  backend in one session counts as wall time.

``first_started`` and ``last_finished`` are the earliest start and latest end over all spans.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Figures computed from ``spans`` (see :meth:`BackendStats.as_dict`): never summed when merging.
DERIVED = ("first_started", "last_finished", "wall_seconds")


# The wall clock of this process, advanced by the monotonic clock: spans must compare across
# sessions (so wall-clock based), but a clock step during a run (NTP, a suspended laptop, a user
# setting the time) must not stretch a span to an hour or make it negative.
_WALL_ANCHOR = (time.time(), time.monotonic())


def wall_now() -> float:
    wall, mono = _WALL_ANCHOR
    return wall + (time.monotonic() - mono)


def union(spans: list[list[float]]) -> list[list[float]]:
    """Intervals ``[start, end]`` merged where they overlap, in order of start."""
    merged: list[list[float]] = []
    for start, end in sorted((float(s), float(e)) for s, e in spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def wall_of(spans: list[list[float]] | None) -> float | None:
    """Seconds covered by the union of ``spans``; None when there are none (a run recorded before
    spans were kept, or a backend that answered nothing)."""
    if not spans:
        return None
    return sum(end - start for start, end in union(spans))


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
    # The share of completion_tokens spent on reasoning traces (counted or estimated, see
    # Completion.reasoning_tokens_estimated). A part of completion_tokens, never added to it:
    # OpenAI, vLLM, SGLang and Anthropic all bill reasoning as output tokens, so the cost
    # estimate from completion_tokens already includes it.
    reasoning_tokens: int = 0
    cached_reasoning_tokens: int = 0
    # Of reasoning_tokens, those estimated by characters (the card marks them "estimated").
    estimated_reasoning_tokens: int = 0
    busy_seconds: float = 0.0  # request seconds: summed latency of successful attempts
    errors: Counter[str] = field(default_factory=Counter)  # by SDK-style kind, every attempt
    # [first start, last end] of successful attempts, wall clock: one per session and process.
    spans: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._live: list[float] | None = None  # this process's span, extended by add_request

    def add_request(self, seconds: float, now: float | None = None) -> None:
        """A successful attempt that took ``seconds`` and ended ``now`` (wall clock)."""
        end = wall_now() if now is None else now
        start = end - seconds
        self.busy_seconds += seconds
        live = self._live
        if live is None:
            self._live = [start, end]
            self.spans.append(self._live)
        else:
            if start < live[0]:
                live[0] = start
            if end > live[1]:
                live[1] = end

    @property
    def wall_seconds(self) -> float | None:
        return wall_of(self.spans)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = dict(self.errors)
        out["spans"] = union(self.spans)
        out["first_started"] = out["spans"][0][0] if out["spans"] else None
        out["last_finished"] = max((end for _, end in out["spans"]), default=None)
        out["wall_seconds"] = self.wall_seconds
        return out

    def add(self, other: dict[str, Any]) -> None:
        """Accumulate a dict produced by :meth:`as_dict` (from an earlier session, or a worker
        of this one). Counters add up; spans merge as a union, so a worker's cumulative spans
        added again and again count once."""
        # The dict may come from a hand-edited sessions log: a value of the wrong type is
        # skipped (never added to a counter, never made a span), so it cannot crash a summary.
        for name, value in other.items():
            if name == "errors":
                if isinstance(value, dict):
                    self.errors.update({k: v for k, v in value.items() if _is_number(v)})
            elif name == "spans":
                self.spans = union([*self.spans, *_valid_spans(value)])
                self._live = None  # the union made new intervals; a new request starts a new one
            elif name in DERIVED or name.startswith("_") or not hasattr(self, name):
                continue
            elif isinstance(getattr(self, name), str):
                if isinstance(value, str) and value and not getattr(self, name):
                    setattr(self, name, value)
            elif _is_number(value):
                setattr(self, name, getattr(self, name) + value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_spans(value: Any) -> list[list[float]]:
    """The ``[start, end]`` pairs of ``value``; anything else in it is left out."""
    if not isinstance(value, list):
        return []
    return [span for span in value
            if isinstance(span, (list, tuple)) and len(span) == 2 and all(map(_is_number, span))]
