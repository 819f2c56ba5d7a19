"""The two reverse-KL estimates of on-policy distillation (stillroom.train.on_policy_losses)
against a dense float64 reference written out here: ``KL(q || p) = sum_v q_v (log q_v - log
p_v)`` with q the student's softmax (at the temperature) and p the teacher's distribution.

The top-k form is checked for equality where the ids cover the vocabulary and for the lower
bound elsewhere; the sampled-token form by its expectation over the student's own samples,
enumerated exactly (every token, weighted by q) and drawn at random (within standard errors).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from stillroom.train.on_policy_losses import sampled_reverse_kl, topk_reverse_kl

torch.set_num_threads(1)
F64 = torch.float64


def dense_reverse_kl(student_logits: Tensor, teacher_logprobs: Tensor, temperature: float = 1.0
                     ) -> Tensor:
    """Per position ``KL(q_T || p_T)``: q_T = softmax(logits / T), p_T = p^(1/T) renormalized."""
    log_q = student_logits / temperature
    log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
    log_p = teacher_logprobs / temperature
    log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def dense_gradient(student_logits: Tensor, teacher_logprobs: Tensor, temperature: float = 1.0
                   ) -> Tensor:
    """d KL(q_T || p_T) / d logits by hand: ``q * (log q - log p_T - KL) / T``."""
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logprobs / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1, keepdim=True)
    return log_q.exp() * (log_q - log_p - kl) / temperature


def random_case(shape: tuple[int, ...], vocab: int, seed: int) -> tuple[Tensor, Tensor]:
    """Student logits and teacher log-probs, float64, far enough apart to give a real KL."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=generator, dtype=F64) * 1.5
    teacher = torch.log_softmax(torch.randn(*shape, vocab, generator=generator, dtype=F64) * 2.0, -1)
    return logits, teacher


def covering_topk(teacher: Tensor, padding: int, seed: int) -> tuple[Tensor, Tensor]:
    """Ids that cover the vocabulary in a random order per position, with ``padding`` slots of
    id -1 and log-prob -inf scattered among them."""
    generator = torch.Generator().manual_seed(seed)
    *lead, vocab = teacher.shape
    width = vocab + padding
    ids = torch.full((*lead, width), -1, dtype=torch.long)
    flat_ids = ids.reshape(-1, width)
    for row in range(flat_ids.shape[0]):
        slots = torch.randperm(width, generator=generator)[:vocab]
        flat_ids[row, slots] = torch.randperm(vocab, generator=generator)
    logprobs = torch.where(ids >= 0, teacher.gather(-1, ids.clamp(min=0)), -math.inf)
    return ids, logprobs


# -- the top-k form --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "vocab", "temperature", "padding"), [
    ((1, 1), 5, 1.0, 0),
    ((2, 3), 7, 1.0, 2),
    ((3, 4), 11, 0.5, 3),
    ((2, 5), 6, 2.0, 1),
])
def test_topk_equals_the_dense_reverse_kl_when_the_ids_cover_the_vocabulary(
        shape: tuple[int, int], vocab: int, temperature: float, padding: int) -> None:
    logits, teacher = random_case(shape, vocab, seed=vocab)
    ids, stored = covering_topk(teacher, padding, seed=vocab + 1)
    mask = torch.ones(shape, dtype=torch.bool)
    if shape[1] > 1:
        mask[0, 1] = False  # a masked position: neither in the loss nor in the gradient
        logits[0, 1] = math.nan
    logits.requires_grad_(True)
    loss, estimate = topk_reverse_kl(logits, ids, stored, mask, temperature=temperature)

    reference_logits = torch.where(mask.unsqueeze(-1), logits.detach(), 0.0)
    per_position = dense_reverse_kl(reference_logits, teacher, temperature)
    expected = per_position[mask].mean()
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    assert estimate.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    assert not estimate.requires_grad

    loss.backward()
    assert logits.grad is not None
    gradient = dense_gradient(reference_logits, teacher, temperature) / int(mask.sum())
    gradient = torch.where(mask.unsqueeze(-1), gradient, 0.0)
    torch.testing.assert_close(logits.grad, gradient, rtol=1e-9, atol=1e-12)


def test_the_hand_gradient_is_the_gradient_of_the_dense_reference() -> None:
    """The reference's gradient formula itself, against autograd on the reference's KL."""
    logits, teacher = random_case((4,), 9, seed=3)
    for temperature in (0.7, 1.0, 1.8):
        leaf = logits.clone().requires_grad_(True)
        dense_reverse_kl(leaf, teacher, temperature).sum().backward()
        assert leaf.grad is not None
        torch.testing.assert_close(leaf.grad, dense_gradient(logits, teacher, temperature),
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_is_a_lower_bound_when_the_ids_do_not_cover(k: int) -> None:
    vocab = 12
    logits, teacher = random_case((4, 6), vocab, seed=k)
    generator = torch.Generator().manual_seed(100 + k)
    # The teacher's own top-k at some positions, any k ids at others: the bound holds for both.
    top = teacher.topk(k, dim=-1).indices
    anything = torch.stack([torch.randperm(vocab, generator=generator)[:k]
                            for _ in range(4 * 6)]).reshape(4, 6, k)
    ids = torch.where(torch.arange(6).reshape(1, 6, 1) % 2 == 0, top, anything)
    stored = teacher.gather(-1, ids)
    dense = dense_reverse_kl(logits, teacher)
    for b in range(4):
        for t in range(6):
            mask = torch.zeros(4, 6, dtype=torch.bool)
            mask[b, t] = True
            loss, _ = topk_reverse_kl(logits, ids, stored, mask)
            assert loss.item() <= dense[b, t].item() + 1e-12
            assert loss.item() >= -1e-12
    mask = torch.ones(4, 6, dtype=torch.bool)
    loss, _ = topk_reverse_kl(logits, ids, stored, mask)
    assert loss.item() < dense.mean().item() - 1e-6  # a real loss of information, not equality


def test_topk_in_half_precision() -> None:
    logits, teacher = random_case((2, 4), 10, seed=7)
    ids, stored = covering_topk(teacher, 2, seed=8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    expected = dense_reverse_kl(logits, teacher, 1.3).mean().item()
    expected_gradient = dense_gradient(logits, teacher, 1.3) / 8
    for dtype in (torch.float16, torch.bfloat16):
        half = logits.to(dtype).requires_grad_(True)
        loss, estimate = topk_reverse_kl(half, ids, stored.to(dtype), mask, temperature=1.3)
        assert loss.dtype == torch.float32  # computed in float32, whatever came in
        tolerance = 2e-2 if dtype == torch.bfloat16 else 3e-3
        assert loss.item() == pytest.approx(expected, rel=tolerance * 5, abs=tolerance)
        loss.backward()
        assert half.grad is not None and half.grad.dtype == dtype
        assert torch.isfinite(half.grad).all()
        torch.testing.assert_close(half.grad.double(), expected_gradient, rtol=0.1,
                                   atol=tolerance / 4)


def test_topk_all_masked_is_zero_and_attached() -> None:
    logits, teacher = random_case((2, 3), 5, seed=1)
    ids, stored = covering_topk(teacher, 0, seed=2)
    logits[1, 2] = math.nan  # garbage under the mask must not turn the zero into NaN
    logits.requires_grad_(True)
    loss, estimate = topk_reverse_kl(logits, ids, stored, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and estimate.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_topk_a_teacher_zero_on_a_student_token_stays_finite() -> None:
    """A server that rounds a tiny log-prob away on a token the student favours: the loss is
    large but finite (the teacher's bucket floored at log(2^-149), the smallest positive
    float32: about 100 nats, not 1e4), and its gradient finite."""
    logits = torch.tensor([[[4.0, 0.0, 0.0]]], dtype=F64, requires_grad=True)
    ids = torch.tensor([[[0, 1, 2]]])
    stored = torch.tensor([[[-1e30, math.log(0.5), math.log(0.5)]]], dtype=F64)
    loss, _ = topk_reverse_kl(logits, ids, stored, torch.ones(1, 1, dtype=torch.bool))
    log_q = torch.log_softmax(logits.detach()[0, 0], -1)
    floored = torch.tensor([math.log(2.0**-149), math.log(0.5), math.log(0.5)], dtype=F64)
    assert loss.item() == pytest.approx((log_q.exp() * (log_q - floored)).sum().item(), rel=1e-12)
    assert 90 < loss.item() < 110
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def confident_float32_teacher(boost: float, k: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """/tmp/redteam18/tail.py's case: a teacher sure of one token (its logit raised by
    ``boost``) over 1000 ids, its log-probs computed in float32 as a server does (the top one
    rounds to 0.0), its top-k stored, and an untrained student: (exact teacher log-probs in
    float64, student logits (1, 1, V), top-k ids, top-k float32 log-probs)."""
    generator = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(1000, generator=generator) * 2
    teacher_logits[7] += boost
    top = torch.log_softmax(teacher_logits, -1).topk(k)
    student = torch.randn(1, 1, 1000, generator=generator)
    return (torch.log_softmax(teacher_logits.double(), -1), student,
            top.indices.view(1, 1, k), top.values.view(1, 1, k))


def test_topk_a_float32_top_logprob_of_zero_keeps_the_loss_near_the_dense_kl() -> None:
    """The top-k masses sum to 1 or more: the tail used to be -inf, floored at -1e4, and the
    loss 9908.7 against a dense KL of 19.3. The tail now gets the least stored token's mass (or
    1e-5 if more), on top of the buckets: the loss stays at or below the dense value and near
    it, and its gradient is finite and takes mass off the student's tail."""
    exact, logits, ids, stored = confident_float32_teacher(30.0)
    assert stored[0, 0, 0].item() == 0.0 and stored.double().exp().sum().item() >= 1.0
    log_q = torch.log_softmax(logits[0, 0].double(), -1)
    dense = (log_q.exp() * (log_q - exact)).sum().item()
    assert dense == pytest.approx(19.303, abs=1e-3)
    leaf = logits.clone().requires_grad_(True)
    loss, estimate = topk_reverse_kl(leaf, ids, stored, torch.ones(1, 1, dtype=torch.bool))
    assert 0.9 * dense < loss.item() <= dense and estimate.item() == loss.item()

    # By hand: the stored buckets renormalized (their sum is 1 + 4e-8), the tail at the least
    # stored log-prob (-17.9 < log 1e-5).
    top = stored[0, 0].double()
    student = torch.cat([log_q[ids[0, 0]], torch.logsumexp(
        log_q[torch.ones(1000, dtype=torch.bool).index_fill(0, ids[0, 0], False)], 0)[None]])
    teacher = torch.cat([top - torch.logsumexp(top, 0), top.min()[None]])
    expected = (student.exp() * (student - teacher)).sum().item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    outside = torch.ones(1000, dtype=torch.bool).index_fill(0, ids[0, 0], False)
    assert (leaf.grad[0, 0][outside] > 0).all()  # a descent step lowers every tail logit

    # Tempered, the floor holds as well: the bucket loss stays of the dense tempered KL's size.
    tempered, _ = topk_reverse_kl(logits, ids, stored, torch.ones(1, 1, dtype=torch.bool),
                                  temperature=2.0)
    dense_tempered = dense_reverse_kl(logits[0, 0].double(), exact, 2.0).item()
    assert 0 < tempered.item() < 2 * dense_tempered < 100


def test_topk_the_tail_floor_keeps_the_lower_bound_on_exact_scores() -> None:
    """float64 scores whose tail is tiny (5 ids at e^-25 beside a top-3): the floor (1e-5, below
    the least stored token's mass) raises the tail above its true mass, which can only lower the
    loss: it stays a lower bound of the dense KL, and below the bucket KL with the true tail."""
    teacher = torch.log_softmax(torch.tensor([0.0, -1.0, -2.0] + [-25.0] * 5, dtype=F64), -1)
    ids = torch.tensor([0, 1, 2]).expand(4, 3).reshape(1, 4, 3)
    stored = teacher[ids]
    logits = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(5), dtype=F64) * 2
    loss, _ = topk_reverse_kl(logits, ids, stored, torch.ones(1, 4, dtype=torch.bool))
    dense = dense_reverse_kl(logits[0], teacher).mean().item()
    log_q = torch.log_softmax(logits[0], -1)
    student = torch.cat([log_q[:, :3], torch.logsumexp(log_q[:, 3:], -1, keepdim=True)], -1)
    true = torch.cat([teacher[:3], torch.logsumexp(teacher[3:], 0)[None]])
    raised = torch.cat([teacher[:3], torch.tensor([math.log(1e-5)], dtype=F64)])
    coarse = (student.exp() * (student - true)).sum(-1).mean().item()
    assert loss.item() <= coarse <= dense
    assert loss.item() == pytest.approx(
        (student.exp() * (student - raised)).sum(-1).mean().item(), rel=1e-12)
    assert loss.item() < coarse - 1e-3  # the floor did act here


def test_topk_a_tail_the_scores_resolve_is_kept_as_given() -> None:
    """One stored token (the sampled one at 0.9): its tail of 0.1 is known, and no floor moves
    it (the least stored token's mass, 0.9, would be far off): the two-bucket KL exactly."""
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0]]], dtype=F64)
    loss, _ = topk_reverse_kl(logits, torch.tensor([[[0]]]),
                              torch.tensor([[[math.log(0.9)]]], dtype=F64),
                              torch.ones(1, 1, dtype=torch.bool))
    q = torch.softmax(logits[0, 0], -1)
    student = torch.stack([q[0], 1 - q[0]])
    teacher = torch.tensor([0.9, 0.1], dtype=F64)
    assert loss.item() == pytest.approx((student * (student / teacher).log()).sum().item(),
                                        rel=1e-12)


def test_topk_shape_errors() -> None:
    logits, teacher = random_case((2, 3), 5, seed=1)
    ids, stored = covering_topk(teacher, 0, seed=2)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="same shape"):
        topk_reverse_kl(logits, ids, stored[..., :4], mask)
    with pytest.raises(ValueError, match="do not line up"):
        topk_reverse_kl(logits, ids[:, :2], stored[:, :2], mask)
    with pytest.raises(ValueError, match="do not line up"):
        topk_reverse_kl(logits, ids, stored, mask[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        topk_reverse_kl(logits, ids, stored, mask, temperature=0.0)
    with pytest.raises(ValueError, match="vocabulary size 5"):
        topk_reverse_kl(logits, ids + 1, stored, mask)


# -- the sampled-token form ------------------------------------------------------------------------


def one_token(logits: Tensor, teacher: Tensor, token: int, sample_logits: Tensor | None = None,
              max_ratio: float = 2.0) -> tuple[Tensor, Tensor]:
    """The sampled estimate at one position for one drawn token: (loss, estimate)."""
    log_q = torch.log_softmax(logits, dim=-1)[token].reshape(1, 1)
    old = torch.log_softmax(logits if sample_logits is None else sample_logits, -1)[token]
    return sampled_reverse_kl(log_q, old.detach().reshape(1, 1), teacher[token].reshape(1, 1),
                              torch.ones(1, 1, dtype=torch.bool), max_ratio=max_ratio)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sampled_is_unbiased_by_exact_enumeration(seed: int) -> None:
    """Sum over every token y, weighted by q(y): the estimate's expectation is the dense reverse
    KL and the loss's expected gradient the dense gradient, position by position (each position
    its own student and teacher distributions, the prefix before it fixed)."""
    logits, teacher = random_case((3,), 6, seed=seed)
    for position in range(3):
        student, scores = logits[position], teacher[position]
        q = torch.softmax(student, dim=-1)
        expected_estimate = torch.zeros((), dtype=F64)
        expected_gradient = torch.zeros_like(student)
        for token in range(6):
            leaf = student.clone().requires_grad_(True)
            loss, estimate = one_token(leaf, scores, token)
            loss.backward()
            assert leaf.grad is not None
            expected_estimate += q[token] * estimate
            expected_gradient += q[token] * leaf.grad
        dense = dense_reverse_kl(student, scores)
        assert expected_estimate.item() == pytest.approx(dense.item(), rel=1e-12, abs=1e-14)
        torch.testing.assert_close(expected_gradient, dense_gradient(student, scores),
                                   rtol=1e-10, atol=1e-13)


def test_sampled_importance_weights_correct_a_stale_sample_by_exact_enumeration() -> None:
    """Tokens drawn by older weights (the ratio below max_ratio everywhere): the expectation over
    the *old* distribution of the loss's gradient is the dense gradient at the *new* weights."""
    logits, teacher = random_case((1,), 5, seed=11)
    new, scores = logits[0], teacher[0]
    old = new + 0.3 * torch.randn(5, generator=torch.Generator().manual_seed(12), dtype=F64)
    ratios = torch.softmax(new, -1) / torch.softmax(old, -1)
    assert ratios.max() < 2.0 and (ratios - 1).abs().max() > 0.05  # stale, within the cap
    q_old = torch.softmax(old, dim=-1)
    expected_gradient = torch.zeros_like(new)
    for token in range(5):
        leaf = new.clone().requires_grad_(True)
        loss, _ = one_token(leaf, scores, token, sample_logits=old)
        loss.backward()
        assert leaf.grad is not None
        expected_gradient += q_old[token] * leaf.grad
    torch.testing.assert_close(expected_gradient, dense_gradient(new, scores), rtol=1e-10,
                               atol=1e-13)


def test_sampled_agrees_with_monte_carlo_within_standard_errors() -> None:
    """Many tokens drawn from q at each of three positions, in one (N, T) call: the mean
    estimate and the gradient agree with the dense values within five standard errors, the
    errors computed from the same draws (per draw: k(y) and k(y) * (onehot(y) - q))."""
    draws, vocab = 20000, 7
    logits, teacher = random_case((3,), vocab, seed=21)
    generator = torch.Generator().manual_seed(22)
    tokens = torch.stack([torch.multinomial(torch.softmax(logits[t], -1), draws, replacement=True,
                                            generator=generator) for t in range(3)], dim=1)
    leaf = logits.clone().requires_grad_(True)
    log_q = torch.log_softmax(leaf, dim=-1)
    student = torch.stack([log_q[t][tokens[:, t]] for t in range(3)], dim=1)  # (N, 3)
    scores = torch.stack([teacher[t][tokens[:, t]] for t in range(3)], dim=1)
    mask = torch.ones(draws, 3, dtype=torch.bool)
    loss, estimate = sampled_reverse_kl(student, student.detach(), scores, mask)
    loss.backward()
    assert leaf.grad is not None

    dense = dense_reverse_kl(logits, teacher)
    k = (student.detach() - scores)  # (N, 3)
    estimate_error = (k.std(dim=0) ** 2).sum().sqrt() / (3 * math.sqrt(draws))
    assert abs(estimate.item() - dense.mean().item()) < 5 * estimate_error
    q = torch.softmax(logits, dim=-1)
    for t in range(3):
        per_draw = k[:, t, None] * (torch.nn.functional.one_hot(tokens[:, t], vocab) - q[t])
        error = per_draw.std(dim=0) / math.sqrt(draws)
        # The loss is a mean over all N * 3 tokens: position t's gradient is scaled by 1/3.
        gradient = leaf.grad[t] * 3
        assert ((gradient - dense_gradient(logits[t], teacher[t])).abs() < 5 * error).all(), t


def test_sampled_ratio_is_one_at_the_sampling_weights_and_truncated_at_max_ratio() -> None:
    student = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[-1.5, -1.0, -0.5, -4.0]], dtype=F64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    k = (student.detach() - teacher)

    # At the sampling weights: the loss is the estimate and its gradient k / N per token.
    loss, estimate = sampled_reverse_kl(student, student.detach(), teacher, mask)
    loss.backward()
    assert loss.item() == pytest.approx(estimate.item(), rel=1e-14)
    assert estimate.item() == pytest.approx(k.mean().item(), rel=1e-14)
    torch.testing.assert_close(student.grad, k / 4, rtol=1e-14, atol=0)

    # Sampled by other weights: ratio r = q / q_sample, weight min(r, max_ratio) on value and
    # gradient alike; the estimate itself is k at the current weights, unweighted.
    sample = student.detach() - torch.tensor([[0.1, -0.2, 1.0, 3.0]], dtype=F64)
    ratio = (student.detach() - sample).exp()  # 1.105, 0.819, 2.718, 20.1
    weight = ratio.clamp(max=2.0)
    student.grad = None
    loss, estimate = sampled_reverse_kl(student, sample, teacher, mask, max_ratio=2.0)
    loss.backward()
    assert loss.item() == pytest.approx((k * weight).mean().item(), rel=1e-13)
    assert estimate.item() == pytest.approx(k.mean().item(), rel=1e-14)
    # A truncated token keeps its gradient, weighted by max_ratio, not dropped.
    assert student.grad is not None and student.grad[0, 3] != 0
    torch.testing.assert_close(student.grad, k * weight / 4, rtol=1e-13, atol=0)

    # A ratio that overflows (a token the sampling weights all but ruled out) stays finite.
    student.grad = None
    far = student.detach() - 1000.0
    loss, _ = sampled_reverse_kl(student, far, teacher, mask, max_ratio=3.0)
    loss.backward()
    assert loss.item() == pytest.approx((k * 3.0).mean().item(), rel=1e-13)
    torch.testing.assert_close(student.grad, k * 3.0 / 4, rtol=1e-13, atol=0)


def test_sampled_masked_positions_get_no_gradient_and_leak_no_nan() -> None:
    student = torch.tensor([[-1.0, math.nan, -0.5], [math.inf, -2.0, -0.1]], dtype=F64,
                           requires_grad=True)
    sample = torch.tensor([[-1.0, math.nan, -0.5], [-math.inf, -2.0, -0.1]], dtype=F64)
    teacher = torch.tensor([[-0.5, math.nan, -1.0], [math.nan, -math.inf, -0.3]], dtype=F64)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss, estimate = sampled_reverse_kl(student, sample, teacher, mask)
    loss.backward()
    kept = torch.tensor([-1.0 + 0.5, -0.5 + 1.0, -0.1 + 0.3], dtype=F64)
    assert loss.item() == pytest.approx(kept.mean().item(), rel=1e-14)
    assert estimate.item() == pytest.approx(kept.mean().item(), rel=1e-14)
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert torch.equal(student.grad[~mask], torch.zeros(3, dtype=F64))
    assert (student.grad[mask] != 0).all()


def test_sampled_all_masked_is_zero_and_attached() -> None:
    student = torch.full((2, 3), math.nan, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, estimate = sampled_reverse_kl(student, student.detach(), student.detach(), mask)
    assert loss.item() == 0.0 and estimate.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros(2, 3, dtype=F64))


def test_sampled_a_teacher_zero_on_a_sampled_token_stays_finite() -> None:
    """The sampled form floors the teacher's log-prob as the top-k form floors its buckets: a
    server's -inf (a masked token) gives a large, finite loss and gradient, the token costing
    -0.1 - log(2^-149) ~ 103 nats: the strongest push of any real score, yet not one that
    outweighs thousands of other tokens in the batch (a -1e4 floor did)."""
    student = torch.tensor([[-0.1, -0.2]], dtype=F64, requires_grad=True)
    teacher = torch.tensor([[-math.inf, -0.3]], dtype=F64)
    loss, estimate = sampled_reverse_kl(student, student.detach(), teacher,
                                        torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    expected = (-0.1 - math.log(2.0**-149) + (-0.2 + 0.3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert estimate.item() == pytest.approx(expected, rel=1e-12)
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_sampled_half_precision_is_computed_in_float32() -> None:
    student = torch.tensor([[-1.0, -0.25]], dtype=torch.float16, requires_grad=True)
    teacher = torch.tensor([[-2.0, -0.5]], dtype=torch.float16)
    loss, estimate = sampled_reverse_kl(student, student.detach(), teacher,
                                        torch.ones(1, 2, dtype=torch.bool))
    assert loss.dtype == torch.float32 and estimate.dtype == torch.float32
    assert loss.item() == pytest.approx((1.0 + 0.25) / 2)
    loss.backward()
    assert student.grad is not None and student.grad.dtype == torch.float16
    torch.testing.assert_close(student.grad.float(), torch.tensor([[0.5, 0.125]]))


def test_sampled_shape_errors() -> None:
    a = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="share a shape"):
        sampled_reverse_kl(a, a[:, :2], a, mask)
    with pytest.raises(ValueError, match="share a shape"):
        sampled_reverse_kl(a, a, a.reshape(3, 2), mask)
    with pytest.raises(ValueError, match="share a shape"):
        sampled_reverse_kl(a, a, a, mask[:1])
    with pytest.raises(ValueError, match="max_ratio"):
        sampled_reverse_kl(a, a, a, mask, max_ratio=0.0)
