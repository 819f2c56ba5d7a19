"""The teachers of on-policy distillation: routing rows to them, checking that each shares the
student's tokenizer, and scoring the student's samples through :class:`~stillroom.llm.client.
LLMClient` on an asyncio loop in a background thread (so the student samples while they score).

Why a thread: the trainer is synchronous (a transformers ``Trainer``), the clients are async.
One loop in one daemon thread runs every request; the trainer hands it coroutines
(``asyncio.run_coroutine_threadsafe``) and waits on their futures only when it needs the scores.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from stillroom.data.rows import Row
from stillroom.errors import ConfigError
from stillroom.llm.client import LLMClient, score_tokens_key
from stillroom.llm.types import RequestFailed
from stillroom.train.common import row_where

IN_PROCESS_VOCABULARY = ("llamacpp", "transformers")
"""Backends whose tokenizer is at hand here (a GGUF or a model folder): their vocabulary is
compared with the student's. Every other backend (a server) is probed."""

PROBE_TEXT = "On-policy probe: 12 + 30 = 42. Ünïcödé ✓, tabs\tand\nlines."


# -- routing ---------------------------------------------------------------------------------------


def route_rows(rows: list[Row], names: list[str], route_column: str | None,
               default: str | None) -> list[str]:
    """Each row's teacher name. One teacher: every row. Several: the row's ``route_column``
    value, or ``default``; a row whose value names no teacher (and no default) is refused with a
    ConfigError naming the row and the value, before any request."""
    if route_column is None:
        return [names[0]] * len(rows)
    chosen = []
    for index, row in enumerate(rows):
        value = row.get(route_column)
        name = str(value) if value is not None else None
        if name in names:
            chosen.append(name)
        elif default is not None:
            chosen.append(default)
        else:
            shown = "no value" if value is None else f"value {value!r}"
            raise ConfigError(
                f"{row_where(index, row)} has {shown} in `{route_column}`, which names no teacher "
                f"({', '.join(sorted(names))}); add a teacher of that name or a `default_teacher`",
                key="route_column")
    return chosen


# -- tokenizers ------------------------------------------------------------------------------------


def teacher_tokenizer(config: Any) -> Any:
    """The tokenizer of an in-process teacher (llamacpp: its GGUF, the embedded one by default;
    transformers: its folder or GGUF)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from stillroom.llm.gguf_dense import tokenizer_folder
    from stillroom.llm.llamacpp import embedded_model_path

    path = Path(config.model) if config.model else embedded_model_path()
    if path.is_file() and path.suffix == ".gguf":
        cached = tokenizer_folder(path)  # the model cache's saved copy: no conversion
        if cached is not None:
            return AutoTokenizer.from_pretrained(cached)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path)


def student_text(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))


def probe_mismatch(entries: list[dict[str, Any]], ids: list[int], start: int,
                   tokenizer: Any) -> str | None:
    """The first scored token whose text the teacher spells differently from the student, as a
    message naming its position, id and both texts; None when all agree.

    Compared as decoded text, skipping what cannot be compared fairly: a student piece that is
    not whole UTF-8 (a byte of a multi-byte character decodes to U+FFFD, and a server writes it
    its own way). Special tokens (EOS, the chat template's markers) are compared where the
    server writes them out; a server that writes them as "" (llama-cpp-python's) or leaves the
    text out cannot be checked on them, and is not refused for it. A server that names the EOS
    id with another special token's text is refused: its EOS is not the student's."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for offset, entry in enumerate(entries):
        position = start + offset
        token_id = ids[position]
        mine = student_text(tokenizer, token_id)
        theirs = entry.get("token")
        if not isinstance(theirs, str) or "\ufffd" in mine or "\ufffd" in theirs \
                or theirs.startswith("bytes:") or (token_id in special and theirs == ""):
            continue
        if theirs != mine:
            kind = "the EOS token" if token_id == tokenizer.eos_token_id else \
                "a special token" if token_id in special else "token"
            return (f"{kind} {position} (id {token_id}) is {theirs!r} for the teacher but "
                    f"{mine!r} for the student: the tokenizers differ")
    return None


def probe_sequence(tokenizer: Any, asked: list[int], text_ids: list[int]) -> list[int]:
    """The probe's ids: the rendered prompt ``asked``, then the text's ids, the EOS and the
    special tokens the prompt's chat template wrote (what samples end with or may contain), so
    the probe compares them too. Scored from ``len(asked)``. The prompt's first token is left
    out: servers treat it as a BOS (llama-cpp-python's drops it from its echo wherever it
    appears), and a sample never holds it again anyway."""
    tail = [*text_ids]
    if tokenizer.eos_token_id is not None:
        tail.append(tokenizer.eos_token_id)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id in asked:
        if token_id in special and token_id not in tail and token_id != asked[0]:
            tail.append(token_id)
    return [*asked, *tail]


# -- scoring -----------------------------------------------------------------------------------------


@dataclass
class Score:
    """One sample's teacher answer: its entries, or the reason it failed; whether it was cached."""

    entries: list[dict[str, Any]] | None
    cached: bool = False
    reason: str | None = None


@dataclass
class TeacherTotals:
    samples: int = 0
    tokens: int = 0
    failures: int = 0


@dataclass
class TeacherPool:
    """The teachers' clients and the loop thread that runs their requests."""

    clients: dict[str, LLMClient]
    top_logprobs: int | None = None
    totals: dict[str, TeacherTotals] = field(default_factory=dict)
    # The student's text of a sequence (special tokens written out), for a teacher server that
    # takes text only (score_api: text_echo); it checks the text tokenizes back to the ids.
    text_of: Callable[[list[int]], str] | None = None

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stillroom-teachers",
                                       daemon=True)
        self.thread.start()
        self.totals = {name: TeacherTotals() for name in self.clients}

    def submit(self, name: str, ids: list[int], start: int, *,
               use_cache: bool = True) -> Future[Score]:
        """Score ``ids[start:]`` with teacher ``name``; the future never raises: a request that
        failed after the client's retries is a Score with ``reason``. ``use_cache=False`` asks
        the teacher even when the request cache holds the answer (and stores nothing)."""
        return asyncio.run_coroutine_threadsafe(self._score(name, ids, start, use_cache),
                                                self.loop)

    async def _score(self, name: str, ids: list[int], start: int, use_cache: bool = True) -> Score:
        client = self.clients[name]
        if not use_cache and client.cache is not None:
            # The same backend, limits and stats, without the cache.
            client = copy.copy(client)
            client.cache = None
        cached = False
        if client.cache is not None:
            # The client's own identity, so this is the key its score_tokens looks up.
            key = score_tokens_key(client._identity, ids, start, self.top_logprobs)
            cached = client.cache.get(key) is not None
        try:
            text = None
            if client.backend.score_tokens_needs_text and self.text_of is not None:
                text = self.text_of(ids)
            entries = await client.score_tokens(ids, start, self.top_logprobs, text=text)
        except RequestFailed as error:
            return Score(None, reason=str(error))
        except Exception as error:  # noqa: BLE001 - one failed sample is recorded, not fatal here
            return Score(None, reason=f"{type(error).__name__}: {error}")
        return Score(entries, cached=cached)

    def score_now(self, name: str, ids: list[int], start: int, timeout: float | None = None, *,
                  use_cache: bool = True) -> Score:
        return self.submit(name, ids, start, use_cache=use_cache).result(timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per teacher: samples scored, tokens scored, requests sent, cache hits, failures."""
        out = {}
        for name, client in self.clients.items():
            totals = self.totals[name]
            out[name] = {"kind": client.backend.kind, "samples": totals.samples,
                         "tokens": totals.tokens, "requests_sent": client.stats.requests_sent,
                         "cache_hits": client.stats.cache_hits, "failures": totals.failures}
        return out

    def close(self) -> None:
        async def shut() -> None:
            # Requests still in flight (a run stopped by TeacherFailed or an error leaves the
            # next micro-batch's) are cancelled and awaited first: a loop stopped under them
            # destroys pending tasks, which asyncio reports at exit.
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for client in self.clients.values():
                await client.backend.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def check_tokenizers(configs: dict[str, Any], pool: TeacherPool, tokenizer: Any,
                     probe_ids: list[int], start: int, key: str) -> None:
    """Refuse (ConfigError naming ``key``.name) a teacher whose tokenizer is not the student's,
    before the first step: vocabularies compared for in-process teachers, a probe for servers."""
    from stillroom.train.kd_alignment import check_same_vocabulary

    for name, config in configs.items():
        where = key if key == "teacher" else f"{key}.{name}"
        if config.kind in IN_PROCESS_VOCABULARY:
            check_same_vocabulary(tokenizer, teacher_tokenizer(config), where)
            continue
        # Never from the request cache: the server behind a name may have changed since.
        score = pool.score_now(name, probe_ids, start, use_cache=False)
        if score.entries is None:
            raise ConfigError(f"the teacher could not score the tokenizer probe: {score.reason}",
                              key=where)
        problem = probe_mismatch(score.entries, probe_ids, start, tokenizer)
        if problem:
            raise ConfigError(f"tokenizer probe: {problem}; on-policy distillation needs one "
                              "shared tokenizer", key=where)


def wait(futures: list[Future[Score]]) -> tuple[list[Score], float]:
    """The scores of ``futures`` and the seconds spent waiting for them."""
    started = time.perf_counter()
    scores = [future.result() for future in futures]
    return scores, time.perf_counter() - started


__all__ = [
    "Score",
    "TeacherPool",
    "TeacherTotals",
    "check_tokenizers",
    "probe_sequence",
    "probe_mismatch",
    "route_rows",
    "teacher_tokenizer",
    "wait",
]
