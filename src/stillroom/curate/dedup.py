"""``dedup``: remove exact, near (MinHash + LSH) or semantic duplicates; one row per cluster stays.

In a pipeline (an all-rows stage: it sees every row before deciding)::

    - type: dedup
      method: minhash        # exact | minhash | semantic
      column: text           # default: `text`, else `prompt` + `completion`, else `messages`
      threshold: 0.8         # minhash: Jaccard (default 0.8); semantic: cosine (default 0.95)
      ngram: 5               # minhash: word n-gram shingles
      num_perm: 128          # minhash: signature length
      verify_jaccard: true   # minhash: drop only pairs whose exact Jaccard reaches the threshold
      false_negative_weight: 0.98  # minhash: misses vs false candidates when choosing LSH bands
      keep_by: score         # keep the row with the highest `score` in each cluster
      roles: null            # chat messages: the roles whose turns count (default: every turn)

From the command line (streams the input; see :func:`dedup`)::

    stillroom dedup data.jsonl -o out/ --method minhash --threshold 0.8 --keep-by score

**Which text.** ``column`` names one column, or several whose texts are joined. By default each
row's text is its ``text``; a row without one uses ``prompt`` and ``completion`` joined (a
prompt alone when there is no completion); a row without those uses the contents of its
``messages``. A list of chat messages (or of strings) in any of them counts as its contents
joined: every turn's text in order (:func:`stillroom.data.rows.cell_text`), an assistant turn's
tool calls written after its content as ``<tool_call>`` blocks and a tool turn's result
included, so two conversations that differ only in a late turn or in a call's arguments are
different texts. ``roles`` (e.g. ``[user]``) keeps only the turns of those roles. A row with
none of these columns is named, with its file and line, before anything runs. A row whose
text is empty (nothing but whitespace, e.g. a conversation whose turns are all empty, or one
with no turn of ``roles``) is not compared (every empty text would be one cluster, and its
first row kept as if it were unique): it goes to ``dropped/`` with the reason ``empty text:
...``.

**Methods.**

* ``exact``: rows whose normalized text is identical (:func:`stillroom.curate.shingling.normalize_text`:
  NFKC, lowercase, punctuation removed except between numbers, whitespace collapsed), compared
  by a 128-bit BLAKE2b digest.
* ``minhash``: near-duplicates by the Jaccard similarity of their word n-gram sets, estimated by
  MinHash and found by LSH banding (Broder 1997; bands and rows chosen to minimize the false
  positive + false negative areas of the S-curve, as datasketch does). Candidate pairs are then
  checked with their exact Jaccard similarity (``verify_jaccard``), so LSH's false positives
  never cause a drop; since they cost only that check, bands are then chosen weighing a missed
  pair 49 times a false candidate (``false_negative_weight: 0.98``: 17 bands of 7 rows at
  Jaccard 0.8, recall 0.996-0.999 over seeds on the bench corpus, where 0.9 gave 14 x 9 and
  0.974-0.988; 0.5, datasketch's choice, without verification). LSH can still miss a few pairs close to the threshold: see
  ``bench/minhash_dedup.py`` for measured precision and recall, and
  :mod:`stillroom.curate.minhash` for the details. The defaults (word 5-grams, 128 permutations,
  Jaccard 0.8) are the common near-dedup settings (0.7-0.8, 128-256 permutations).
* ``semantic``: sentence embeddings (all-MiniLM-L6-v2, packaged; or ``model: /path``) and every
  pair at cosine similarity >= the threshold; see :mod:`stillroom.curate.semantic`.

**Clusters and what stays.** Similar pairs are joined into clusters (connected components, so a
chain a~b~c is one cluster even when a and c are not similar themselves). One row per cluster is
kept: the one with the highest ``keep_by`` value (a null value counts as the lowest), else, or on
a tie, the first in input order.

**Output.** Rows are unchanged but for their lineage, ``metadata[<stage name>]``: ``method:
dedup``, ``step`` (the method), ``cluster_size`` (1 for a row with no duplicate), and for a
dropped row ``duplicate_of`` (the kept row's ``id``, or ``row N`` for the N-th input row, from 0,
when rows have no ``id``) and ``similarity`` (with the kept row). Dropped rows go to ``dropped/``
with ``stage`` and one of these ``drop_reason``\\ s:

* ``exact duplicate of <id>``
* ``near-duplicate of <id> (jaccard 0.86)`` (``estimated jaccard`` without ``verify_jaccard``);
  through a chain, the similarity with the kept row may be under the threshold
* ``semantic duplicate of <id> (cosine 0.97)``

A row whose text is missing when it reaches this stage from an earlier one goes to ``failed/``.
The stage reports (card, report, ``stillroom inspect``) the rows it saw, kept, duplicates
dropped, clusters with duplicates, the largest cluster and, for minhash, the LSH bands and rows
and the candidate and similar pair counts.

**Memory.** The stage is an :class:`~stillroom.pipeline.stage.AllRowsFilter`. First in a
pipeline (``stillroom dedup`` is a pipeline of this one stage), the executor streams it: it reads
the input three times and keeps only numbers between the passes: the check of every row (file
and line named before anything runs), the index pass that hashes the texts in batches (keeping per
row its band hashes and shingle hashes: about 120 bytes + 4 per word, and its id), and the pass
that decides each row and commits ``data/`` and ``dropped/`` every 50,000 rows (an interrupted run
resumes at the first chunk not committed; the index is built again). After a row stage (a
pipeline that dedups what it generated) it gets the rows gathered in memory instead. Measured
with ``bench/minhash_dedup.py --docs 1000000 --cli`` (see the bench's results file).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from stillroom.curate import lsh_bands, minhash, semantic, shingling
from stillroom.data.rows import cell_text, cell_texts, row_id, seed_id_of, with_lineage
from stillroom.errors import ConfigError
from stillroom.pipeline.stage import (
    AllRowsFilter,
    Dropped,
    Failed,
    ParallelMap,
    Row,
    RowFailure,
    Rows,
    StageContext,
    register_stage,
)

Method = Literal["exact", "minhash", "semantic"]

# Texts hashed or embedded per batch.
BATCH_ROWS = 10_000
AUTO_COLUMNS = "`text`, `prompt` (with `completion`) or `messages`"
# Options that only one method reads; giving one to another method is a mistake worth naming.
METHOD_OPTIONS: dict[str, set[str]] = {
    "ngram": {"minhash"},
    "num_perm": {"minhash"},
    "bands": {"minhash"},
    "rows": {"minhash"},
    "verify_jaccard": {"minhash"},
    "false_negative_weight": {"minhash"},
    "seed": {"minhash"},
    "model": {"semantic"},
    "threshold": {"minhash", "semantic"},
}
# (rows, similar pairs, similarity of given pairs, figures for the report)
_Found = tuple[int, np.ndarray, Callable[[np.ndarray], np.ndarray], dict[str, Any]]
DEFAULT_THRESHOLD = {"minhash": minhash.DEFAULT_THRESHOLD, "semantic": semantic.DEFAULT_COSINE_THRESHOLD}


class TextMissing(ValueError):
    """A row has no text to compare (message says which column and what the row has)."""


class TextEmpty(ValueError):
    """A row's text is empty: it is dropped with this reason, never kept as a unique row."""


def as_text(value: Any, roles: Sequence[str] | None = None) -> str | None:
    """A cell as text (:func:`stillroom.data.rows.cell_text`): a string; a chat message's
    content and tool calls; a list of those, joined by blank lines; with ``roles``, only the
    messages of those roles. None when the cell holds no text."""
    return cell_text(value, roles, sep="\n\n")


@dataclass
class Clusters:
    """What dedup decided, per row (arrays of the rows' length)."""

    keeper: np.ndarray  # int64: the row kept for this row's cluster (the row itself when kept)
    size: np.ndarray  # int64: how many rows its cluster has
    similarity: np.ndarray  # float64: its similarity with the kept row (1.0 for a kept row)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        return self.keeper == np.arange(len(self.keeper))

    def summary(self) -> dict[str, Any]:
        kept = self.kept
        return {
            "rows": len(self.keeper),
            "kept": int(kept.sum()),
            "duplicates_dropped": int((~kept).sum()),
            "clusters_with_duplicates": int((kept & (self.size > 1)).sum()),
            "largest_cluster": int(self.size.max(initial=0)),
            **self.figures,
        }


def choose_keepers(labels: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """For each row, the row kept in its cluster: highest score (NaN lowest), then first."""
    if scores is None:
        return labels.copy()  # connected_components labels each cluster by its first row
    index = np.arange(len(labels))
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((index, -ranked, labels))  # by cluster, best score, input order
    ordered = labels[order]
    heads = order[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
    best = np.empty(len(labels), dtype=np.int64)
    best[labels[heads]] = heads
    return best[labels]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(shingling.normalize_text(text).encode("utf-8"), digest_size=16).digest()


def _digests(texts: Sequence[str]) -> bytes:
    """The 16-byte digests of a batch of texts, one after another."""
    return b"".join(_digest(text) for text in texts)


@register_stage
class Dedup(AllRowsFilter):
    """Remove duplicate rows (exact, MinHash near-duplicates or semantic); keep one per cluster."""

    type: Literal["dedup"] = "dedup"
    method: Method = Field(default="minhash", description="exact, minhash or semantic.")
    column: str | list[str] | None = Field(
        default=None,
        description="The text column(s); default: text, else prompt + completion, else messages.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="minhash: Jaccard (default 0.8); semantic: cosine (default 0.95).",
    )
    ngram: int = Field(default=shingling.DEFAULT_NGRAM, ge=1, description="Words per shingle.")
    num_perm: int = Field(
        default=minhash.DEFAULT_NUM_PERM, ge=2, le=4096, description="MinHash permutations."
    )
    bands: int | None = Field(default=None, ge=1, description="LSH bands; default: optimal.")
    rows: int | None = Field(default=None, ge=1, description="Signature rows per LSH band.")
    verify_jaccard: bool = Field(
        default=True, description="Check candidate pairs' exact Jaccard similarity."
    )
    false_negative_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Weight of missed pairs (vs false candidates) when choosing bands and rows; "
        "default 0.98 with verify_jaccard, else 0.5.",
    )
    seed: int = Field(default=0, description="Seed of the MinHash permutations.")
    keep_by: str | None = Field(
        default=None, description="Keep the row with the highest value of this column."
    )
    model: str | None = Field(
        default=None, description="semantic: a local sentence-transformers folder."
    )
    roles: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Chat messages: the roles whose turns are compared (e.g. [user]); default: "
        "every turn.",
    )
    _stage_name: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_options(self) -> Dedup:
        for option in sorted(self.model_fields_set & set(METHOD_OPTIONS)):
            methods = METHOD_OPTIONS[option]
            if self.method not in methods and getattr(self, option) is not None:
                raise PydanticCustomError(
                    "dedup_option",
                    "`{option}` applies to method {methods}, not {method}",
                    {"option": option, "methods": " or ".join(sorted(methods)),
                     "method": self.method},
                )
        if (self.bands is None) != (self.rows is None):
            raise PydanticCustomError("dedup_bands", "give both `bands` and `rows`, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise PydanticCustomError(
                "dedup_bands",
                "bands × rows = {product} is more than num_perm = {num_perm}",
                {"product": self.bands * self.rows, "num_perm": self.num_perm},
            )
        if self.method == "semantic":
            problem = semantic.check_model(self.model)
            if problem:
                raise PydanticCustomError("dedup_model", "{problem}", {"problem": problem})
        return self

    def identity(self) -> dict[str, Any]:
        # The default is left out, so runs made before the option existed resume as the same run.
        out = super().identity()
        if self.roles is None:
            out.pop("roles", None)
        return out

    # -- options ---------------------------------------------------------------------------

    @property
    def effective_threshold(self) -> float | None:
        if self.method == "exact":
            return None
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLD[self.method]

    @property
    def lsh(self) -> tuple[int, int]:
        """(bands, rows) used by ``minhash``."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        threshold = self.effective_threshold
        assert threshold is not None
        weight = self.false_negative_weight
        if weight is None:
            weight = lsh_bands.default_false_negative_weight(self.verify_jaccard)
        return lsh_bands.lsh_parameters(threshold, self.num_perm, 1.0 - weight, weight)

    # -- rows ------------------------------------------------------------------------------

    def text_of(self, row: Row) -> str:
        """The text this row is compared by; :class:`TextMissing` says why there is none,
        :class:`TextEmpty` that it is empty."""
        text = self._text_of(row)
        if not text.strip():
            which = self.column or "the row's text"
            only = f" of roles {self.roles}" if self.roles else ""
            raise TextEmpty(f"{which} holds no text{only} to compare")
        return text

    def _text_of(self, row: Row) -> str:
        if self.column is not None:
            names = [self.column] if isinstance(self.column, str) else self.column
            return "\n\n".join(self._named(row, name) for name in names)
        if row.get("text") is not None:
            return self._named(row, "text")
        if row.get("prompt") is not None:
            prompt = self._named(row, "prompt")
            if row.get("completion") is None:
                return prompt
            return f"{prompt}\n\n{self._named(row, 'completion')}"
        if row.get("messages") is not None:
            return self._named(row, "messages")
        raise TextMissing(
            f"no text to compare: the row has none of {AUTO_COLUMNS} (its columns: "
            f"{', '.join(sorted(row)) or 'none'}); name the text column with --column "
            "(stillroom dedup) or `column:` (a pipeline)"
        )

    def _named(self, row: Row, name: str) -> str:
        if name not in row:
            raise TextMissing(
                f"the row has no `{name}` column (its columns: {', '.join(sorted(row)) or 'none'})"
            )
        value = row[name]
        text = as_text(value, self.roles)
        if text is None:
            if cell_texts(value) is not None:
                return ""  # chat messages without text (of `roles`): TextEmpty names it
            kind = "null" if value is None else type(value).__name__
            raise TextMissing(f"`{name}` is {kind}, not text or chat messages")
        return text

    def score_of(self, row: Row) -> float:
        """The row's ``keep_by`` value (NaN when null); ValueError when it is not a number."""
        assert self.keep_by is not None
        if self.keep_by not in row:
            raise ValueError(f"the row has no `{self.keep_by}` column (keep_by)")
        value = row[self.keep_by]
        if value is None:
            return float("nan")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"keep_by column `{self.keep_by}` must hold numbers, not {value!r}")
        return float(value)

    def check_row(self, row: Row) -> str | None:
        try:
            self._text_of(row)  # an empty text is not bad input: it is dropped with its reason
            if self.keep_by is not None:
                self.score_of(row)
        except ValueError as problem:
            return str(problem)
        return None

    # -- the decision, shared by the stage and `stillroom dedup` ----------------------------

    def find_clusters(
        self, batches: Iterable[Sequence[str]], scores: Callable[[], np.ndarray | None],
        parallel_map: ParallelMap = map,
    ) -> Clusters:
        """Cluster the texts (given in batches, in row order) and pick each cluster's keeper.

        ``scores`` is called after the last batch was read (the ``keep_by`` values, or None).
        ``parallel_map`` hashes the batches (the Ray executor's spreads them over the cluster);
        the clusters are found over all texts at once either way, so the result is the same.
        """
        if self.method == "semantic":  # one embedding model, here: its batches are not spread
            count, pairs, similarity_of, figures = self._semantic(batches)
        else:
            finder = {"exact": self._exact, "minhash": self._minhash}[self.method]
            count, pairs, similarity_of, figures = finder(batches, parallel_map)
        labels = minhash.connected_components(count, pairs)
        keeper = choose_keepers(labels, scores())
        size = np.bincount(labels, minlength=count)[labels]
        similarity = np.ones(count)
        dropped = np.flatnonzero(keeper != np.arange(count))
        if len(dropped):
            similarity[dropped] = similarity_of(np.stack([dropped, keeper[dropped]], axis=1))
        return Clusters(keeper, size, similarity, figures)

    def _exact(self, batches: Iterable[Sequence[str]], parallel_map: ParallelMap) -> _Found:
        digests = bytearray()
        for batch_digests in parallel_map(_digests, batches):
            digests += batch_digests
        words = np.frombuffer(bytes(digests), dtype=np.uint64).reshape(-1, 2)
        order = np.lexsort((words[:, 1], words[:, 0]))
        same = np.all(words[order[1:]] == words[order[:-1]], axis=1)
        # Each copy linked to the next one with the same digest: a chain per group of copies.
        pairs = np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)
        return len(words), pairs, lambda pairs: np.ones(len(pairs)), {}

    def _minhash(self, batches: Iterable[Sequence[str]], parallel_map: ParallelMap) -> _Found:
        threshold = self.effective_threshold
        assert threshold is not None
        bands, rows = self.lsh
        index = minhash.MinHashIndex(
            threshold=threshold, num_perm=self.num_perm, ngram=self.ngram, bands=bands,
            rows=rows, verify=self.verify_jaccard, seed=self.seed,
        )
        for sketches in parallel_map(index.sketcher, batches):
            index.add_sketches(sketches)
        pairs, _ = index.pairs()
        figures = {"bands": bands, "rows_per_band": rows, "candidate_pairs": index.candidates,
                   "similar_pairs": len(pairs)}
        return index.count, pairs, index.similarity, figures

    def _semantic(self, batches: Iterable[Sequence[str]]) -> _Found:
        threshold = self.effective_threshold
        assert threshold is not None
        try:
            vectors = semantic.embed_batches(batches, self.model)
            pairs, _ = semantic.similar_pairs(vectors, threshold)
        except semantic.EmbeddingsUnavailable as error:  # a missing extra: say how to install it
            raise ConfigError(str(error), key="model") from None
        return (len(vectors), pairs, lambda pairs: semantic.cosine(vectors, pairs),
                {"similar_pairs": len(pairs)})

    def threshold_figure(self) -> dict[str, float]:
        threshold = self.effective_threshold
        return {} if threshold is None else {"threshold": threshold}

    def reason(self, kept_label: str, similarity: float) -> str:
        if self.method == "exact":
            return f"exact duplicate of {kept_label}"
        if self.method == "semantic":
            return f"semantic duplicate of {kept_label} (cosine {similarity:.2f})"
        measure = "jaccard" if self.verify_jaccard else "estimated jaccard"
        return f"near-duplicate of {kept_label} ({measure} {similarity:.2f})"

    def outcome(
        self, row: Row, index: int, clusters: Clusters, label_of: Callable[[int], str],
        stage_name: str,
    ) -> Row | Dropped:
        """Row ``index`` with its lineage: kept, or Dropped with the reason."""
        keeper = int(clusters.keeper[index])
        kept = keeper == index
        similarity = None if kept else round(float(clusters.similarity[index]), 4)
        out = with_lineage(
            row, stage_name, method="dedup", step=self.method, parent_id=row_id(row),
            seed_id=seed_id_of(row),
            model=semantic.model_label(self.model) if self.method == "semantic" else None,
            template=None, cluster_size=int(clusters.size[index]),
            duplicate_of=None if kept else label_of(keeper), similarity=similarity,
        )
        if kept:
            return out
        return Dropped(out, self.reason(label_of(keeper), float(clusters.similarity[index])))

    # -- as a pipeline stage: an index of texts, then a decision per row ------------------------

    async def index(self, rows: Rows, ctx: StageContext) -> DedupDecisions:
        """Read the rows once, keeping per row only its id, score and hashes (or embedding),
        and cluster them; a row without usable text is remembered as such (it fails)."""
        self._stage_name = ctx.stage_name
        ids: list[str | None] = []
        scores: list[float] = []
        # The row position of each usable row: 8 bytes a row (a list of ints holds 36).
        positions = array("q")

        def texts() -> Iterator[str]:
            for position, row in enumerate(rows):
                try:
                    text = self.text_of(row)
                    score = self.score_of(row) if self.keep_by is not None else None
                except ValueError:
                    continue  # decided as failed, with its reason, in the second pass
                positions.append(position)
                ids.append(row_id(row))
                if score is not None:
                    scores.append(score)
                yield text

        def cluster() -> Clusters:
            return self.find_clusters(
                _batched(texts(), BATCH_ROWS),
                lambda: np.array(scores, dtype=np.float64) if self.keep_by is not None else None,
                ctx.parallel_map,
            )

        clusters = await asyncio.to_thread(cluster)
        figures = {"method": self.method, **self.threshold_figure(), **clusters.summary()}
        if len(positions) == len(rows):  # every row usable (the usual case): no maps needed
            return DedupDecisions(self, ctx.stage_name, clusters, None, None, ids, figures)
        usable = np.full(len(rows), -1, dtype=np.int64)
        where = np.frombuffer(positions, dtype=np.int64) if positions else np.zeros(0, np.int64)
        usable[where] = np.arange(len(where))
        return DedupDecisions(self, ctx.stage_name, clusters, usable, where, ids, figures)

    def result_line(self, figures: dict[str, Any]) -> str | None:
        return (
            f"{figures['method']}: kept {figures['kept']:,} of {figures['rows']:,} rows; "
            f"{figures['duplicates_dropped']:,} duplicates dropped from "
            f"{figures['clusters_with_duplicates']:,} clusters (largest: "
            f"{figures['largest_cluster']:,})"
        )

    def summary_columns(self) -> list[str]:
        return ["metadata", "stage"]

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """Rows this stage saw, kept, dropped as duplicates; clusters with duplicates; the
        largest cluster (from each row's lineage)."""
        name = self._stage_name or self.name or self.type
        seen = [
            (row.get("stage"), entry)
            for row in rows
            for entry in [(row.get("metadata") or {}).get(name)]
            if isinstance(entry, dict) and entry.get("method") == "dedup"
        ]
        dropped = sum(1 for stage, entry in seen if stage == name and entry.get("duplicate_of"))
        sizes = [int(entry.get("cluster_size") or 1) for _, entry in seen]
        return {
            "method": self.method,
            **self.threshold_figure(),
            "rows": len(seen),
            "kept": len(seen) - dropped,
            "duplicates_dropped": dropped,
            "clusters_with_duplicates": sum(
                1 for _, entry in seen if not entry.get("duplicate_of")
                and int(entry.get("cluster_size") or 1) > 1
            ),
            "largest_cluster": max(sizes, default=0),
        }


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


@dataclass
class DedupDecisions:
    """The clusters of every usable row and what each row becomes (see Dedup.index)."""

    stage: Dedup
    name: str
    clusters: Clusters
    # Per row position: its place among the usable rows, or -1; None when every row is usable.
    usable: np.ndarray | None
    positions: np.ndarray | None  # per usable row: its row position (None: the same)
    ids: list[str | None]  # per usable row: its id
    figures: dict[str, Any] | None

    def label(self, usable: int) -> str:
        position = usable if self.positions is None else int(self.positions[usable])
        return self.ids[usable] or f"row {position}"

    def decide(self, position: int, row: Row) -> Row | Dropped | Failed:
        index = position if self.usable is None else int(self.usable[position])
        if index < 0:
            try:
                self.stage.text_of(row)
                if self.stage.keep_by is not None:
                    self.stage.score_of(row)
                problem = "the row changed between the two passes over the rows"
            except TextEmpty as error:
                return Dropped(row, f"empty text: {error}")
            except ValueError as error:
                problem = str(error)
            return Failed(row, RowFailure(problem, kind="DedupInputError"))
        return self.stage.outcome(row, index, self.clusters, self.label, self.name)
