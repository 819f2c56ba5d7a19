"""Reverse KL from a teacher that only scored the student's own tokens (on-policy distillation).

On-policy distillation (GKD with lambda = 1 and beta = 1, Agarwal et al. 2024; the "on-policy
distillation" write-ups of 2025) trains the student on its own samples ``y ~ q`` (q = student)
to lower the reverse KL ``KL(q || p)`` to the teacher p at every position of the sample. A
teacher behind an API does not return its whole distribution; it returns, for each sampled
token, its log-prob ``log p(y_t)`` and, where the server offers them, its top-k alternatives.
Two estimates follow, both per position ``t`` given the sampled prefix:

* :func:`sampled_reverse_kl`, from the sampled token alone. ``k_t = log q(y_t) - log p(y_t)``
  is an unbiased single-sample estimate of ``KL(q_t || p_t)`` (``E_{y~q}[k] = KL``). Its
  gradient is obtained as a policy gradient with ``k_t`` as the (negated) per-token reward and
  no credit to earlier tokens (the write-ups' "discount zero"):
  ``surrogate_t = sg(k_t * w_t) * exp(log q(y_t) - sg(log q(y_t)))`` with the importance
  weight ``w_t = min(q(y_t) / q_sample(y_t), max_ratio)`` held constant: its value is
  ``k_t * w_t`` and its gradient ``w_t * k_t * grad log q(y_t)``, which is ``k_t * grad log
  q(y_t)`` when the weights are those that sampled (``w_t = 1``) and the truncated
  importance-weighted form when they moved on since (a sample drawn one step ahead, as the
  overlap of sampling and scoring does; below the cap, ``E_{y~q_sample}[w k grad log q] =
  E_{y~q}[k grad log q]``). Because ``E_{y~q}[grad log q(y)] = 0``, ``E_{y~q}[k(y) grad log
  q(y)] = grad KL(q_t || p_t)`` exactly: the estimate's expected gradient is the dense
  reverse-KL gradient at that position.
* :func:`topk_reverse_kl`, from the teacher's top-k: the vocabulary is coarsened to the K ids
  and one tail bucket (the teacher's tail mass ``1 - sum_k p_k``, the student's mass on every
  other id), and the reverse KL over those K + 1 buckets is computed exactly and differentiated
  directly. It equals the dense reverse KL when the ids cover the vocabulary and is a lower
  bound of it otherwise (coarsening never raises a KL). The sampled token is always among the
  ids (the trainer puts it there), so the top-k form never knows less than the sampled one.
  Where the stored masses leave the tail at (or under) rounding, as a float32 server's 0.0 for a
  confident token does, the teacher's tail is raised to a small floor (``_floored_tail``);
  raising a teacher bucket only lowers the KL, so the bound stands.

Shapes: ``(B, T)`` per-token tensors, ``(B, T, V)`` student logits, ``(B, T, K)`` teacher top-k;
``mask`` ``(B, T)`` is True where a token was sampled *and* scored (a position without a teacher
score never enters the loss). Both functions return ``(loss, estimate)``: ``loss`` the mean over
masked tokens to call ``backward`` on, ``estimate`` the detached mean reverse-KL estimate to log.
An all-masked batch gives a zero loss still attached to the graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stillroom.train.losses import _kl, topk_buckets

_NEG_INF = float("-inf")
# The lowest teacher log-prob either form uses: a server's -inf (a token the teacher masks, or a
# probability that underflowed) on a token the student gives mass would make the reverse KL, and
# every gradient, infinite. log(2^-149), the smallest positive float32, is the mildest value such
# an -inf can stand for (a float32 softmax gives 0 only below it): a token there still costs
# about 100 nats, far above any real score, without one token outweighing thousands of others in
# a batch's gradient as a floor like -1e4 would.
LOGPROB_FLOOR = math.log(2.0**-149)
# The tail mass below which float32 scores cannot be trusted: a server's log_softmax gives the
# top log-prob to about one ulp of the logits' scale (logits up to ~100: errors up to ~6e-6), so
# ``1 - sum_k p_k`` below this is rounding, and a confident token's log-prob printed as 0.0 makes
# it exactly 0 (or negative) however much mass the rest of the vocabulary holds.
_TAIL_RESOLUTION = 1e-5


def sampled_reverse_kl(
    student_logprobs: Tensor,
    sample_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    max_ratio: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """The sampled-token reverse-KL estimate and its policy-gradient surrogate.

    ``student_logprobs``: ``log q(y_t)`` under the weights being trained (with gradient);
    ``sample_logprobs``: the same under the weights that drew the sample (data); equal to the
    first when nothing changed in between. ``teacher_logprobs``: ``log p(y_t)`` as the teacher
    scored it. ``max_ratio`` truncates the importance weight ``q / q_sample`` (a sample drawn a
    step ahead; 1 at the sampling weights) so one stale token cannot dominate a step: a token
    past it is weighted ``max_ratio``, on the loss and its gradient alike (truncated importance
    sampling), not dropped. ``teacher_logprobs`` are floored at log(2^-149) ~ -103.3 (the
    smallest positive float32) as the top-k form floors its buckets, so a server's -inf (a
    masked token) gives a large, finite loss: about 100 nats on that token.
    """
    if not student_logprobs.shape == sample_logprobs.shape == teacher_logprobs.shape == mask.shape:
        raise ValueError("student, sample and teacher log-probs and the mask must share a shape, got "
                         f"{tuple(student_logprobs.shape)}, {tuple(sample_logprobs.shape)}, "
                         f"{tuple(teacher_logprobs.shape)}, {tuple(mask.shape)}")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1 (the ratio is 1 at the sampling weights), "
                         f"got {max_ratio}")
    keep = mask.bool()
    new = student_logprobs.double() if student_logprobs.dtype == torch.float64 else \
        student_logprobs.float()
    teacher = teacher_logprobs.to(new.dtype).detach()
    old = sample_logprobs.to(new.dtype).detach()
    # Masked positions may hold anything (NaN, inf): replaced before any arithmetic, so that
    # neither the value nor the gradient (where's backward is a select) can carry them.
    safe_teacher = torch.where(keep, teacher, torch.zeros_like(teacher)).clamp(min=LOGPROB_FLOOR)
    safe_old = torch.where(keep, old, torch.zeros_like(old))
    safe_new = torch.where(keep, new, torch.zeros_like(new))
    estimate = safe_new.detach() - safe_teacher  # k_t at the current weights
    # The truncated weight min(q / q_sample, max_ratio), taken in log space (a ratio that
    # overflows is still capped) and held constant; exp(x - sg(x)) is 1 with gradient grad x,
    # so the surrogate's value is k * weight and its gradient k * weight * grad log q.
    weight = (safe_new.detach() - safe_old).clamp(max=math.log(max_ratio)).exp()
    score = torch.exp(safe_new - safe_new.detach())
    surrogate = torch.where(keep, estimate * weight * score, torch.zeros_like(score))
    count = max(int(keep.sum()), 1)
    loss = surrogate.sum() / count
    return loss, (torch.where(keep, estimate, torch.zeros_like(estimate)).sum() / count).detach()


def topk_reverse_kl(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``KL(q || p)`` over the teacher's top-k ids plus one tail bucket, per masked position.

    ``student_logits`` ``(B, T, V)`` aligned with the scored positions (logits that predict the
    token at ``t``); ``teacher_ids`` ``(B, T, K)`` integers, -1 for padding; ``teacher_logprobs``
    the teacher's log-probs at T = 1 (-inf for padding). The student is softened by
    ``temperature``; the teacher's buckets are tempered as :func:`~stillroom.train.losses.
    topk_kd_loss` does (``p^(1/T)`` renormalized). Half precision is computed in float32.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs "
                         f"{tuple(teacher_logprobs.shape)} must have the same shape")
    if teacher_ids.shape[:-1] != student_logits.shape[:-1] or mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"student_logits {tuple(student_logits.shape)}, teacher top-k "
                         f"{tuple(teacher_ids.shape)} and mask {tuple(mask.shape)} do not line up")
    keep = mask.bool().reshape(-1)
    logits = student_logits.reshape(-1, student_logits.shape[-1])[keep]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    ids = teacher_ids.reshape(-1, teacher_ids.shape[-1])[keep]
    stored = teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1])[keep].detach()
    vocab = logits.shape[-1]
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(f"a teacher id is >= the student's vocabulary size {vocab}")
    buckets = topk_buckets(logits, ids, stored, temperature)
    valid, student_buckets = buckets.valid, buckets.student
    teacher_topk, given_tail, tail_is_empty = (buckets.teacher_topk, buckets.teacher_tail,
                                               buckets.tail_is_empty)
    raw = torch.cat([teacher_topk, _floored_tail(teacher_topk, valid, given_tail,
                                                 tail_is_empty).unsqueeze(-1)], dim=-1)
    # Tempered and normalized by the buckets as the teacher gave them: a raised tail is added on
    # top, never taken from the top-k buckets, so with exact scores (at temperature 1) every
    # bucket's teacher mass is at least the true one and the loss stays a lower bound of the
    # dense KL. It may then dip below 0, by at most log(1 + the tempered floor): ~1e-5 at 1.
    normalizer = torch.logsumexp(
        torch.cat([teacher_topk, given_tail.unsqueeze(-1)], dim=-1) / temperature, dim=-1)
    teacher_buckets = raw / temperature - normalizer.unsqueeze(-1)
    # A bucket the teacher gives no mass while the student does makes the reverse KL infinite;
    # the floor keeps one such token (a stored log-prob of -1e30, say) finite.
    teacher_buckets = teacher_buckets.clamp(min=LOGPROB_FLOOR)
    per_token = _kl(student_buckets, teacher_buckets)
    # With no kept position the sum is over an empty selection of the logits: a zero still in
    # the graph, which no garbage at masked positions can turn into NaN.
    loss = per_token.sum() / max(per_token.numel(), 1)
    return loss, loss.detach()


def _floored_tail(teacher_topk: Tensor, valid: Tensor, given_tail: Tensor,
                  tail_is_empty: Tensor) -> Tensor:
    """The teacher's tail log-mass, ``log(1 - sum_k p_k)``, raised where the scores cannot say.

    A float32 server rounds a confident token's log-prob to 0.0 (or its top-k masses to a sum
    of 1 or more): the tail comes out -inf, and the log-prob floor alone would charge the
    student's tail mass ~100 nats (1e4 with the floor this module once had) where the dense KL
    charges ~20. A non-empty tail holds real tokens, so it is given at least the
    mass of one more token as likely as the least likely stored one (the token ranked just after
    a top-k is about as likely as its last; where the ids hold the sampled token from further
    down, the tokens ranked between it and the top-k are in the tail, each at least as likely as
    it), but never more than ``_TAIL_RESOLUTION``: a tail the scores do resolve (a sampled token
    at 0.9 and nothing else stored leaves 0.1) is kept as given, where the stored-token guess
    would be far off. Raising a teacher's bucket can only lower ``q log(q / p)``, so the floor
    keeps the lower bound of the dense KL whatever it is.
    """
    least = torch.where(valid, teacher_topk, float("inf")).amin(dim=-1)
    floor = torch.clamp(least, max=math.log(_TAIL_RESOLUTION))  # +inf (nothing stored) -> cap
    floor = torch.where(valid.any(dim=-1), floor, _NEG_INF)
    return torch.where(tail_is_empty, _NEG_INF, torch.maximum(given_tail, floor))


__all__ = ["LOGPROB_FLOOR", "sampled_reverse_kl", "topk_reverse_kl"]
