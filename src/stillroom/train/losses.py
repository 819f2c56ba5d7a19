"""Distillation losses: GKD's generalized JSD, sparse top-k KL, DistiLLM's skew KL, Hinton's mix.

Every function here takes *aligned* tensors: ``student_logits[..., i, :]``, the teacher's
distribution at ``i`` and ``labels[..., i]`` all describe the same next-token prediction. A causal
LM's logits at position ``i`` predict token ``i + 1``, so logits and labels taken straight from
one forward pass are shifted first with :func:`shift_for_next_token` (the shift HF's causal-LM
loss does internally). Teacher top-k log-probs from a completions API (OpenAI-style
``top_logprobs``, vLLM ``prompt_logprobs``) are indexed by the token they score, so they line up
with the *shifted* labels as they are: shift the student's logits and the labels, not them.

Shapes: ``B`` batch, ``T`` tokens, ``V`` vocabulary, ``K`` stored top-k entries. Logits are
``(B, T, V)`` or ``(N, V)``; labels and the per-token losses have the logits' shape without the
last axis. A token whose label is ``-100`` (HF's ignore index) is left out: it adds nothing and
gets no gradient, and whatever its logits hold (padding garbage, NaN) never enters the sum.
``labels=None`` keeps every token.

``reduction``: ``"mean"`` (default) averages over the kept tokens (TRL's ``"batchmean"`` with
labels; an all-masked batch gives 0, still attached to the graph), ``"sum"`` sums them,
``"none"`` returns the per-token losses with 0 at masked tokens.

Temperature divides both sides' logits before the softmax. Only :func:`hinton_loss` multiplies
by ``T**2`` (Hinton et al. 2015: soft-target gradients scale as ``1/T**2``, so the factor keeps
them comparable with the hard-label CE it is mixed with); the pure divergences are returned as
defined, as TRL's GKD loss does, and the KD recipe (``stillroom train kd``) multiplies them by
``T**2`` itself (:func:`stillroom.train.kd_trainer.scaled_kd`). Half-precision inputs are computed in float32; float64 stays
float64.

Usage in a training step::

    from stillroom.train import kd_loss, shift_for_next_token

    labels, s_logits, t_logits = shift_for_next_token(batch["labels"], student(**batch).logits,
                                                      teacher_logits)
    loss = kd_loss(s_logits, t_logits, labels, beta=0.5, temperature=1.0)

The losses and where they come from (p = teacher, q = student, both at temperature T):

* :func:`kd_loss` -- generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy
  Distillation of Language Models: Learning from Self-Generated Mistakes", Eq. 1), the same
  convention as TRL's ``GKDTrainer.generalized_jsd_loss``: with the mixture
  ``m = beta * p + (1 - beta) * q``::

      JSD_beta(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m)

  ``beta`` weights the *teacher* term and the teacher side of the mixture. As ``beta -> 0``,
  ``JSD_beta / beta -> KL(p || q)`` and as ``beta -> 1``, ``JSD_beta / (1 - beta) -> KL(q || p)``:
  the interior interpolates between the two KLs in *direction*, but its *size* goes to 0 at both
  ends. Like GKD and TRL, ``beta == 0`` is defined as the forward KL ``KL(p || q)`` and
  ``beta == 1`` as the reverse KL ``KL(q || p)``; so the loss jumps at the endpoints, and a
  ``beta`` of 0.01 gives about 1/100 of the forward KL. ``beta = 0.5`` is the textbook JS
  divergence. Gradients flow through the mixture into the student.
* :func:`topk_kd_loss` -- forward KL from a teacher stored as its top-k log-probs (DistillKit's
  sparse distillation with the missing mass kept, its ``symmetric_uniform`` handling): the
  vocabulary is coarsened to K + 1 buckets, the K stored ids and one tail bucket holding
  everything else, with ``p_tail = 1 - sum_k p_k`` and ``q_tail = 1 - sum_k q_k``::

      KL = sum_k p_k log(p_k / q_k) + p_tail log(p_tail / q_tail)

  Exactly the dense forward KL when the K ids cover the vocabulary, and a lower bound of it
  otherwise (coarsening never raises a KL). Reverse KL and the JSD need the teacher's mass on
  tokens it did not store, so they need the teacher online (:func:`kd_loss`).
* :func:`skew_kl_loss` -- DistiLLM (Ko et al. 2024) skew KL ``KL(p || alpha p + (1 - alpha) q)``
  and skew reverse KL ``KL(q || alpha q + (1 - alpha) p)``; the paper's default ``alpha`` is 0.1.
* :func:`hinton_loss` -- Hinton et al. 2015, "Distilling the Knowledge in a Neural Network":
  ``(1 - alpha) * CE(q at T=1, labels) + alpha * T**2 * KL(p_T || q_T)``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "hinton_loss",
    "kd_loss",
    "shift_for_next_token",
    "skew_kl_loss",
    "topk_kd_loss",
]

IGNORE_INDEX = -100
"""Label value of a token that is left out of every loss (HF / PyTorch convention)."""

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")
_NEG_INF = float("-inf")


# -- public API ------------------------------------------------------------------------------------


def shift_for_next_token(labels: Tensor, *per_position: Tensor) -> tuple[Tensor, ...]:
    """Align a causal LM's outputs with the tokens they predict.

    ``labels`` is ``(B, T)`` (the input ids, prompt tokens set to -100); each tensor in
    ``per_position`` is ``(B, T, ...)`` (logits ``(B, T, V)`` of the student or teacher). Returns
    ``(labels[:, 1:], *(t[:, :-1] for t in per_position))``: position ``i`` of the logits predicts
    token ``i + 1``, so after the shift each position's logits and label describe the same
    prediction. Stored top-k log-probs from an API are already indexed by the token they score:
    pass them to the losses as they are, next to the shifted labels.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, T), got shape {tuple(labels.shape)}")
    shifted = [labels[:, 1:]]
    for tensor in per_position:
        if tensor.shape[:2] != labels.shape:
            raise ValueError(
                f"a per-position tensor of shape {tuple(tensor.shape)} does not start with the "
                f"labels' shape {tuple(labels.shape)}"
            )
        shifted.append(tensor[:, :-1])
    return tuple(shifted)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """GKD's generalized JSD between teacher p and student q, both ``softmax(logits / T)``.

    ``beta == 0``: forward KL(p || q); ``beta == 1``: reverse KL(q || p); in between
    ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``m = beta * p + (1 - beta) * q``
    (Agarwal et al. 2024, Eq. 1; TRL's ``generalized_jsd_loss`` convention: beta weights the
    teacher). Near the endpoints the interior value shrinks like ``beta`` / ``1 - beta`` (see the
    module docstring). ``student_logits`` and ``teacher_logits``: ``(B, T, V)`` or ``(N, V)``, same
    shape; ``labels``: ``(B, T)`` / ``(N,)`` with -100 for tokens to leave out.
    """
    _check_unit_interval("beta", beta)
    _check_temperature(temperature)
    _check_reduction(reduction)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} differ; slice both to the shared vocabulary first"
        )
    token_shape = _token_shape(student_logits, labels)
    keep = _keep_mask(labels)
    log_q = _log_probs(_select(student_logits, keep), temperature)
    log_p = _log_probs(_select(teacher_logits, keep), temperature)
    return _reduce(_generalized_jsd(log_p, log_q, beta), keep, token_shape, reduction)


def topk_kd_loss(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Forward KL(teacher || student) from the teacher's stored top-k, the rest as one tail bucket.

    ``student_logits``: ``(B, T, V)`` or ``(N, V)``. ``teacher_topk_ids`` (integers) and
    ``teacher_topk_logprobs``: ``(B, T, K)`` / ``(N, K)``, the teacher's log-probs at temperature 1
    (what an API returns) for K *distinct* token ids. An entry whose id is negative (-1) or whose
    log-prob is not finite (-inf, NaN) is padding: a token with fewer than K stored entries.

    Buckets: the K ids and a tail holding all other tokens. Teacher: ``p_k = exp(logprob_k)``,
    ``p_tail = max(0, 1 - sum_k p_k)``; student: ``q = softmax(student_logits / T)`` at the ids
    and ``q_tail`` = its mass on every other id (a logsumexp over the complement, so a tail of
    1e-30 is still exact). The loss is ``sum_k p_k log(p_k / q_k) + p_tail log(p_tail / q_tail)``
    (0 log 0 = 0). When the ids cover the whole vocabulary the tail is empty and the loss equals
    ``kd_loss(..., beta=0)`` for every temperature.

    Temperature: the stored log-probs are at T = 1, and the teacher's logits are gone, so the
    bucket distribution is tempered instead: ``p_k^(1/T)`` and ``p_tail^(1/T)``, renormalized
    over the K + 1 buckets (the same as DistillKit's ``symmetric_uniform`` handling). The ratios
    among the K ids are exact; the tail is approximated as one token (the true tempered tail,
    ``sum_j p_j^(1/T)`` over unstored j, is unknown: for T > 1 this gives the tail too little
    mass, for T < 1 too much). At T = 1 this only renormalizes away rounding (stored log-probs
    summing slightly over 1). No ``T**2`` factor is applied.

    The teacher values are data: no gradient flows into them.
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    ids, stored = teacher_topk_ids, teacher_topk_logprobs
    if ids.shape != stored.shape:
        raise ValueError(
            f"teacher_topk_ids {tuple(ids.shape)} and teacher_topk_logprobs "
            f"{tuple(stored.shape)} must have the same shape"
        )
    if ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher top-k {tuple(ids.shape)} does not match student_logits "
            f"{tuple(student_logits.shape)} before the last axis"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"teacher_topk_ids must be integers, got {ids.dtype}")
    token_shape = _token_shape(student_logits, labels)
    keep = _keep_mask(labels)
    logits = _select(student_logits, keep)
    ids, stored = _select(ids, keep), _select(stored.detach(), keep)
    vocab = logits.shape[-1]
    if ids.numel() and int(ids.max()) >= vocab:  # checked on kept tokens only
        raise ValueError(f"a teacher top-k id is >= the student's vocabulary size {vocab}")

    buckets = topk_buckets(_upcast(logits), ids, stored, temperature)
    teacher_buckets = torch.cat([buckets.teacher_topk, buckets.teacher_tail.unsqueeze(-1)], dim=-1)
    teacher_buckets = torch.log_softmax(teacher_buckets / temperature, dim=-1)

    per_token = _kl(teacher_buckets, buckets.student)
    return _reduce(per_token, keep, token_shape, reduction)


class TopKBuckets(NamedTuple):
    """The vocabulary coarsened to a teacher's stored top-k ids and one tail bucket, per token."""

    valid: Tensor  # (M, K): a stored entry (id >= 0, finite log-prob), not padding
    student: Tensor  # (M, K + 1): the student's log-probs at T of the K ids (-inf at padding), tail
    teacher_topk: Tensor  # (M, K): the stored log-probs (-inf at padding), at T = 1
    teacher_tail: Tensor  # (M,): log(1 - sum p_k), -inf where the ids cover the vocabulary
    tail_is_empty: Tensor  # (M,): the ids cover every token


def topk_buckets(logits: Tensor, ids: Tensor, stored: Tensor, temperature: float) -> TopKBuckets:
    """Both sides' buckets for the top-k losses (forward, :func:`topk_kd_loss`; reverse,
    :func:`stillroom.train.on_policy_losses.topk_reverse_kl`), from kept tokens' ``(M, V)``
    logits and ``(M, K)`` stored ids and log-probs. The student's tail is a logsumexp over the
    complement, so a tail of 1e-30 is still exact."""
    valid = (ids >= 0) & torch.isfinite(stored)
    safe_ids = torch.where(valid, ids, torch.zeros_like(ids))  # gather needs an in-range id
    scaled = logits / temperature
    normalizer = torch.logsumexp(scaled, dim=-1, keepdim=True)
    student_topk = torch.where(valid, scaled.gather(-1, safe_ids) - normalizer, _NEG_INF)
    covered = torch.zeros_like(scaled).scatter_add(-1, safe_ids, valid.to(scaled.dtype)) > 0
    tail_is_empty = covered.all(dim=-1)
    student_tail = _masked_logsumexp(scaled, ~covered) - normalizer.squeeze(-1)
    teacher_topk = torch.where(valid, stored.to(scaled.dtype), _NEG_INF)
    # A tail that covers no token holds no mass, whatever the rounding of the stored values says.
    teacher_tail = torch.where(
        tail_is_empty, _NEG_INF, _log1mexp(torch.logsumexp(teacher_topk, dim=-1).clamp(max=0.0))
    )
    return TopKBuckets(valid, torch.cat([student_topk, student_tail.unsqueeze(-1)], dim=-1),
                       teacher_topk, teacher_tail, tail_is_empty)


def skew_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.1,
    reverse: bool = False,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """DistiLLM's skew KL (Ko et al. 2024, Eq. for SKL / SRKL), teacher p, student q at T.

    ``reverse=False``: ``KL(p || alpha * p + (1 - alpha) * q)``; ``reverse=True``:
    ``KL(q || alpha * q + (1 - alpha) * p)``. ``alpha = 0`` is the plain forward / reverse KL;
    ``0 <= alpha < 1`` (at 1 the loss is identically 0). Gradients flow through the mixture.
    DistiLLM's released code computes the forward form as the cross-entropy ``-sum p log m``,
    which differs from this KL by the teacher's entropy (a constant, so the gradients agree).
    Shapes as in :func:`kd_loss`.
    """
    if not 0.0 <= alpha < 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    _check_temperature(temperature)
    _check_reduction(reduction)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} differ; slice both to the shared vocabulary first"
        )
    token_shape = _token_shape(student_logits, labels)
    keep = _keep_mask(labels)
    log_q = _log_probs(_select(student_logits, keep), temperature)
    log_p = _log_probs(_select(teacher_logits, keep), temperature)
    anchor, other = (log_q, log_p) if reverse else (log_p, log_q)
    skewed = other if alpha == 0.0 else _log_mixture(anchor, other, alpha)
    return _reduce(_kl(anchor, skewed), keep, token_shape, reduction)


def hinton_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Hinton et al. 2015: ``(1 - alpha) * CE + alpha * T**2 * KL(p_T || q_T)`` per kept token.

    CE is the student's cross-entropy on ``labels`` at temperature 1; ``p_T`` and ``q_T`` are
    ``softmax(logits / T)`` of teacher and student. ``T**2`` keeps the soft term's gradients on
    the scale of the hard term's as T changes. Tokens labelled -100 are left out of both terms.
    Shapes as in :func:`kd_loss`; ``labels`` is required.
    """
    _check_unit_interval("alpha", alpha)
    _check_temperature(temperature)
    _check_reduction(reduction)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} differ; slice both to the shared vocabulary first"
        )
    token_shape = _token_shape(student_logits, labels)
    keep = _keep_mask(labels)
    logits = _select(student_logits, keep)
    targets = _select_labels(labels, keep)
    hard = -_log_probs(logits, 1.0).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    soft = _kl(
        _log_probs(_select(teacher_logits, keep), temperature), _log_probs(logits, temperature)
    )
    per_token = (1.0 - alpha) * hard + alpha * temperature**2 * soft
    return _reduce(per_token, keep, token_shape, reduction)


# -- divergences on log-probabilities (last axis) --------------------------------------------------


def _generalized_jsd(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return _kl(log_p, log_q)
    if beta == 1.0:
        return _kl(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum p (log p - log q)`` over the last axis, with 0 log 0 = 0 (and 0 log(0/0) = 0).

    Both logs go through ``where`` before the product so that entries outside p's support
    (log p = -inf, e.g. a vocabulary slot masked to -inf) give exact zeros in the backward pass
    too instead of 0 * inf = NaN.
    """
    p = log_p.exp()
    support = p > 0
    safe_log_p = torch.where(support, log_p, 0.0)
    safe_log_q = torch.where(support, log_q, 0.0)
    return torch.where(support, p * (safe_log_p - safe_log_q), 0.0).sum(dim=-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """``log(weight * a + (1 - weight) * b)`` elementwise, stable, with clean gradients at -inf.

    A logsumexp that shifts by the larger log; where both are -inf the result is -inf without
    the NaN gradient ``torch.logsumexp`` gives there.
    """
    high = torch.maximum(log_a, log_b).detach()
    dead = torch.isneginf(high)
    shift = torch.where(dead, 0.0, high)
    inner = weight * torch.exp(log_a - shift) + (1.0 - weight) * torch.exp(log_b - shift)
    inner = torch.where(dead, 1.0, inner)
    return torch.where(dead, _NEG_INF, shift + torch.log(inner))


def _masked_logsumexp(values: Tensor, include: Tensor) -> Tensor:
    """logsumexp over the last axis of the entries where ``include``; -inf where none are."""
    some = include.any(dim=-1, keepdim=True)
    filled = values.masked_fill(~include, _NEG_INF)
    filled = torch.where(some, filled, 0.0)  # an all -inf row would give NaN gradients
    return torch.where(some.squeeze(-1), torch.logsumexp(filled, dim=-1), _NEG_INF)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    near_zero = x > -math.log(2.0)
    return torch.where(
        near_zero,
        torch.log(-torch.expm1(x.clamp(min=-math.log(2.0)))),
        torch.log1p(-torch.exp(x.clamp(max=-math.log(2.0)))),
    )


# -- shapes, masking, reduction --------------------------------------------------------------------


def _token_shape(logits: Tensor, labels: Tensor | None) -> torch.Size:
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, T, V) or (N, V), got shape {tuple(logits.shape)}")
    token_shape = logits.shape[:-1]
    if labels is not None and labels.shape != token_shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the logits' shape without the vocabulary "
            f"axis, {tuple(token_shape)} (align causal-LM outputs with shift_for_next_token)"
        )
    return token_shape


def _keep_mask(labels: Tensor | None) -> Tensor | None:
    return None if labels is None else (labels != IGNORE_INDEX).reshape(-1)


def _select(per_token: Tensor, keep: Tensor | None) -> Tensor:
    """Flatten the token axes of a ``(*tokens, X)`` tensor to ``(M, X)``, keeping the tokens that
    count: a masked token is never computed, so its contents cannot reach the loss or gradient."""
    flat = per_token.reshape(-1, per_token.shape[-1])
    return flat if keep is None else flat[keep]


def _select_labels(labels: Tensor, keep: Tensor | None) -> Tensor:
    flat = labels.reshape(-1)
    return flat if keep is None else flat[keep]


def _reduce(
    per_token: Tensor, keep: Tensor | None, token_shape: torch.Size, reduction: Reduction
) -> Tensor:
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        # max(.., 1): an all-masked batch gives 0 (still attached to the graph), not 0/0.
        return per_token.sum() / max(per_token.numel(), 1)
    if keep is None:
        return per_token.reshape(token_shape)
    full = per_token.new_zeros(keep.shape).masked_scatter(keep, per_token)
    return full.reshape(token_shape)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return torch.log_softmax(_upcast(logits) / temperature, dim=-1)


def _upcast(logits: Tensor) -> Tensor:
    """Half precision loses too much in log-softmax differences; compute those in float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def _check_temperature(temperature: float) -> None:
    if not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")
