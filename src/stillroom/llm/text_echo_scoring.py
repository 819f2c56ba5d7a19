"""Scoring given token ids through a server that takes only text: llama-cpp-python's server.

``score_api: text_echo`` of the openai backend. llama-cpp-python's server (0.3.x) refuses a
token-id ``prompt``, so the ids travel as their text (the caller's own decoding, special tokens
written out) and the server tokenizes it again. Three facts of that server's echo, read in its
source (``llama_cpp/llama.py``, the completion's ``logprobs`` block), decide how the answer is
read, and each is checked rather than assumed:

1. Re-tokenizing a text need not give back the ids it came from (a sampled, non-canonical
   split). ``/extras/tokenize`` (the same tokenizer, special tokens parsed, as the completion
   uses) is asked first; a difference refuses the sequence, naming the first differing position.
2. The echo's log-prob at entry ``i`` is read from the distribution *after* entry ``i``'s own
   token unless the prompt's first token is the model's BOS, which the server then drops from
   the echo; with the BOS dropped the entries line up. So the sequence must start with the BOS
   (chat templates that open with it do: SmolLM2's ``<|im_start|>``, Llama 3's
   ``<|begin_of_text|>``). The server does not say which id is its BOS, so two signs are read.
   The count: with the first token dropped, every later token with the same id is dropped too
   (the server skips the BOS id everywhere), and the echo is those prompt tokens and the one
   generated token, ``len(ids) - count(ids[0]) + 1`` entries (one fewer when the generated token
   is the BOS); with the first token kept the echo is the prompt's tokens less any BOS ids and
   no generated token. The counts coincide when the first token occurs once and no BOS id
   follows, as in plain text; then the texts tell: a kept first token makes the echo's texts
   join up to the whole text, while a dropped BOS (a special token, written out in the text)
   is missing from them. A context with a BOS id inside but not first can still pass unseen:
   use chat templates that open with the BOS.
3. Because the server skips the BOS id everywhere, no scored token may have it (refused).

Alternatives come as ``{text: logprob}`` (ids unknown: ``id`` None), as in the plain echo shape.
"""

from __future__ import annotations

from typing import Any

from stillroom.llm.openai_scoring import checked_logprob
from stillroom.llm.types import BackendError


def check_retokenized(sent: list[int], server: Any) -> None:
    """``/extras/tokenize``'s answer must be the ids themselves."""
    tokens = server.get("tokens") if isinstance(server, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                for t in tokens):
        raise BackendError("/extras/tokenize answered without a list of token ids in `tokens`",
                           kind="APIResponseValidationError")
    if tokens != sent:
        at = next((i for i, (a, b) in enumerate(zip(tokens, sent, strict=False)) if a != b),
                  min(len(tokens), len(sent)))
        raise BackendError(
            f"the server tokenizes this text differently from the ids to score (first at position "
            f"{at}: {tokens[at] if at < len(tokens) else 'end'} for "
            f"{sent[at] if at < len(sent) else 'end'}); a text-only server can score only ids "
            "that its tokenizer writes the same way",
            kind="ScoreMismatch",
        )


def check_sequence(ids: list[int], start: int) -> None:
    """No scored token may share the first token's id (the server would leave it out)."""
    if any(token == ids[0] for token in ids[start:]):
        raise BackendError(
            f"a scored token has the id of the sequence's first token ({ids[0]}), which "
            "llama-cpp-python's server leaves out of its echo wherever it appears",
            kind="ScoreMismatch",
        )


def _logprob(value: Any, where: str) -> float:
    """A log-prob of the echo: a JSON number, at most 0 up to rounding (see checked_logprob)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BackendError(f"{where} is not a number", kind="APIResponseValidationError")
    return checked_logprob(float(value), where)


def parse_text_echo(data: Any, ids: list[int], start: int, k: int | None,
                    text: str) -> list[dict[str, Any]]:
    """The entries of ``Backend.score_tokens`` from the server's echo of ``ids``' text."""
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(logprobs, dict):
        raise BackendError("the server answered without choices[0].logprobs: it needs `echo` "
                           "with `logprobs` on /completions", kind="BadRequestError")
    values: Any = logprobs.get("token_logprobs")
    tokens: Any = logprobs.get("tokens")
    tops: Any = logprobs.get("top_logprobs")
    for name, value in (("token_logprobs", values), ("tokens", tokens)):
        if not isinstance(value, list):
            raise BackendError(f"choices[0].logprobs.{name} is not a list",
                               kind="APIResponseValidationError")
    kept = len(ids) - ids.count(ids[0])  # entries of the prompt once the BOS id is dropped
    joined = "".join(token if isinstance(token, str) else "" for token in tokens)
    if len(values) not in (kept, kept + 1) or len(tokens) != len(values) or joined == text:
        raise BackendError(
            f"the server's echo has {len(values)} entries where {kept} or {kept + 1} were expected "
            f"if the sequence's first token (id {ids[0]}) were the model's BOS: llama-cpp-python's "
            "server reads echo log-probs one position off unless the text starts with its BOS "
            "(render the context with a chat template that opens with it)",
            kind="ScoreMismatch",
        )
    if k and (not isinstance(tops, list) or len(tops) != len(values)):
        raise BackendError("choices[0].logprobs.top_logprobs is not a list as long as the echo",
                           kind="APIResponseValidationError")
    entries = []
    dropped = ids[:start].count(ids[0])
    for at in range(start, len(ids)):
        echo = at - dropped  # the entry of ids[at] in the echo without the BOS-id tokens
        where = f"choices[0].logprobs.token_logprobs[{echo}]"
        if values[echo] is None:
            raise BackendError(f"{where} is null: the server gives no log-prob for the first "
                               "token after the BOS; score from position 2 on",
                               kind="ScoreMismatch")
        token = tokens[echo]
        entry: dict[str, Any] = {"id": ids[at], "token": token if isinstance(token, str) else "",
                                 "logprob": _logprob(values[echo], where)}
        if k is not None:
            top = tops[echo] if k else {}
            if not isinstance(top, dict):
                raise BackendError(f"choices[0].logprobs.top_logprobs[{echo}] is not an object",
                                   kind="APIResponseValidationError")
            where = f"choices[0].logprobs.top_logprobs[{echo}]"
            ranked = sorted(((str(text), _logprob(value, f"{where}[{str(text)!r}]"))
                             for text, value in top.items()), key=lambda item: -item[1])
            entry["top_logprobs"] = [{"id": None, "token": text, "logprob": value}
                                     for text, value in ranked[:k]]
        entries.append(entry)
    return entries


__all__ = ["check_retokenized", "check_sequence", "parse_text_echo"]
