"""Offline KD's teacher data: the top-k logprobs stored at generation mapped onto the student's
tokens (the rules are in :mod:`stillroom.train.kd`, "How stored logprobs are matched").

* :func:`check_same_vocabulary`: refuse a teacher tokenizer whose vocabulary differs from the
  student's (online teacher, or offline ``teacher_tokenizer``).
* :class:`Pieces`: the decoded text of every student token id, and the ids a text names once.
* :func:`stored_entries`: a row's stored per-token list, checked for the shape a ``complete``
  stage writes.
* :func:`row_entries`: a row's per-token list from either stored layout: ``records`` (the
  ``logprobs`` column of dicts) or ``compact`` (integer columns, :mod:`stillroom.data.logit_store`),
  told apart by the row's columns.
* :func:`align_logprobs`: one completion's stored logprobs as student ids and one teacher top-k
  (:data:`TopK`) per id; a row that does not align is refused with an InputError naming the row,
  the position and the first token that does not match.
"""

from __future__ import annotations

from typing import Any

from stillroom.data.logit_store import as_entries, is_compact
from stillroom.data.rows import Row
from stillroom.errors import ConfigError, InputError

TopK = list[tuple[int, float]]
"""One position's teacher data: ``(student token id, logprob)`` pairs, the generated token first."""


# -- tokenizers ------------------------------------------------------------------------------------


def check_same_vocabulary(student: Any, teacher: Any, key: str) -> None:
    """Refuse (ConfigError naming ``key``) unless both tokenizers map the same texts to the same ids."""
    mine, theirs = student.get_vocab(), teacher.get_vocab()
    if mine == theirs:
        return
    # The first id whose text differs (or that one side lacks), with both texts: what the
    # teacher would read where the student wrote that token.
    by_id_mine = {token_id: text for text, token_id in mine.items()}
    by_id_theirs = {token_id: text for text, token_id in theirs.items()}
    first = min(token_id for token_id in by_id_mine.keys() | by_id_theirs.keys()
                if by_id_mine.get(token_id) != by_id_theirs.get(token_id))

    def shown(text: str | None) -> str:
        return "no token" if text is None else repr(text)

    raise ConfigError(
        f"the teacher's tokenizer differs from the student's ({len(theirs)} vs {len(mine)} "
        f"entries); the first mismatching token is id {first}: {shown(by_id_mine.get(first))} "
        f"for the student, {shown(by_id_theirs.get(first))} for the teacher; logit KD needs one "
        "shared tokenizer", key=key,
    )


class Pieces:
    """The decoded text of every student token id, and the ids a text names exactly once."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._by_text: dict[str, int] | None = None
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False))

    def id_of(self, text: str) -> int | None:
        if self._by_text is None:  # ~50k decodes, only for rows stored without ids
            seen: dict[str, int | None] = {}
            for token_id in range(len(self.tokenizer)):
                piece = self.text(token_id)
                seen[piece] = None if piece in seen else token_id
            self._by_text = {piece: i for piece, i in seen.items() if i is not None}
        return self._by_text.get(text)


# -- offline: stored logprobs to student positions -------------------------------------------------


def row_name(index: int, row: Row) -> str:
    return f"row {index} (id {row['id']!r})" if row.get("id") is not None else f"row {index}"


def stored_entries(value: Any, where: str, column: str) -> list[dict[str, Any]]:
    """The stored per-token list, checked for the shape a `complete` stage writes."""
    if value is None:
        raise InputError(f"{where}: no `{column}`; generate the data with a `complete` stage "
                         "with `top_logprobs: K`, or set `logprobs_column`")
    if isinstance(value, list) and value and isinstance(value[0], list):
        raise InputError(f"{where}: `{column}` holds several samples (n > 1); offline KD needs one "
                         "completion per row")
    if not isinstance(value, list) or not all(
        isinstance(e, dict) and isinstance(e.get("token"), str) and e.get("logprob") is not None
        for e in value
    ):
        raise InputError(f"{where}: `{column}` must be a list of {{token, logprob, top_logprobs}} "
                         "entries, one per completion token")
    return value


def row_entries(row: Row, column: str, where: str, pieces: Pieces) -> list[dict[str, Any]]:
    """The stored per-token list of ``row``, in either layout, as :func:`stored_entries` gives it.

    A compact row has no token strings; its ``token`` texts are the student's decoding of the
    stored ids, so the check that ids and texts agree holds trivially and the tokenizers are
    compared by the ids decoding to the completion (and by ``teacher_tokenizer``).
    """
    if is_compact(row, column):
        return as_entries(row, column, where, pieces.text)
    return stored_entries(row.get(column), where, column)


def _has_id(entry: dict[str, Any]) -> bool:
    return entry.get("id") is not None


def _is_eos(entry: dict[str, Any], tokenizer: Any) -> bool:
    if _has_id(entry):
        return int(entry["id"]) == tokenizer.eos_token_id
    return bool(entry["token"]) and entry["token"] == tokenizer.eos_token


def _chosen_ids(entries: list[dict[str, Any]], completion: str, pieces: Pieces,
                where: str) -> list[int]:
    """The student ids of the generated tokens; refuse when the tokenizers disagree."""
    tokenizer, vocab = pieces.tokenizer, len(pieces.tokenizer)
    if entries and all(_has_id(e) for e in entries):
        ids = [int(e["id"]) for e in entries]
        for position, (token_id, entry) in enumerate(zip(ids, entries, strict=True)):
            if not 0 <= token_id < vocab:
                raise InputError(f"{where}: token {position} has id {token_id}, outside the "
                                 f"student's vocabulary of {vocab}: the tokenizers differ")
            if token_id not in pieces.special and pieces.text(token_id) != entry["token"]:
                raise InputError(
                    f"{where}: token {position} is id {token_id} = {entry['token']!r} for the "
                    f"teacher but {pieces.text(token_id)!r} for the student: the tokenizers differ"
                )
        return ids
    texts = [e["token"] for e in entries]
    canonical = tokenizer(completion, add_special_tokens=False).input_ids
    if [pieces.text(i) for i in canonical[: len(texts)]] == texts:
        return list(canonical[: len(texts)])
    ids = []
    for position, text in enumerate(texts):
        found = pieces.id_of(text)
        if found is None:
            raise InputError(
                f"{where}: token {position} {text!r} is not one token of the student's tokenizer "
                "and the completion does not tokenize to the stored tokens: the tokenizers "
                "differ, or the text was changed after generation"
            )
        ids.append(found)
    return ids


def _first_mismatch(ids: list[int], completion: str, pieces: Pieces) -> tuple[int, str]:
    """The first stored token after which the decoded text stops being the completion's start."""
    for end in range(1, len(ids) + 1):
        decoded = pieces.tokenizer.decode(ids[:end], clean_up_tokenization_spaces=False)
        if decoded.endswith("\ufffd"):  # a UTF-8 character cut in the middle: look further
            continue
        if not completion.startswith(decoded):
            return end - 1, pieces.text(ids[end - 1])
    return len(ids), ""


def _checked_text(ids: list[int], completion: str, pieces: Pieces, where: str) -> list[int]:
    """The ids of the completion's text the stored tokens do not cover (at most one token)."""
    tokenizer = pieces.tokenizer
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if decoded == completion:
        return []
    if completion.startswith(decoded):
        rest = tokenizer(completion[len(decoded):], add_special_tokens=False).input_ids
        if len(rest) == 1:  # a backend that did not report the last sampled token
            return list(rest)
    position, token = _first_mismatch(ids, completion, pieces)
    detail = f"token {position} {token!r}" if token else "after the last stored token"
    raise InputError(
        f"{where}: the completion does not match its logprobs ({detail}: the stored tokens "
        f"spell {decoded[:60]!r}..., the completion is {completion[:60]!r}...): the text was "
        "changed after generation, or the tokenizers differ"
    )


def _topk(entry: dict[str, Any], chosen: int, pieces: Pieces) -> TopK:
    """The generated token and the placeable alternatives, each id once."""
    out: TopK = [(chosen, float(entry["logprob"]))]
    seen = {chosen}
    for alternative in entry.get("top_logprobs") or []:
        token_id = (int(alternative["id"]) if _has_id(alternative)
                    else pieces.id_of(str(alternative.get("token", ""))))
        logprob = float(alternative["logprob"])
        if token_id is None or token_id in seen or logprob != logprob or logprob == float("-inf"):
            continue  # unplaceable, repeated, or no mass: its probability stays in the tail
        if not 0 <= token_id < len(pieces.tokenizer):
            raise InputError(f"an alternative token has id {token_id}, outside the student's "
                             f"vocabulary of {len(pieces.tokenizer)}: the tokenizers differ")
        seen.add(token_id)
        out.append((token_id, logprob))
    return out


def align_logprobs(entries: list[dict[str, Any]], completion: str, pieces: Pieces,
                   where: str = "row") -> tuple[list[int], list[TopK], TopK]:
    """Stored logprobs of one completion mapped onto the student's tokens.

    Returns the completion's student ids (without EOS), one teacher top-k per id (empty where
    the teacher gave none) and the EOS position's top-k (empty unless the teacher reported it).
    Raises InputError, naming ``where`` and the first mismatching token, when they do not align.
    """
    tokenizer = pieces.tokenizer
    entries = list(entries)
    eos_entry = entries.pop() if entries and _is_eos(entries[-1], tokenizer) else None
    ids = _chosen_ids(entries, completion, pieces, where)
    tail = _checked_text(ids, completion, pieces, where)
    try:
        topk = [_topk(entry, token_id, pieces) for entry, token_id in zip(entries, ids, strict=True)]
        eos_topk = _topk(eos_entry, tokenizer.eos_token_id, pieces) if eos_entry else []
    except InputError as error:
        raise InputError(f"{where}: {error.reason}") from None
    return ids + tail, topk + [[] for _ in tail], eos_topk


__all__ = [
    "Pieces",
    "TopK",
    "align_logprobs",
    "check_same_vocabulary",
    "row_entries",
    "row_name",
    "stored_entries",
]
