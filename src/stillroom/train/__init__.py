"""Training side of distillation: loss functions for students taught by a teacher's distribution.

Needs the ``train`` extra (torch). Importing this package does not import torch; the names below
load :mod:`stillroom.train.losses` (and torch) on first use, so ``import stillroom`` and the
pipeline stages stay light.

* ``kd_loss``: GKD's generalized JSD (beta = 0 forward KL, 1 reverse KL) on full logits.
* ``topk_kd_loss``: forward KL from a teacher's stored top-k log-probs plus a tail bucket.
* ``skew_kl_loss``: DistiLLM's skew KL and skew reverse KL.
* ``hinton_loss``: Hinton's mix of hard-label CE and T^2-scaled soft-target KL.
* ``shift_for_next_token``: align a causal LM's logits with the tokens they predict.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillroom.train.losses import (
        IGNORE_INDEX,
        hinton_loss,
        kd_loss,
        shift_for_next_token,
        skew_kl_loss,
        topk_kd_loss,
    )

__all__ = [
    "IGNORE_INDEX",
    "hinton_loss",
    "kd_loss",
    "shift_for_next_token",
    "skew_kl_loss",
    "topk_kd_loss",
]

_LOSS_NAMES = frozenset(__all__)


def __getattr__(name: str) -> Any:
    # PEP 562 lazy export: torch is imported only when a loss is first looked up.
    if name in _LOSS_NAMES:
        return getattr(importlib.import_module("stillroom.train.losses"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
