"""``dedup``: remove exact, near (MinHash + LSH) or semantic duplicates; one row per cluster stays.

In a pipeline (an all-rows stage: it sees every row before deciding)::

    - type: dedup
      method: minhash        # exact | minhash | semantic
      column: text           # default: `text`, else `prompt` + `completion`, else `messages`
      threshold: 0.8         # minhash: Jaccard (default 0.8); semantic: cosine (default 0.95)
      ngram: 5               # minhash: word n-gram shingles
      num_perm: 128          # minhash: signature length
      verify_jaccard: true   # minhash: drop only pairs whose exact Jaccard reaches the threshold
      false_negative_weight: 0.9   # minhash: misses vs false candidates when choosing LSH bands
      keep_by: score         # keep the row with the highest `score` in each cluster

From the command line (streams the input; see :func:`dedup`)::

    stillroom dedup data.jsonl -o out/ --method minhash --threshold 0.8 --keep-by score

**Which text.** ``column`` names one column, or several whose texts are joined. By default each
row's text is its ``text``; a row without one uses ``prompt`` and ``completion`` joined (a
prompt alone when there is no completion); a row without those uses the contents of its
``messages``. A list of chat messages (or of strings) in any of them counts as its contents
joined. A row with none of these is named, with its file and line, before anything runs.

**Methods.**

* ``exact``: rows whose normalized text is identical (:func:`stillroom.curate.minhash.normalize_text`:
  NFKC, lowercase, punctuation removed except between numbers, whitespace collapsed), compared
  by a 128-bit BLAKE2b digest.
* ``minhash``: near-duplicates by the Jaccard similarity of their word n-gram sets, estimated by
  MinHash and found by LSH banding (Broder 1997; bands and rows chosen to minimize the false
  positive + false negative areas of the S-curve, as datasketch does). Candidate pairs are then
  checked with their exact Jaccard similarity (``verify_jaccard``), so LSH's false positives
  never cause a drop; since they cost only that check, bands are then chosen weighing a missed
  pair 9 times a false candidate (``false_negative_weight: 0.9``; 0.5, datasketch's choice,
  without verification). LSH can still miss a few pairs close to the threshold: see
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

**Memory.** A pipeline holds every row in memory. ``stillroom dedup`` (:func:`dedup`) instead
reads the input three times and keeps only numbers between the passes: a check of every row (the
same check a pipeline makes, with file and line), a pass that hashes the texts in batches
(keeping per row its band hashes and shingle hashes: about 120 bytes + 4 per word), and a pass
that writes each row to ``data/`` or ``dropped/``, committed every 50,000 rows (an interrupted
run resumes at the first chunk not committed). Measured with ``bench/minhash_dedup.py --docs
1000000 --cli --pipeline`` (a million ~50-word documents, on a shared 2-core machine, so
noisy): ``stillroom dedup`` took 75 s at 892 MiB peak RSS end to end; the same stage in a
one-stage pipeline 105 s at 2.8 GiB, since the executor holds every row as a dict and
checkpoints the kept ones. Hence the streaming for the command line; the stage is for pipelines
that dedup what they generate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from stillroom.curate import minhash, semantic
from stillroom.errors import ConfigError, InputError
from stillroom.generate.lineage import row_id, seed_id_of, with_lineage
from stillroom.pipeline.stage import (
    AllRowsStage,
    Dropped,
    Failed,
    ParallelMap,
    Row,
    RowFailure,
    StageContext,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.pipeline.pipeline import RunResult

Method = Literal["exact", "minhash", "semantic"]

# Texts hashed or embedded per batch.
BATCH_ROWS = 10_000
# Rows written per commit by `stillroom dedup`: few shards, and a resume redoes at most this many.
COMMIT_ROWS = 50_000
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

log = logging.getLogger(__name__)


class TextMissing(ValueError):
    """A row has no text to compare (message says which column and what the row has)."""


def as_text(value: Any) -> str | None:
    """A cell as text: a string; a chat message's content; a list of those, joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # a chat message, or a content part {"type": "text", ...}
        for key in ("content", "text"):
            if key in value:
                return as_text(value[key])
        return None
    if isinstance(value, list):
        parts = [as_text(item) for item in value]
        if any(part is None for part in parts):
            return None
        return "\n\n".join(part for part in parts if part)
    return None


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
    return hashlib.blake2b(minhash.normalize_text(text).encode("utf-8"), digest_size=16).digest()


def _digests(texts: Sequence[str]) -> bytes:
    """The 16-byte digests of a batch of texts, one after another."""
    return b"".join(_digest(text) for text in texts)


@register_stage
class Dedup(AllRowsStage):
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
    ngram: int = Field(default=minhash.DEFAULT_NGRAM, ge=1, description="Words per shingle.")
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
        "default 0.9 with verify_jaccard, else 0.5.",
    )
    seed: int = Field(default=0, description="Seed of the MinHash permutations.")
    keep_by: str | None = Field(
        default=None, description="Keep the row with the highest value of this column."
    )
    model: str | None = Field(
        default=None, description="semantic: a local sentence-transformers folder."
    )
    _stage_name: str | None = PrivateAttr(default=None)
    _figures: dict[str, Any] = PrivateAttr(default_factory=dict)

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
            weight = minhash.default_false_negative_weight(self.verify_jaccard)
        return minhash.lsh_parameters(threshold, self.num_perm, 1.0 - weight, weight)

    # -- rows ------------------------------------------------------------------------------

    def text_of(self, row: Row) -> str:
        """The text this row is compared by; :class:`TextMissing` says why there is none."""
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

    @staticmethod
    def _named(row: Row, name: str) -> str:
        if name not in row:
            raise TextMissing(
                f"the row has no `{name}` column (its columns: {', '.join(sorted(row)) or 'none'})"
            )
        text = as_text(row[name])
        if text is None:
            kind = "null" if row[name] is None else type(row[name]).__name__
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
            self.text_of(row)
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

    # -- as a pipeline stage ---------------------------------------------------------------

    async def run(self, rows: list[Row], ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:  # type: ignore[override]
        self._stage_name = ctx.stage_name
        usable: list[int] = []
        texts: list[str] = []
        for index, row in enumerate(rows):
            try:
                texts.append(self.text_of(row))
                if self.keep_by is not None:
                    self.score_of(row)
            except ValueError as problem:
                yield Failed(row, RowFailure(str(problem), kind="DedupInputError"))
                continue
            usable.append(index)

        def scores() -> np.ndarray | None:
            if self.keep_by is None:
                return None
            return np.array([self.score_of(rows[index]) for index in usable], dtype=np.float64)

        batches = [texts[start : start + BATCH_ROWS] for start in range(0, len(texts), BATCH_ROWS)]
        clusters = await asyncio.to_thread(self.find_clusters, batches, scores, ctx.parallel_map)
        self._figures = {k: v for k, v in clusters.summary().items() if k not in _COUNTED}

        def label_of(position: int) -> str:
            original = usable[position]
            return row_id(rows[original]) or f"row {original}"

        for position, index in enumerate(usable):
            yield self.outcome(rows[index], position, clusters, label_of, ctx.stage_name)

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
            **self._figures,
        }


_COUNTED = {"rows", "kept", "duplicates_dropped", "clusters_with_duplicates", "largest_cluster"}


# -- `stillroom dedup`: the same decision, streamed ------------------------------------------------


def build_stage(**options: Any) -> Dedup:
    """A :class:`Dedup` from options (None = the default); ConfigError names a bad option."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return Dedup(**given)
    except ValidationError as error:
        problem = error.errors()[0]
        # A field's own error has its name in loc; a cross-option one names it in its context.
        key = ".".join(str(part) for part in problem["loc"]) or str(
            (problem.get("ctx") or {}).get("option", "")
        )
        flag = {"rows": "rows-per-band"}.get(key, key.replace("_", "-"))
        raise ConfigError(problem["msg"], key=f"--{flag}" if key else None) from None


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


class _StreamedRun:
    """``stillroom dedup``: check every row, hash the texts, then write each row; see
    :func:`dedup`."""

    def __init__(self, stage: Dedup, source: Any, out: Path, progress: bool,
                 executor: str = "local", ray_address: str | None = None,
                 workers: int | None = None):
        from stillroom.data.output import OutputFolder

        self.stage = stage
        self.name = stage.name or stage.type
        self.source = source
        self.folder = OutputFolder(out)
        self.progress = progress
        self.executor = executor
        self.ray_address = ray_address
        self.workers = workers
        self.session = uuid.uuid4().hex[:12]
        self.started = time.time()

    def say(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(message, highlight=False, markup=False)

    def find(self) -> tuple[Clusters, list[str | None]]:
        ids: list[str | None] = []
        scores: list[float] = []

        def texts() -> Iterator[str]:
            for _, row in self.source.rows():
                ids.append(row_id(row))
                if self.stage.keep_by is not None:
                    scores.append(self.stage.score_of(row))
                yield self.stage.text_of(row)

        with self.hashing() as parallel_map:
            clusters = self.stage.find_clusters(
                _batched(texts(), BATCH_ROWS),
                lambda: np.array(scores, dtype=np.float64) if self.stage.keep_by else None,
                parallel_map,
            )
        return clusters, ids

    @contextlib.contextmanager
    def hashing(self) -> Iterator[ParallelMap]:
        """Where the batches are hashed: here, or as Ray tasks on a Ray that is up only while
        they are (started after the input was checked, so a bad row is reported at once)."""
        if self.executor == "local":
            yield map
            return
        from stillroom.pipeline.ray_executor import RayParallelMap, ray_session

        with ray_session(self.ray_address) as ray:
            yield RayParallelMap(self.workers or max(1, int(ray.cluster_resources().get("CPU", 1))))

    def write(self, clusters: Clusters, ids: list[str | None], state: Any) -> dict[str, int]:
        from stillroom.pipeline.executor import dropped_row

        def label_of(index: int) -> str:
            return ids[index] or f"row {index}"

        counts = {"data": 0, "dropped": 0}
        rows = enumerate(row for _, row in self.source.rows())
        for chunk, batch in enumerate(_batched(rows, COMMIT_ROWS)):
            key = str(chunk)
            if key in state.done(0):  # committed by an earlier, interrupted session
                continue
            out: dict[str, list[Row]] = {"data": [], "dropped": []}
            for index, row in batch:
                result = self.stage.outcome(row, index, clusters, label_of, self.name)
                if isinstance(result, Dropped):
                    out["dropped"].append(dropped_row(result.row, self.name, result.reason))
                else:
                    out["data"].append(result)
            self.folder.commit(state, out, [key], segment=0, stats=self.stats(clusters))
            counts["data"] += len(out["data"])
            counts["dropped"] += len(out["dropped"])
        return counts

    def stats(self, clusters: Clusters) -> dict[str, Any]:
        kept = int(clusters.kept.sum())
        return {
            "session": self.session,
            "backends": {},
            "stages": {self.name: {"rows_in": len(clusters.keeper), "rows_out": kept,
                                   "dropped": len(clusters.keeper) - kept, "failed": 0,
                                   "seconds": time.time() - self.started}},
        }

    def config(self) -> dict[str, Any]:
        return {
            "name": f"stillroom dedup --method {self.stage.method}",
            "description": None,
            "input": self.source.description,
            "rows_read": self.source.count,
            "seed": self.stage.seed,
            "backends": {},
            "stages": [{"name": self.name, **self.stage.model_dump(mode="json", exclude_none=True)}],
        }

    def run(self, overwrite: bool) -> RunResult:

        # Every row is checked (and the input fingerprinted) before the folder is touched.
        total = self.source.check(self.stage.check_row)
        fingerprint = {"version": 1, "dedup": self.stage.identity(), "input": self.source.identity()}
        self.folder.refuse_as_input(self.source.path)
        # prepare() makes this process the folder's only writer until release() below.
        state = self.folder.prepare(fingerprint, overwrite=overwrite)
        try:
            return self._run_prepared(state, total)
        finally:
            self.folder.release()

    def _run_prepared(self, state: Any, total: int) -> RunResult:
        from stillroom.pipeline.pipeline import RunResult
        from stillroom.report.finalize import write_card_and_report

        for note in state.notes:
            log.warning("warning: %s", note)
        status = "failed"
        counts: dict[str, int] = {}
        try:
            self.say(f"dedup ({self.stage.method}): reading {total:,} rows")
            clusters, ids = self.find()
            self.say(f"dedup: {int(clusters.kept.sum()):,} kept, writing {self.folder.root}")
            counts = self.write(clusters, ids, state)
            self.source.verify_unchanged()
            status = "complete"
        finally:
            self.folder.record_session({
                "session": self.session, "status": status, "started": self.started,
                "ended": time.time(), "counts": counts, "executor": {"kind": self.executor},
                **(self.stats(clusters) if status == "complete" else {"backends": {}, "stages": {}}),
            })
        self.folder.harmonize_shards()
        figures = {"method": self.stage.method, **self.stage.threshold_figure(),
                   **clusters.summary()}
        config = self.config()
        summary = write_card_and_report(self.folder, config, None, {self.name: figures},
                                        complete=True)
        return RunResult(
            out=self.folder.root, counts=summary["counts"], session_counts=counts,
            failures_by_reason=summary["failures_by_reason"],
            drops_by_reason=summary["drops_by_reason"], backends={},
            seconds=time.time() - self.started, max_failure_rate=0.0, summary=summary,
        )


def dedup(
    input: str | os.PathLike[str] | list[Row],
    out: str | os.PathLike[str],
    *,
    method: Method = "minhash",
    column: str | list[str] | None = None,
    threshold: float | None = None,
    ngram: int | None = None,
    num_perm: int | None = None,
    bands: int | None = None,
    rows: int | None = None,
    verify_jaccard: bool | None = None,
    false_negative_weight: float | None = None,
    keep_by: str | None = None,
    model: str | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    workers: int | None = None,
) -> RunResult:
    """Deduplicate ``input`` into the output folder ``out`` (data/, dropped/, card, report).

    Options are the ``dedup`` stage's (None: its default); the result is the one a pipeline of
    that one stage gives on the same rows, but the rows are streamed: only the numbers dedup
    needs stay in memory between the passes (see the module docstring). The result's
    ``summary["stage_results"]["dedup"]`` holds rows, kept, duplicates dropped, clusters.

    With ``executor="ray"`` the hashing (exact digests, MinHash signatures) runs as Ray tasks,
    ``workers`` at a time (default: the cluster's CPUs), on the Ray at ``ray_address`` or a local
    one; the buckets and clusters are still found over all rows at once, so the output is the
    local one.
    """
    from stillroom.pipeline.inputs import InputSource

    stage = build_stage(
        method=method, column=column, threshold=threshold, ngram=ngram, num_perm=num_perm,
        bands=bands, rows=rows, verify_jaccard=verify_jaccard,
        false_negative_weight=false_negative_weight, keep_by=keep_by, model=model, seed=seed,
    )
    source = InputSource(input, Path.cwd(), limit)
    if source.path is not None and not source.path.exists():
        raise InputError("no such file or folder", path=str(source.path))
    from stillroom.pipeline.pipeline import RunOptions

    # The same checks as a pipeline run's (an unknown executor, Ray options without Ray).
    RunOptions(executor=executor, ray_address=ray_address, workers=workers)
    from stillroom.pipeline.pipeline import terminate_as_interrupt

    with terminate_as_interrupt():  # SIGTERM stops it like Ctrl-C: what finished is committed
        return _StreamedRun(stage, source, Path(out), progress, executor, ray_address,
                            workers).run(overwrite)
