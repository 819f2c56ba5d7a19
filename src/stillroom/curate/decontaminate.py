"""``decontaminate``: drop training rows that copy benchmark items (n-gram overlap, Tulu 3 style).

    - type: decontaminate
      against: [bench/gsm8k_test.jsonl, bench/math500/]   # JSONL, Parquet, CSV or dataset folders
      bench_columns: null      # default: the question-like columns each benchmark has (below)
      columns: null            # the training row's columns to check; default: all its text
      roles: null              # chat messages: the roles whose turns are checked, e.g. [user]
      ngram: 8
      threshold: 0.5           # contaminated when MORE than this share of an item is covered
      short_items: exact       # items shorter than `ngram` tokens: exact (whole-text match) or skip

From the command line::

    stillroom decontaminate train.jsonl --against gsm8k_test.jsonl --against math500.parquet -o out/

The rule
--------
Tulu 3 (Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training",
its decontamination section; code in allenai/open-instruct ``decontamination/search.py``) calls a
test instance contaminated by a training instance when more than 50% of the *test instance's*
tokens are covered by 8-gram matches with that *one* training instance: a test token counts as
matched when it is part of an 8-gram of the test instance that also occurs in the training
instance, and the single training instance covering the most tokens is the match. The share is
taken of the benchmark item, not of the training row, so a long training row that quotes a whole
benchmark question is caught however much else it says. This stage turns that around into a
filter: for every training row it finds the benchmark items it covers, and drops the row when
some item is covered more than ``threshold``. s1 (Muennighoff et al. 2025) decontaminates its
data against its evaluation questions with 8-gram overlap after lowercasing; ``threshold: 0``
gives that stricter rule (any shared n-gram drops the row).

Tokens: the text is Unicode-normalized (NFKC, curly quotes made straight), lowercased and split
on whitespace; punctuation at either end of a token is removed ("Paris." and "paris" are one
token, "2+2=4" stays whole) and a token of punctuation alone is left out. So a copy is found
whatever its case, spacing, line breaks or trailing punctuation. (Tulu 3 uses spaCy tokens, which
count punctuation marks as tokens; leaving them out makes the share a share of words.) Scripts
written without spaces (Chinese, Japanese, Thai) come out as one token per run of text, so this
rule does not suit them. n-grams never span two texts (two columns or two turns of a row).

What is compared
----------------
* Benchmark side (``bench_columns``, CLI ``--bench-column``): by default every column an item has
  among ``question, problem, prompt, instruction, input, query, text, passage`` (names compared
  without case, so GPQA's ``Question`` counts). Answers and solutions are left out by default, as
  in Tulu 3, which checks the question fields only: a short answer ("42", "B") says nothing about
  a leak, while a copied question does. Name them (``--bench-column answer``) to check them too.
  Each column of an item is a text of its own and the item's coverage is its best-covered text,
  so adding a column can only find more leaks, never hide a copied question. (Tulu 3 averages
  over the fields of a multi-field item, e.g. DROP's passage and question.)
* Training side (``columns``, CLI ``--column``): by default every text the row holds: text
  columns, lists of texts, and the ``content`` of chat ``messages`` (and of ``chosen`` /
  ``rejected`` in conversational format); ``id``, ``metadata`` and ``logprobs`` are skipped. A
  benchmark question echoed in a completion is a leak as much as one in a prompt (Tulu 3 indexed
  the user turns only). With ``columns`` named, a row holding none of them is an input error
  (it would otherwise pass unsearched). In a conversation every turn is its own text: user,
  assistant and tool turns, an assistant turn's tool calls (``<tool_call>`` blocks with their
  arguments: a query copied into a search call is a leak too) and a tool's result. ``roles``
  (e.g. ``[user]``, Tulu 3's choice) keeps only the turns of those roles in chat-message cells;
  text cells (a text ``prompt`` or ``completion``) are still checked, so name ``columns`` as
  well to leave them out. A row with no text to check at all (no text cell, or no turn of
  ``roles``) is an input error too, never a clean row that was never searched.
* Items shorter than ``ngram`` tokens have no n-gram. With ``short_items: exact`` (the default)
  such an item counts as leaked (coverage 100%) when one text of the row is exactly the item
  (after the normalization above): an exact copy is found, while a short, generic item ("Which
  of the following is true?") does not drop every row that contains those words. With
  ``short_items: skip`` they are never matched (Tulu 3's behaviour: no n-gram, no match). Items
  with no text in the chosen columns are counted and skipped.

Indexing: every n-gram of every benchmark text is hashed to a 64-bit integer (Python's hash of
the token tuple; the index lives only in this process) and kept in a sorted array beside the
text it came from, so the training set streams through without being held in memory: a row's
n-gram hashes are looked up with a binary search, and only the benchmark texts they hit are
scored. A text whose hits cannot reach the threshold (hits times n tokens at most) is skipped
unscored. The benchmark files are read and indexed when the stage is built, so a missing or
malformed benchmark is a configuration error, named with its file and line, before any row is
read; the run's identity includes a digest of the indexed texts, so an edited benchmark file is
another run.

Output
------
* Kept rows (``data/``): unchanged, with lineage in ``metadata[<stage name>]``:
  ``method: decontaminate``, ``contaminated: false``, ``shared_ngrams`` (how many distinct
  n-grams of the row occur in some benchmark text: near misses show here), ``ngram``,
  ``threshold``.
* Contaminated rows (``dropped/``), with ``drop_reason`` naming the best-covered item, e.g.
  ``contaminated: 63% of bench/gsm8k.jsonl:12 covered by 8-gram matches`` (a short item:
  ``contaminated: bench/x.jsonl:4 (5 tokens, shorter than the 8-gram) is a whole text of the
  row``). The item is ``<benchmark as given>:<line>`` (JSONL, CSV), ``:row N`` (Parquet and
  dataset folders, from 0; a folder of Parquet files adds the file, ``:test.parquet:row 3``) or ``:<id column>=<value>`` when the item has an ``id``, ``task_id``, ``question_id``,
  ``problem_id``, ``unique_id`` or ``idx`` column (or the one named by ``bench_id_column``); the
  benchmark column is added in parentheses when more than one is checked. The row gets a
  ``contamination`` column: every item covered more than the threshold, best first, each
  ``{benchmark, item, column, coverage, tokens}`` (up to 20), and the same in its lineage.
* The run's report (``summarize``): rows checked and contaminated and, per benchmark file, its
  item count, how many items leaked and the first 10 of them (every leaked item is in the
  ``contamination`` column of the rows in ``dropped/``).

From Python: :func:`stillroom.api.decontaminate` runs the stage alone;
:class:`BenchmarkIndex` indexes texts and scores rows without a pipeline.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from stillroom.curate.decontaminate_text import ngram_hashes, texts_in, tokenize
from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import row_id, seed_id_of, with_lineage
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.stage import (
    Dropped,
    Row,
    RowFailure,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

if TYPE_CHECKING:
    import numpy as np

ShortItems = Literal["exact", "skip"]

DEFAULT_BENCH_COLUMNS = (
    "question", "problem", "prompt", "instruction", "input", "query", "text", "passage",
)
ID_COLUMNS = ("id", "task_id", "question_id", "problem_id", "unique_id", "idx")
# Never searched in a training row: bookkeeping, not text a model is trained on.
SKIPPED_ROW_COLUMNS = frozenset({"id", "metadata", "logprobs"})
MAX_LISTED = 20  # matches kept per row (the row is dropped for the first one anyway)
CARD_LISTED = 10  # leaked items named per benchmark in the card

# -- the index -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchItem:
    benchmark: str  # the benchmark as the user named it
    position: str  # "12" (line), "row 3", "task_id=HumanEval/0"

    @property
    def label(self) -> str:
        return f"{self.benchmark}:{self.position}"


@dataclass(frozen=True, slots=True)
class Match:
    """One benchmark item a row covers more than the threshold."""

    item: BenchItem
    column: str
    coverage: float  # share of the item's tokens covered (1.0 for a whole short item)
    tokens: int  # the item text's token count
    whole: bool = False  # a short item matched as a whole text

    def record(self) -> dict[str, Any]:
        return {
            "benchmark": self.item.benchmark,
            "item": self.item.position,
            "column": self.column,
            "coverage": round(self.coverage, 4),
            "tokens": self.tokens,
        }


@dataclass
class BenchmarkStats:
    """What one benchmark file gave the index."""

    name: str
    path: str
    items: int = 0  # rows read
    texts: int = 0  # texts indexed by their n-grams
    short_texts: int = 0  # texts shorter than n tokens (matched whole, or skipped)
    empty_items: int = 0  # rows with no text in the chosen columns
    columns: list[str] = field(default_factory=list)  # the columns used, first seen first


class BenchmarkIndex:
    """Benchmark texts, indexed by their hashed n-grams; :meth:`match` scores a training row.

    Build with :meth:`add` (one item's texts at a time), then :meth:`freeze`; or use
    :meth:`from_files`.
    """

    def __init__(self, ngram: int = 8, *, short_items: ShortItems = "exact"):
        import numpy as np  # here, not at import: `import stillroom` stays light
        if ngram < 1:
            raise ValueError("ngram must be at least 1")
        self.ngram = ngram
        self.short_items = short_items
        self.items: list[BenchItem] = []
        self.stats: dict[str, BenchmarkStats] = {}
        # Per indexed text (a "unit"): its item, column and token count.
        self._unit_item: list[int] = []
        self._unit_column: list[str] = []
        self._unit_tokens: list[int] = []
        self._chunks: list[np.ndarray] = []
        self._short: dict[int, list[tuple[int, str, int]]] = {}  # whole-text hash -> units
        self._digest = hashlib.sha256()
        self._frozen = False
        self._grams = np.empty(0, dtype=np.int64)  # every unit's n-gram hashes, unit after unit
        self._offsets = np.zeros(1, dtype=np.int64)
        self._keys = np.empty(0, dtype=np.int64)  # sorted distinct (hash, unit) pairs...
        self._key_units = np.empty(0, dtype=np.int64)
        self._key_counts = np.empty(0, dtype=np.int64)  # ...and how often the hash is in the unit
        self._tokens = np.empty(0, dtype=np.int64)

    # -- building ----------------------------------------------------------------------------

    def add(self, benchmark: str, position: str, texts: list[tuple[str, str]]) -> None:
        """Index one benchmark item: ``texts`` are its (column, text) pairs."""
        import numpy as np
        if self._frozen:
            raise RuntimeError("the index is frozen")
        stats = self.stats.setdefault(benchmark, BenchmarkStats(benchmark, benchmark))
        stats.items += 1
        item = len(self.items)
        self.items.append(BenchItem(benchmark, position))
        indexed = False
        for column, text in texts:
            tokens = tokenize(text)
            if not tokens:
                continue
            self._digest.update(f"{benchmark}\x1f{position}\x1f{column}\x1f".encode())
            self._digest.update(" ".join(tokens).encode())
            if column not in stats.columns:
                stats.columns.append(column)
            indexed = True
            if len(tokens) < self.ngram:
                stats.short_texts += 1
                if self.short_items == "exact":
                    key = hash(tuple(tokens))
                    self._short.setdefault(key, []).append((item, column, len(tokens)))
                continue
            stats.texts += 1
            self._unit_item.append(item)
            self._unit_column.append(column)
            self._unit_tokens.append(len(tokens))
            self._chunks.append(np.array(ngram_hashes(tokens, self.ngram), dtype=np.int64))
        if not indexed:
            stats.empty_items += 1

    def freeze(self) -> BenchmarkIndex:
        """Build the lookup arrays; no item can be added after."""
        import numpy as np
        if self._frozen:
            return self
        self._frozen = True
        lengths = [len(chunk) for chunk in self._chunks]
        self._offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._tokens = np.array(self._unit_tokens, dtype=np.int64)
        if not self._chunks:
            return self
        self._grams = np.concatenate(self._chunks)
        keys, units, counts = [], [], []
        for unit, chunk in enumerate(self._chunks):
            distinct, how_often = np.unique(chunk, return_counts=True)
            keys.append(distinct)
            units.append(np.full(len(distinct), unit, dtype=np.int64))
            counts.append(how_often.astype(np.int64))
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        self._keys = all_keys[order]
        self._key_units = np.concatenate(units)[order]
        self._key_counts = np.concatenate(counts)[order]
        self._chunks = []  # the concatenation holds them now
        return self

    @property
    def digest(self) -> str:
        """A digest of every indexed text (its benchmark, position, column and tokens)."""
        return self._digest.hexdigest()[:16]

    @property
    def ngram_count(self) -> int:
        return int(self._grams.size)

    # -- matching ----------------------------------------------------------------------------

    def match(self, texts: Iterable[str], threshold: float) -> tuple[list[Match], int]:
        """The items the texts (one training row) cover more than ``threshold``, best first,
        and how many distinct n-grams of the row occur in some benchmark text."""
        import numpy as np
        if not self._frozen:
            self.freeze()
        n = self.ngram
        grams: set[int] = set()
        wholes: set[int] = set()
        for text in texts:
            tokens = tokenize(text)
            if len(tokens) >= n:
                grams.update(ngram_hashes(tokens, n))
            elif tokens and self._short:
                wholes.add(hash(tuple(tokens)))
        matches: list[Match] = []
        shared = 0
        if grams and self._keys.size:
            found = np.fromiter(grams, dtype=np.int64, count=len(grams))
            found.sort()
            lo = np.searchsorted(self._keys, found, side="left")
            hi = np.searchsorted(self._keys, found, side="right")
            hit = hi > lo
            shared = int(hit.sum())
            if shared:
                matches.extend(self._score(found, lo[hit], hi[hit], threshold))
        for key in wholes:
            for item, column, size in self._short.get(key, ()):
                matches.append(Match(self.items[item], column, 1.0, size, whole=True))
        return _best_per_item(matches), shared

    def _score(
        self, found: np.ndarray, lo: np.ndarray, hi: np.ndarray, threshold: float
    ) -> list[Match]:
        import numpy as np
        n = self.ngram
        # Every index row in [lo, hi) of each hit, without a Python loop.
        lengths = hi - lo
        rows = np.arange(int(lengths.sum())) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
        units = self._key_units[rows]
        # How many n-gram positions of each hit unit the row shares: each covers n tokens at most.
        candidates, inverse = np.unique(units, return_inverse=True)
        positions = np.bincount(inverse, weights=self._key_counts[rows])
        tokens_of = self._tokens[candidates]
        # A text cannot pass when even every shared n-gram covering n new tokens would not do
        # (a boilerplate 8-gram shared with thousands of items is dismissed here, unscored).
        possible = np.minimum(tokens_of, positions * n) / tokens_of > threshold
        out: list[Match] = []
        for unit, tokens in zip(
            candidates[possible].tolist(), tokens_of[possible].tolist(), strict=True
        ):
            covered = self.covered_tokens(unit, found)
            coverage = covered / tokens
            if coverage > threshold:
                item = self.items[self._unit_item[unit]]
                out.append(Match(item, self._unit_column[unit], coverage, tokens))
        return out

    def covered_tokens(self, unit: int, found: np.ndarray) -> int:
        """How many tokens of benchmark text ``unit`` lie in an n-gram whose hash is in
        ``found`` (sorted): position i of its n-grams covers tokens i .. i+n-1."""
        import numpy as np
        grams = self._grams[self._offsets[unit] : self._offsets[unit + 1]]
        where = np.searchsorted(found, grams).clip(max=len(found) - 1)
        starts = (found[where] == grams).astype(np.int64)
        # A full convolution with n ones has len(grams) + n - 1 = the token count entries; entry t
        # counts the matched n-grams that start in [t-n+1, t], i.e. that cover token t.
        return int(np.count_nonzero(np.convolve(starts, np.ones(self.ngram, dtype=np.int64))))

    # -- reading benchmark files ---------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        specs: list[str],
        *,
        base_dir: Path | None = None,
        ngram: int = 8,
        bench_columns: list[str] | None = None,
        id_column: str | None = None,
        short_items: ShortItems = "exact",
    ) -> BenchmarkIndex:
        """Index every item of the benchmark files ``specs`` (paths as the user gave them,
        relative to ``base_dir``). Raises ConfigError naming the file (and line) of a problem."""
        index = cls(ngram, short_items=short_items)
        for spec in specs:
            index._read(spec, base_dir, bench_columns, id_column)
        return index.freeze()

    def _read(
        self,
        spec: str,
        base_dir: Path | None,
        bench_columns: list[str] | None,
        id_column: str | None,
    ) -> None:
        try:
            path = resolve_input_path(spec, base_dir)
        except InputError as error:
            raise ConfigError(error.reason, path=spec, key="against") from None
        if not path.exists():
            where = "" if path.is_absolute() else (
                f" (a relative path is read from the pipeline file's folder, or the current "
                f"folder for a stage built in Python: {path.resolve()})"
            )
            raise ConfigError(f"no such benchmark file{where}", path=str(path), key="against")
        prefix = str(path)
        seen_columns: set[str] = set()
        before = len(self.items)
        try:
            for where, row in iter_rows(path):
                seen_columns.update(row)
                position = _position(where, prefix, row, id_column)
                self.add(spec, position, _bench_texts(row, bench_columns))
        except InputError as error:
            raise ConfigError(
                f"cannot read the benchmark: {error.reason}", path=error.path or str(path),
                line=error.line, key="against",
            ) from None
        stats = self.stats.setdefault(spec, BenchmarkStats(spec, str(path)))
        stats.path = str(path)
        if len(self.items) == before:
            raise ConfigError("the benchmark holds no items", path=str(path), key="against")
        if not stats.columns:
            wanted = bench_columns or list(DEFAULT_BENCH_COLUMNS)
            raise ConfigError(
                f"no item has text in the column(s) {wanted}; its columns are "
                f"{sorted(seen_columns)}; name the ones to check with bench_columns "
                "(--bench-column)",
                path=str(path),
                key="bench_columns" if bench_columns else "against",
            )
        if id_column is not None and id_column not in seen_columns:
            raise ConfigError(
                f"no item has the id column {id_column!r}; its columns are {sorted(seen_columns)}",
                path=str(path), key="bench_id_column",
            )


def _bench_texts(row: Row, bench_columns: list[str] | None) -> list[tuple[str, str]]:
    if bench_columns is not None:
        columns = [column for column in bench_columns if column in row]
        numbers = True  # a column named on purpose may hold numbers (an answer column)
    else:
        columns = [column for column in row if column.lower() in DEFAULT_BENCH_COLUMNS]
        numbers = False
    return [
        (column, text) for column in columns for text in texts_in(row[column], numbers=numbers)
    ]


def _position(where: str, prefix: str, row: Row, id_column: str | None) -> str:
    """The item's place: its id when it has one, else the reader's line or row number."""
    names = (id_column,) if id_column is not None else ID_COLUMNS
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return f"{name}={value}"
    if where.startswith(prefix):
        where = where[len(prefix):].lstrip(":/")
    return where


def _best_per_item(matches: list[Match]) -> list[Match]:
    """One match per item (its best-covered text), best first."""
    best: dict[BenchItem, Match] = {}
    for match in matches:
        known = best.get(match.item)
        if known is None or match.coverage > known.coverage:
            best[match.item] = match
    return sorted(best.values(), key=lambda m: (-m.coverage, m.item.benchmark, m.item.position))


def _percent(coverage: float, threshold: float) -> str:
    """The coverage as a percentage, with a decimal when the whole number would read as the
    threshold itself (50.4% > 50% must not print as "50%")."""
    text = f"{coverage:.0%}"
    if round(coverage * 100) <= round(threshold * 100):
        text = f"{coverage:.1%}"
    return text


# -- the stage -------------------------------------------------------------------------------------


@register_stage
class Decontaminate(RowStage):
    type: Literal["decontaminate"] = "decontaminate"
    path_options: ClassVar[tuple[str, ...]] = ("against",)
    against: list[str] = Field(
        min_length=1,
        description="Benchmark files or dataset folders (JSONL, Parquet, CSV, datasets); a "
        "relative path is read from the pipeline file's folder.",
    )
    bench_columns: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The benchmark columns to check; default: the question-like ones each "
        "benchmark has (question, problem, prompt, instruction, input, query, text, passage).",
    )
    bench_id_column: str | None = Field(
        default=None,
        description="The benchmark column naming an item in drop reasons; default: id, task_id, "
        "question_id, problem_id, unique_id or idx when present, else the line.",
    )
    columns: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The training row's columns to check; default: every text it holds.",
    )
    roles: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Chat messages: the roles whose turns are checked (e.g. [user]); default: "
        "every turn, tool calls and results included.",
    )
    ngram: int = Field(default=8, ge=1, le=64, description="n-gram length in tokens (Tulu 3: 8).")
    threshold: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="A row is contaminated when it covers more than this share of one benchmark "
        "item's tokens (Tulu 3: 0.5; 0: any shared n-gram).",
    )
    short_items: ShortItems = Field(
        default="exact",
        description="Items shorter than `ngram` tokens: exact (leaked when a text of the row is "
        "the whole item) or skip (never matched).",
    )

    _index: BenchmarkIndex | None = PrivateAttr(default=None)

    @field_validator("against", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            return [value]
        return value

    @field_validator("against", mode="after")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({spec for spec in value if value.count(spec) > 1})
        if repeated:
            raise ValueError(f"benchmark(s) listed twice: {repeated}")
        return [str(spec) for spec in value]

    @model_validator(mode="after")
    def _build_index(self, info: ValidationInfo) -> Decontaminate:
        base_dir = pipeline_dir(info)
        # Read now: a missing or malformed benchmark stops the run before any row is read.
        self._index = BenchmarkIndex.from_files(
            self.against,
            base_dir=base_dir,
            ngram=self.ngram,
            bench_columns=self.bench_columns,
            id_column=self.bench_id_column,
            short_items=self.short_items,
        )
        return self

    @property
    def index(self) -> BenchmarkIndex:
        assert self._index is not None
        return self._index

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["benchmarks_digest"] = self.index.digest  # an edited benchmark is another run
        if self.roles is None:  # the default, left out: older runs resume as the same run
            out.pop("roles", None)
        return out

    # -- input ---------------------------------------------------------------------------------

    def check_row(self, row: Row) -> str | None:
        # Rows of a mixed file may hold different columns; a row with none of them would pass
        # unsearched, which must not happen silently.
        if self.columns is not None and not any(row.get(column) is not None for column in self.columns):
            return f"the row has none of the column(s) {self.columns} to check; it has {sorted(row)}"
        if not any(text.strip() for text in self.row_texts(row)):
            where = f"in the column(s) {self.columns}" if self.columns is not None else "in any column"
            only = f" (of roles {self.roles})" if self.roles is not None else ""
            return f"the row has no text{only} {where} to check; it has {sorted(row)}"
        return None

    def row_texts(self, row: Row) -> list[str]:
        """The texts of ``row`` that are searched for benchmark n-grams."""
        if self.columns is not None:
            return [text for column in self.columns
                    for text in texts_in(row.get(column), roles=self.roles)]
        return [
            text
            for column, value in row.items()
            if column not in SKIPPED_ROW_COLUMNS
            for text in texts_in(value, roles=self.roles)
        ]

    # -- the stage -------------------------------------------------------------------------------

    def reason(self, match: Match) -> str:
        stats = self.index.stats.get(match.item.benchmark)
        column = f" ({match.column})" if stats is not None and len(stats.columns) > 1 else ""
        if match.whole:
            return (
                f"contaminated: {match.item.label}{column} ({match.tokens} tokens, shorter than "
                f"the {self.ngram}-gram) is a whole text of the row"
            )
        return (
            f"contaminated: {_percent(match.coverage, self.threshold)} of {match.item.label}"
            f"{column} covered by {self.ngram}-gram matches"
        )

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        matches, shared = self.index.match(self.row_texts(row), self.threshold)
        records = [match.record() for match in matches[:MAX_LISTED]]
        out = with_lineage(
            row,
            ctx.stage_name,
            method="decontaminate",
            step=f"{self.ngram}-gram",
            parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=None,
            template=None,
            contaminated=bool(matches),
            shared_ngrams=shared,
            ngram=self.ngram,
            threshold=self.threshold,
            matches=records,
            items_matched=len(matches),
        )
        if not matches:
            return out
        out["contamination"] = records
        return [Dropped(out, self.reason(matches[0]))]

    # -- the report ------------------------------------------------------------------------------

    def summary_columns(self) -> list[str]:
        # drop_reason tells a row in data/ (none) from one in dropped/.
        return ["contamination", "drop_reason"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows checked (those in ``data/`` and those this stage dropped), rows contaminated, and
        per benchmark: its items, the items leaked and the first few of them."""
        leaked: dict[str, dict[str, None]] = {name: {} for name in self.index.stats}
        checked = contaminated = 0
        for row in rows:
            records = [
                record for record in row.get("contamination") or []
                if isinstance(record, dict) and record.get("benchmark") in leaked
            ]
            # Only this stage writes `contamination`, on the rows it drops.
            dropped_here = bool(records) and row.get("drop_reason") is not None
            checked += dropped_here or row.get("drop_reason") is None
            contaminated += dropped_here
            for record in records if dropped_here else []:
                leaked[record["benchmark"]][str(record["item"])] = None
        figures: dict[str, Any] = {"rows checked": checked, "rows contaminated": contaminated}
        for name, stats in self.index.stats.items():
            figures[f"{name}: items"] = stats.items
            figures[f"{name}: items leaked"] = len(leaked[name])
            if leaked[name]:
                shown = ", ".join(list(leaked[name])[:CARD_LISTED])
                more = len(leaked[name]) - CARD_LISTED
                figures[f"{name}: leaked"] = shown + (f" and {more} more" if more > 0 else "")
        return figures

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """"decontaminate: 3 of 400 rows contaminated; gsm8k.jsonl: 2 of 1,319 items leaked"."""
        if "rows checked" not in figures:
            return None
        parts = [
            f"{name}: {figures.get(f'{name}: items leaked', 0):,} of "
            f"{figures.get(f'{name}: items', 0):,} items leaked"
            for name in self.index.stats
        ]
        return (
            f"decontaminate: {figures['rows contaminated']:,} of {figures['rows checked']:,} rows "
            "contaminated; " + "; ".join(parts)
        )
