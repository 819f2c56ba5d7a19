"""Training side of distillation: loss functions, and students made from a teacher.

Needs the ``train`` extra (torch, transformers). Importing this package does not import torch;
the names below load their module (and torch) on first use, so ``import stillroom`` and the
pipeline stages stay light.

Losses (:mod:`stillroom.train.losses`):

* ``kd_loss``: GKD's generalized JSD (beta = 0 forward KL, 1 reverse KL) on full logits.
* ``topk_kd_loss``: forward KL from a teacher's stored top-k log-probs plus a tail bucket.
* ``skew_kl_loss``: DistiLLM's skew KL and skew reverse KL.
* ``hinton_loss``: Hinton's mix of hard-label CE and T^2-scaled soft-target KL.
* ``shift_for_next_token``: align a causal LM's logits with the tokens they predict.

Students (:mod:`stillroom.train.student`):

* ``load_model``: a local model folder or GGUF (the embedded model by default), float32.
* ``prune_layers`` / ``kept_layers``: a smaller copy keeping every k-th layer (first and last
  kept), layer indices renumbered so the KV cache works.
* ``init_student``: load, prune, save, with ``stillroom_student.json`` saying what was kept.

Recipes (:mod:`stillroom.train.sft`): ``train_sft`` / ``stillroom train sft CONFIG.yaml``,
supervised fine-tuning on teacher outputs with the loss on the completion only (TRL's SFTTrainer).
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
    from stillroom.train.sft import TRAIN_FILE, SFTRunConfig, load_sft_config, train_sft
    from stillroom.train.student import (
        STUDENT_FILE,
        init_student,
        kept_layers,
        load_model,
        parameter_count,
        prune_layers,
    )

__all__ = [
    "IGNORE_INDEX",
    "STUDENT_FILE",
    "TRAIN_FILE",
    "SFTRunConfig",
    "hinton_loss",
    "init_student",
    "kd_loss",
    "kept_layers",
    "load_model",
    "load_sft_config",
    "parameter_count",
    "prune_layers",
    "shift_for_next_token",
    "skew_kl_loss",
    "topk_kd_loss",
    "train_sft",
]

_STUDENT_NAMES = {"STUDENT_FILE", "init_student", "kept_layers", "load_model", "parameter_count",
                  "prune_layers"}
_SFT_NAMES = {"SFTRunConfig", "TRAIN_FILE", "load_sft_config", "train_sft"}
_MODULE_OF = {
    name: "stillroom.train.student" if name in _STUDENT_NAMES
    else "stillroom.train.sft" if name in _SFT_NAMES
    else "stillroom.train.losses"
    for name in __all__
}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy export: torch is imported only when a name is first looked up.
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
