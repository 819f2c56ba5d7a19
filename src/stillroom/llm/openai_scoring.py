"""Scoring given token ids through an OpenAI-compatible server's /completions: the request body
(:func:`score_tokens_body`) and the reading of its answer (:func:`parse_token_scores`) in the
``echo`` and ``prompt_logprobs`` shapes (see :mod:`stillroom.llm.openai_compat`'s doc; the
text-only ``text_echo`` shape is :mod:`stillroom.llm.text_echo_scoring`)."""

from __future__ import annotations

from typing import Any, Literal

from stillroom import secrets
from stillroom.llm.response_fields import (
    described,
    malformed,
    object_field,
    text_field,
    token_count,
)
from stillroom.llm.types import BackendError

ScoreAPI = Literal["echo", "prompt_logprobs", "text_echo"]


def score_tokens_body(
    model: str, token_ids: list[int], top_logprobs: int | None, score_api: ScoreAPI,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The /completions body that scores ``token_ids``: the ids as the prompt, one greedy token
    after them, and the prompt's log-probs. At least 1 alternative is asked for: servers that
    test the count for truth skip a 0 (the alternatives are dropped when none were wanted)."""
    body: dict[str, Any] = {**(extra_body or {}), "model": model, "prompt": token_ids,
                            "max_tokens": 1, "temperature": 0}
    count = max(1, top_logprobs or 0)
    if score_api == "echo":
        body.update(echo=True, logprobs=count)
    else:
        body["prompt_logprobs"] = count
    return body


def _number(value: Any, where: str) -> float:
    """A log-prob from a server's answer: a JSON number (not a boolean, not null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise malformed(f"{where} is {described(value)}, not a number")
    return float(value)


# How far above 0 a log-prob may come from rounding alone (a float32 log_softmax of a token the
# model is sure of, or a server printing few digits); such a value is read as 0. A larger one is
# no log-prob at all (logits, or a server bug), and training on it would reward the student for
# tokens the teacher was never asked about as if they were likelier than certain.
_ROUNDING = 1e-4


def checked_logprob(value: float, where: str) -> float:
    """A number read from a server as a log-prob: at most 0 up to rounding (clamped to 0), -inf
    allowed (a token the teacher rules out); NaN, +inf and positive values beyond rounding are a
    malformed answer naming ``where`` (not retried: the server would answer the same)."""
    if not value <= _ROUNDING:  # NaN fails this too
        raise malformed(f"{where} is {value!r}, not a log-prob (at most 0); a server that sends "
                        "logits or probabilities in this field cannot be read as a teacher")
    return min(value, 0.0)


def _logprob(value: Any, where: str) -> float:
    return checked_logprob(_number(value, where), where)


def _mismatch(got: int, sent: int, where: str) -> BackendError:
    # Retryable, as LLMClient treats an answer scoring other ids: a server that tokenized or
    # cut differently this once may answer right the next time.
    return BackendError(f"{where} has {got} positions for the {sent} token ids sent",
                        kind="ScoreMismatch", retryable=True)


def parse_token_scores(
    data: Any, token_ids: list[int], start: int, top_logprobs: int | None, score_api: ScoreAPI
) -> list[dict[str, Any]]:
    """The entries of ``Backend.score_tokens`` from a /completions answer to
    :func:`score_tokens_body`. Every field is type-checked as it is read (a wrong one is a
    non-retryable BackendError naming it); a server that answered without prompt log-probs gets
    one saying what to enable."""
    if not isinstance(data, dict):
        raise malformed(f"the body is {described(data)}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise malformed(f"choices is {described(choices)}, not a list of one choice or more")
    choice = object_field(choices[0], "choices[0]")
    if score_api == "echo":
        return _from_echo(data, choice, token_ids, start, top_logprobs)
    positions = choice.get("prompt_logprobs", data.get("prompt_logprobs"))
    return _from_prompt_logprobs(positions, token_ids, start, top_logprobs)


def _from_echo(
    data: dict[str, Any], choice: dict[str, Any], token_ids: list[int], start: int, k: int | None
) -> list[dict[str, Any]]:
    """Legacy completions logprobs of an echoed prompt: parallel lists over the prompt's tokens
    (the first one null: nothing predicts it) and then the one generated token, dropped here."""
    logprobs = choice.get("logprobs")
    values: Any = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if values is None or (isinstance(values, list) and len(values) <= 1 < len(token_ids)):
        raise BackendError(
            "the server answered without log-probs of the prompt: it needs `echo` with "
            "`logprobs` on /completions (vLLM, SGLang); llama-cpp-python's server cannot score "
            "token ids (use the llamacpp backend), and a vLLM server can also be asked with "
            "score_api: prompt_logprobs",
            kind="BadRequestError",
        )
    assert isinstance(logprobs, dict)
    tokens: Any = logprobs.get("tokens")
    tops: Any = logprobs.get("top_logprobs")
    for name, value in (("token_logprobs", values), ("tokens", tokens)):
        if not isinstance(value, list):
            raise malformed(f"choices[0].logprobs.{name} is {described(value)}, not a list")
    # The prompt's positions, then the generated token's: as many as usage counts when it does
    # (a server that tokenized differently is caught here), else 0 or 1 (max_tokens is 1).
    usage = object_field(data.get("usage"), "usage")
    generated = token_count(usage, "completion_tokens", "usage") if "completion_tokens" in usage \
        else None
    if (len(values) != len(token_ids) + generated if generated is not None
            else not len(token_ids) <= len(values) <= len(token_ids) + 1):
        raise _mismatch(len(values), len(token_ids), "choices[0].logprobs.token_logprobs")
    if len(tokens) < len(token_ids):
        raise _mismatch(len(tokens), len(token_ids), "choices[0].logprobs.tokens")
    if k and (not isinstance(tops, list) or len(tops) < len(token_ids)):
        raise malformed(f"choices[0].logprobs.top_logprobs is {described(tops)}, not a list of "
                        f"{len(token_ids)} positions or more")
    entries = []
    for at in range(start, len(token_ids)):
        where = f"choices[0].logprobs.token_logprobs[{at}]"
        entry: dict[str, Any] = {
            "id": token_ids[at],
            "token": text_field(tokens[at], f"choices[0].logprobs.tokens[{at}]") or "",
            "logprob": _logprob(values[at], where),
        }
        if k is not None:
            top = object_field(tops[at] if k else None, f"choices[0].logprobs.top_logprobs[{at}]")
            ranked = sorted(
                ((text, _logprob(value, f"choices[0].logprobs.top_logprobs[{at}][{text!r}]"))
                 for text, value in top.items()),
                key=lambda item: -item[1],
            )
            # Keyed by text: the server names alternatives by their text, not their id.
            entry["top_logprobs"] = [{"id": None, "token": text, "logprob": value}
                                     for text, value in ranked[:k]]
        entries.append(entry)
    return entries


def _from_prompt_logprobs(
    positions: Any, token_ids: list[int], start: int, k: int | None
) -> list[dict[str, Any]]:
    """vLLM's ``prompt_logprobs``: per prompt token (the first null) an object keyed by token id
    of ``{"logprob", "rank", "decoded_token"}``, holding the prompt's token and the best others."""
    if positions is None:
        raise BackendError(
            "the server answered without prompt_logprobs: that field is vLLM's; for other "
            "servers use score_api: echo",
            kind="BadRequestError",
        )
    if not isinstance(positions, list):
        raise malformed(f"prompt_logprobs is {described(positions)}, not a list")
    if len(positions) != len(token_ids):
        raise _mismatch(len(positions), len(token_ids), "prompt_logprobs")
    entries = []
    for at in range(start, len(token_ids)):
        where = f"prompt_logprobs[{at}]"
        position = object_field(positions[at], where)
        ranked: list[tuple[float, float, int, str]] = []
        for key, info in position.items():
            if not key.lstrip("-").isdigit():
                raise malformed(f"{where} has the key {secrets.redact(key)[:40]!r}, not a token id")
            info = object_field(info, f"{where}[{key!r}]")
            rank = info.get("rank")
            ranked.append((
                _logprob(info.get("logprob"), f"{where}[{key!r}].logprob"),
                _number(rank, f"{where}[{key!r}].rank") if rank is not None else 0.0,
                int(key),
                text_field(info.get("decoded_token"), f"{where}[{key!r}].decoded_token") or "",
            ))
        own = next((item for item in ranked if item[2] == token_ids[at]), None)
        if own is None:
            raise malformed(f"{where} does not hold the prompt's token id {token_ids[at]}")
        entry: dict[str, Any] = {"id": token_ids[at], "token": own[3], "logprob": own[0]}
        if k is not None:
            ranked.sort(key=lambda item: (-item[0], item[1]))
            entry["top_logprobs"] = [{"id": token, "token": text, "logprob": value}
                                     for value, _, token, text in ranked[:k]]
        entries.append(entry)
    return entries


def ids_refused(status: int, message: str) -> BackendError | None:
    """The error of a server that takes only text as ``prompt`` (llama-cpp-python's server
    answers 500 with its validation errors), which no retry changes; None for other errors."""
    lowered = message.lower()
    if status in (400, 422, 500) and "prompt" in lowered and "string" in lowered:
        return BackendError(
            f"the server refused a token-id prompt ({message[:200]}): scoring given tokens needs "
            "a server whose /completions takes token ids (vLLM, SGLang); llama-cpp-python's "
            "server takes text only: score with the llamacpp backend in process instead",
            kind="BadRequestError", status=status,
        )
    return None
