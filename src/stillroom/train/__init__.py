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

Recipes, each ``stillroom train <recipe> CONFIG.yaml`` (shared keys in :mod:`.common`):

* ``train_sft`` (:mod:`.sft`): supervised fine-tuning on teacher outputs, loss on the completion
  only (TRL's SFTTrainer).
* ``train_kd`` (:mod:`.kd`): logit distillation, online (teacher in the loop, GKD's JSD and
  on-policy fraction) or offline from stored top-k logprobs; ``(1 - alpha) * CE + alpha * KD``.
* ``train_dpo`` (:mod:`.dpo`): DPO on preference pairs (TRL's DPOTrainer, beta 0.1).
* ``train_grpo`` (:mod:`.grpo`): GRPO (TRL's GRPOTrainer) with stillroom's verifiers as the
  rewards (:mod:`stillroom.verify.rewards`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillroom.train.dpo import DPORunConfig, load_dpo_config, train_dpo
    from stillroom.train.grpo import GRPORunConfig, load_grpo_config, train_grpo
    from stillroom.train.kd import KDRunConfig, load_kd_config, train_kd
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
    "DPORunConfig",
    "GRPORunConfig",
    "IGNORE_INDEX",
    "KDRunConfig",
    "STUDENT_FILE",
    "TRAIN_FILE",
    "SFTRunConfig",
    "hinton_loss",
    "init_student",
    "kd_loss",
    "kept_layers",
    "load_dpo_config",
    "load_grpo_config",
    "load_kd_config",
    "load_model",
    "load_sft_config",
    "parameter_count",
    "prune_layers",
    "shift_for_next_token",
    "skew_kl_loss",
    "topk_kd_loss",
    "train_dpo",
    "train_grpo",
    "train_kd",
    "train_sft",
]

_STUDENT_NAMES = {"STUDENT_FILE", "init_student", "kept_layers", "load_model", "parameter_count",
                  "prune_layers"}
_RECIPE_NAMES = {
    "SFTRunConfig": "sft", "TRAIN_FILE": "sft", "load_sft_config": "sft", "train_sft": "sft",
    "KDRunConfig": "kd", "load_kd_config": "kd", "train_kd": "kd",
    "DPORunConfig": "dpo", "load_dpo_config": "dpo", "train_dpo": "dpo",
    "GRPORunConfig": "grpo", "load_grpo_config": "grpo", "train_grpo": "grpo",
}
_MODULE_OF = {
    name: "stillroom.train.student" if name in _STUDENT_NAMES
    else f"stillroom.train.{_RECIPE_NAMES[name]}" if name in _RECIPE_NAMES
    else "stillroom.train.losses"
    for name in __all__
}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy export: torch is imported only when a name is first looked up.
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
