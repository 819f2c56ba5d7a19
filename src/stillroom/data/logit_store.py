"""The compact logit store: a teacher's top-k logprobs as integer columns, for offline KD.

The ``records`` layout (the default) keeps one column, ``logprobs``: per row a list of per-token
dicts ``{token, logprob, [id], top_logprobs: [{token, logprob, [id]}]}``. Its strings and
field names cost about 19 KB per row for top-3 beside 1.6 KB of text. The ``compact`` layout
(``logprobs_format: compact`` on ``complete`` and ``teacher_logprobs``) keeps the same numbers as
four integer columns named after the output column ``C`` (``logprobs`` by default):

* ``C_ids``: ``list<int>``, the generated tokens' ids, one per completion token;
* ``C_q``: ``list<int>``, each generated token's quantized logprob (below);
* ``C_top_ids``: ``list<list<int>>``, per token the ids of the top-k alternatives, best first,
  without the generated token itself (it is already in ``C_ids``/``C_q``);
* ``C_top_q``: ``list<list<int>>``, their quantized logprobs.

No per-token strings: the ids are the teacher tokenizer's, and KD needs one shared tokenizer.

Quantization: ``q = round(-logprob * 1024)``, held in ``0..32767`` (an int16), so the step is
2**-10 nats and a logprob is recovered to within 2**-11 = 0.00049 nats: a probability to within
0.05 % of itself, far below what a top-k forward KL can tell apart (the top-k alone already drops
the rest of the distribution into one tail bucket). The range ends at -32 nats (p < 1.3e-14):
an alternative below it, or with logprob -inf or NaN, is left out (KD's reader leaves such an
alternative out anyway: its mass stays in the tail); a generated token below it is stored as -32.
Quantized integers rather than float16: rows travel through JSON checkpoints as Python numbers,
so only integers keep their exact value everywhere, and the error is uniform instead of growing
with the logprob's size as float16's does.

Arrow/Parquet types. Rows are Python dicts and the writer infers column types, so the integers
are stored as ``int64`` lists; Parquet's dictionary and bit-packed encodings with zstd store them
in a few bits each on disk regardless. :data:`ARROW_TYPES` gives the narrow types (``int32`` ids,
``int16`` logprobs: 6 bytes per (id, logprob) pair in memory) that :func:`narrowed` casts a table
to; ``bench/logit_store.py`` measures both.

Who can write it: only backends that return token ids (:data:`ID_BACKENDS`: llama.cpp, vLLM and
transformers in process; ``teacher_logprobs`` scores only on those). An OpenAI-compatible server
returns token strings only, and turning strings back into ids needs the teacher's tokenizer and is
ambiguous for byte fragments, so that combination is refused with a ConfigError before any
request (:func:`check_backend`); keep ``records`` there.

Reading: :func:`is_compact` tells the layouts apart by columns, and :func:`as_entries` turns a
compact row back into the records layout's per-token dicts, so offline KD has one reader
(:mod:`stillroom.train.kd_alignment`) for both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from stillroom.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pyarrow as pa

LogprobsFormat = Literal["records", "compact"]

SCALE = 1024
"""Quantization steps per nat: ``q = round(-logprob * SCALE)``."""
Q_MAX = 32767
"""The largest stored ``q`` (int16): logprob -32 nats."""
ID_BACKENDS = frozenset({"llamacpp", "transformers", "vllm"})
"""Backend kinds whose logprob entries carry token ids."""
SUFFIXES = ("_ids", "_q", "_top_ids", "_top_q")


def columns(column: str) -> list[str]:
    """The compact layout's column names for output column ``column``."""
    return [column + suffix for suffix in SUFFIXES]


def check_backend(kind: str, backend: str, key: str = "logprobs_format") -> None:
    """Refuse (ConfigError) a backend whose logprobs carry no token ids."""
    if kind not in ID_BACKENDS:
        raise ConfigError(
            f"backend {backend!r} ({kind}) returns token strings without ids, and the compact "
            f"layout stores ids only; use `logprobs_format: records` with it, or a "
            f"{', '.join(sorted(ID_BACKENDS))} backend",
            key=key,
        )


def quantize(logprob: float) -> int | None:
    """``logprob`` as a stored integer, or None where it is out of range (-inf, NaN, < -32)."""
    if math.isnan(logprob):
        return None
    q = round(-logprob * SCALE) if logprob != float("-inf") else Q_MAX + 1
    return None if q > Q_MAX else max(q, 0)


def dequantize(q: int) -> float:
    return -int(q) / SCALE


def to_compact(entries: list[dict[str, Any]], column: str) -> dict[str, list[Any]]:
    """One completion's per-token entries (each with ``id``) as the four compact columns.

    Raises ValueError naming the first entry without an id (a backend outside ID_BACKENDS).
    """
    ids, qs, top_ids, top_qs = [], [], [], []
    for position, entry in enumerate(entries):
        if entry.get("id") is None:
            raise ValueError(f"token {position} {entry.get('token')!r} has no id")
        chosen = int(entry["id"])
        q = quantize(float(entry["logprob"]))
        ids.append(chosen)
        qs.append(Q_MAX if q is None else q)
        alt_ids, alt_qs = [], []
        for alternative in entry.get("top_logprobs") or []:
            if alternative.get("id") is None:
                raise ValueError(f"an alternative of token {position} has no id")
            alt_id, alt_q = int(alternative["id"]), quantize(float(alternative["logprob"]))
            if alt_id == chosen or alt_q is None:
                continue  # the chosen token is stored once; out of range stays in the tail
            alt_ids.append(alt_id)
            alt_qs.append(alt_q)
        top_ids.append(alt_ids)
        top_qs.append(alt_qs)
    return dict(zip(columns(column), (ids, qs, top_ids, top_qs), strict=True))


def is_compact(row: dict[str, Any], column: str) -> bool:
    """Whether ``row`` holds ``column`` in the compact layout (and not as records)."""
    return row.get(column) is None and row.get(column + "_ids") is not None


def as_entries(row: dict[str, Any], column: str, where: str,
               piece: Any) -> list[dict[str, Any]]:
    """A compact row's data as the records layout's entries, ``token`` from ``piece(id)``.

    The stored layout has no strings, so each token's text is the reader's own decoding of its
    id; raises InputError naming ``where`` for columns that do not fit together.
    """
    values: list[list[Any]] = []
    names = ", ".join(f"`{name}`" for name in columns(column))
    for name in columns(column):
        value = row.get(name)
        if not isinstance(value, list):
            raise InputError(f"{where}: the compact logprobs need all of {names} as lists")
        values.append(value)
    ids, qs, top_ids, top_qs = values
    if ids and isinstance(ids[0], list):
        raise InputError(f"{where}: `{column}_ids` holds several samples (n > 1); offline KD "
                         "needs one completion per row")
    if not len(ids) == len(qs) == len(top_ids) == len(top_qs) or any(
        not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b)
        for a, b in zip(top_ids, top_qs, strict=True)
    ):
        raise InputError(f"{where}: the compact logprobs columns {names} differ in length")
    return [
        {
            "token": piece(int(token_id)),
            "id": int(token_id),
            "logprob": dequantize(q),
            "top_logprobs": [{"token": "", "id": int(i), "logprob": dequantize(v)}
                             for i, v in zip(alt_ids, alt_qs, strict=True)],
        }
        for token_id, q, alt_ids, alt_qs in zip(ids, qs, top_ids, top_qs, strict=True)
    ]


def arrow_types(column: str) -> dict[str, pa.DataType]:
    """The narrow Arrow type of each compact column: int32 ids, int16 quantized logprobs."""
    import pyarrow as pa

    ids, q, top_ids, top_q = columns(column)
    return {ids: pa.list_(pa.int32()), q: pa.list_(pa.int16()),
            top_ids: pa.list_(pa.list_(pa.int32())), top_q: pa.list_(pa.list_(pa.int16()))}


def narrowed(table: pa.Table, column: str) -> pa.Table:
    """``table`` with its compact columns cast to :func:`arrow_types` (values are unchanged)."""
    for name, data_type in arrow_types(column).items():
        if name in table.column_names:
            index = table.column_names.index(name)
            table = table.set_column(index, name, table.column(name).cast(data_type))
    return table


__all__ = [
    "ID_BACKENDS",
    "Q_MAX",
    "SCALE",
    "LogprobsFormat",
    "arrow_types",
    "as_entries",
    "check_backend",
    "columns",
    "dequantize",
    "is_compact",
    "narrowed",
    "quantize",
    "to_compact",
]
