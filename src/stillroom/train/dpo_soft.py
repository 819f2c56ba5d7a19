"""Soft-label DPO: the conservative DPO loss (cDPO) with one label per pair, for ``train dpo``.

A pair's *soft label* ``p`` is the probability that its chosen answer really is the better one.
Constitutional AI's feedback model gives one (``principle_preference``: the normalized
probabilities of "A" and "B", averaged over both orders), and training on the hard label throws
it away: a pair the judge found 55/45 would pull as hard as one it found 99/1. With ``h`` the
policy's log-ratio margin ``(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))``
the loss per pair is the cross-entropy of the Bradley-Terry probability ``sigmoid(beta * h)``
against ``p``::

    loss = -p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)

This is conservative DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"), whose
label smoothing ``epsilon`` is ``1 - p``, here per pair instead of one number for the data set.
``p = 1`` is plain DPO; the gradient in ``h`` is ``beta * (sigmoid(beta * h) - p)``, so training
stops pushing once the policy's implied preference probability reaches ``p`` (at ``p = 0.5`` and
``h = 0`` the gradient is zero), instead of driving the margin to infinity. We implement cDPO and
not robust DPO (Chowdhury et al. 2024, TRL's ``loss_type: robust``): rDPO's unbiased correction
divides by ``1 - 2 * epsilon`` and gives the flipped term a negative weight; that is meant for a
known, moderate noise rate and blows up as a pair's ``p`` nears 0.5, which soft labels from a
judge often do. cDPO is what a soft label means: the target probability of the preference.

TRL 1.16's ``DPOTrainer`` cannot do this by itself: its ``sigmoid`` loss is
``-logsigmoid(beta * h)`` and ignores ``label_smoothing`` (only ``robust``, ``exo_pair``, ``aot``
and ``aot_unpaired`` read it; older TRL versions smoothed the sigmoid loss), and
``label_smoothing`` is one number for all pairs anyway. So :func:`soft_dpo_trainer_class` is a
``DPOTrainer`` subclass that keeps TRL's data handling, reference model (a separate model, or the
adapter-free student with LoRA) and TRL's own per-sequence log-probabilities (the fused LM head
and :meth:`DPOTrainer.compute_ref_log_probs`), and replaces only the loss: for a batch that carries
``p_chosen`` (:data:`SOFT_LABEL`), :func:`cdpo_loss`; for one that does not, TRL's loss unchanged.
The reward metrics TRL logs (``rewards/*``, ``logps/*``) are logged the same way; its entropy,
logits and token-accuracy metrics are not computed on soft-label batches.

Where ``p`` comes from (:func:`soft_labels`): never from ``score_chosen`` / ``score_rejected``,
which ``preference_pairs`` fills with ratings (UltraFeedback's 1-10 means); those are not
probabilities and no probability is derived from them. By default the label is the ``p_chosen``
column ``principle_preference`` writes; a folder written before that column existed has the
``preference`` record: ``p_first`` is the probability that the first candidate is better and the
stage makes the first candidate ``chosen`` exactly when ``p_first > 0.5`` (ties are dropped), so
``p = max(p_first, 1 - p_first)``. With
``soft_label_column: NAME`` a top-level column holding ``p`` itself (a number in [0, 1]) is read
instead. A row without a label is a hard label, ``p = 1``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from stillroom.data.rows import Row

SOFT_LABEL = "p_chosen"
"""The per-pair probability that ``chosen`` is better, as the trainer's dataset and batches carry it."""

RATING_COLUMNS = ("score_chosen", "score_rejected")


def soft_label(row: Row, column: str | None) -> float | None:
    """The row's probability that ``chosen`` is better, or None when it carries none.

    ``column`` None: ``principle_preference``'s ``p_chosen`` (or, in an older folder, its
    ``preference.p_first`` oriented to ``chosen``); otherwise the top-level column ``column``. A value that is not a number in [0, 1] is a
    ValueError saying what it is.
    """
    if column is None and row.get(SOFT_LABEL) is not None:
        column = SOFT_LABEL
    if column is None:
        record = row.get("preference")
        if not isinstance(record, dict) or record.get("p_first") is None:
            return None
        value, where = record["p_first"], "`preference.p_first`"
    else:
        value, where = row.get(column), f"`{column}`"
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be a probability in [0, 1], got {value!r}")
    return max(float(value), 1.0 - float(value)) if column is None else float(value)


def cdpo_loss(margins: Any, p: Any, beta: float) -> Any:
    """Per pair ``-p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)`` (cDPO) for the
    log-ratio margins ``h`` and soft labels ``p`` (tensors of one shape)."""
    import torch.nn.functional as F

    logits = beta * margins
    return -p * F.logsigmoid(logits) - (1.0 - p) * F.logsigmoid(-logits)


class _WithSoftLabels:
    """TRL's preference collator, plus the batch's ``p_chosen`` (one per pair) when rows have it."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.inner(examples)
        if examples and SOFT_LABEL in examples[0]:
            batch[SOFT_LABEL] = torch.tensor([float(e[SOFT_LABEL]) for e in examples])
        return batch


def soft_dpo_trainer_class() -> type:
    """``SoftLabelDPOTrainer``, defined on first use so that importing this module imports no TRL."""
    global _SoftLabelDPOTrainer
    if _SoftLabelDPOTrainer is None:
        _SoftLabelDPOTrainer = _define_trainer()
    return _SoftLabelDPOTrainer


_SoftLabelDPOTrainer: type | None = None


def _define_trainer() -> type:
    from trl import DPOTrainer

    class SoftLabelDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """TRL's ``DPOTrainer`` whose loss is cDPO with the batch's per-pair ``p_chosen``."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            args_ = self.args
            # The loss below is the sigmoid loss's; anything else TRL would mix in is refused by
            # the config (loss_type) or left at TRL's defaults, checked here.
            assert list(self.loss_types) == ["sigmoid"] and self.ld_alpha is None
            assert self.f_divergence_type == "reverse_kl" and not self.use_weighting
            assert not getattr(args_, "precompute_ref_log_probs", False)
            self.data_collator = _WithSoftLabels(self.data_collator)

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            # Keep the soft label when the Trainer drops the dataset's other columns.
            columns: list[str] = list(self._signature_columns or [])
            if SOFT_LABEL not in columns:
                self._signature_columns = [*columns, SOFT_LABEL]  # type: ignore[assignment]

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if SOFT_LABEL not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            p = inputs.pop(SOFT_LABEL)
            chosen, rejected = self._sequence_logps(model, inputs)
            # TRL's own reference pass: the reference model, or with LoRA and no reference the
            # student with its adapters disabled (compute_ref_log_probs switches them off).
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)
            chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
            loss = cdpo_loss(chosen_ratio - rejected_ratio, p.to(chosen.dtype), self.beta).mean()
            self._log_rewards("train" if model.training else "eval", chosen, rejected,
                              chosen_ratio, rejected_ratio)
            if return_outputs:
                return loss, {}
            return loss

        def _sequence_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
            """Summed answer log-probabilities of the batch's chosen and rejected halves, as
            TRL computes them (the fused LM head, prompt and padding labelled -100)."""
            model_kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
            model_kwargs["use_cache"] = False
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            log_probs = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs
            width = inputs["completion_mask"].shape[1] - 1
            return log_probs[:, -width:].sum(dim=1).chunk(2, dim=0)

        def _log_rewards(self, mode: str, chosen: Any, rejected: Any, chosen_ratio: Any,
                         rejected_ratio: Any) -> None:
            metrics, gather = self._metrics[mode], self.accelerator.gather
            chosen_rewards = self.beta * chosen_ratio.detach()
            rejected_rewards = self.beta * rejected_ratio.detach()
            metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
            metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
            metrics["rewards/accuracies"].append(
                gather((chosen_rewards > rejected_rewards).float()).mean().item())
            metrics["rewards/margins"].append(
                gather(chosen_rewards - rejected_rewards).mean().item())
            metrics["logps/chosen"].append(gather(chosen.detach()).mean().item())
            metrics["logps/rejected"].append(gather(rejected.detach()).mean().item())

    return SoftLabelDPOTrainer


__all__ = [
    "RATING_COLUMNS",
    "SOFT_LABEL",
    "cdpo_loss",
    "soft_dpo_trainer_class",
    "soft_label",
]
