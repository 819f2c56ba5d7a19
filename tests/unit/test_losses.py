"""Distillation losses against plain float64 references written out token by token."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stillroom.train import (  # noqa: E402
    hinton_loss,
    kd_loss,
    shift_for_next_token,
    skew_kl_loss,
    topk_kd_loss,
)

V = 7


# -- references: one token at a time, numpy float64 -----------------------------------------------


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max()) / t)
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def entropy(p: np.ndarray) -> float:
    return float(-sum(pi * math.log(pi) for pi in p if pi > 0))


def ref_gjsd(p: np.ndarray, q: np.ndarray, beta: float) -> float:
    """GKD Eq. 1 with p = teacher, q = student; endpoints defined as forward / reverse KL."""
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def per_token_mean(student, teacher, labels, fn) -> float:
    s, t = student.numpy().reshape(-1, V), teacher.numpy().reshape(-1, V)
    keep = [True] * len(s) if labels is None else (labels.numpy().reshape(-1) != -100)
    values = [fn(s[i], t[i]) for i in range(len(s)) if keep[i]]
    return sum(values) / len(values)


def logits(*shape: int, seed: int = 0, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@pytest.fixture
def pair():
    return logits(2, 4, V, seed=1), logits(2, 4, V, seed=2)


@pytest.fixture
def labels():
    lab = torch.tensor([[3, 1, -100, 0], [-100, -100, 6, 2]])
    return lab


# -- kd_loss: generalized JSD ----------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_reference(pair, labels, beta, temperature) -> None:
    s, t = pair
    got = kd_loss(s, t, labels, beta=beta, temperature=temperature)
    want = per_token_mean(
        s,
        t,
        labels,
        lambda si, ti: ref_gjsd(softmax(ti, temperature), softmax(si, temperature), beta),
    )
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_forward_and_reverse_kl_are_the_two_directions(pair) -> None:
    s, t = pair
    forward = per_token_mean(s, t, None, lambda si, ti: kl(softmax(ti), softmax(si)))
    reverse = per_token_mean(s, t, None, lambda si, ti: kl(softmax(si), softmax(ti)))
    assert forward != pytest.approx(reverse, rel=1e-3)  # the directions really differ here
    assert kd_loss(s, t, beta=0.0).item() == pytest.approx(forward, rel=1e-10)
    assert kd_loss(s, t, beta=1.0).item() == pytest.approx(reverse, rel=1e-10)


def test_beta_weights_the_teacher_side_as_in_gkd(pair) -> None:
    # GKD: JSD_beta / beta -> KL(p || q) as beta -> 0 and JSD_beta / (1 - beta) -> KL(q || p) as
    # beta -> 1. Swapping which side beta weights would swap these two limits.
    s, t = pair
    eps = 1e-5
    near_forward = kd_loss(s, t, beta=eps).item() / eps
    near_reverse = kd_loss(s, t, beta=1 - eps).item() / eps
    assert near_forward == pytest.approx(kd_loss(s, t, beta=0.0).item(), rel=1e-3)
    assert near_reverse == pytest.approx(kd_loss(s, t, beta=1.0).item(), rel=1e-3)


def test_beta_half_is_the_textbook_js_divergence(pair) -> None:
    # JS(P, Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2, a formula with no KL in it.
    s, t = pair

    def js(si, ti):
        p, q = softmax(ti), softmax(si)
        return entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2

    assert kd_loss(s, t, beta=0.5).item() == pytest.approx(per_token_mean(s, t, None, js), 1e-10)
    # symmetric in teacher and student
    assert kd_loss(s, t, beta=0.5).item() == pytest.approx(kd_loss(t, s, beta=0.5).item(), 1e-12)


def test_masked_tokens_are_ignored_even_when_garbage(pair, labels) -> None:
    s, t = pair
    base = kd_loss(s, t, labels, beta=0.5)
    s2, t2 = s.clone(), t.clone()
    masked = labels == -100
    s2[masked] = float("nan")
    t2[masked] = 1e6
    s2.requires_grad_(True)
    loss = kd_loss(s2, t2, labels, beta=0.5)
    assert loss.item() == pytest.approx(base.item(), rel=1e-12)
    loss.backward()
    assert torch.all(s2.grad[masked] == 0) and torch.isfinite(s2.grad).all()


def test_no_labels_averages_every_token(pair) -> None:
    s, t = pair
    want = per_token_mean(s, t, None, lambda si, ti: kl(softmax(ti), softmax(si)))
    assert kd_loss(s, t).item() == pytest.approx(want, rel=1e-10)
    # (N, V) input gives the same as (B, T, V)
    assert kd_loss(s.reshape(-1, V), t.reshape(-1, V)).item() == pytest.approx(want, rel=1e-10)


def test_reductions(pair, labels) -> None:
    s, t = pair
    per_token = kd_loss(s, t, labels, beta=0.3, reduction="none")
    assert per_token.shape == labels.shape
    assert torch.all(per_token[labels == -100] == 0) and torch.all(per_token[labels != -100] > 0)
    total = kd_loss(s, t, labels, beta=0.3, reduction="sum")
    assert total.item() == pytest.approx(per_token.sum().item(), rel=1e-12)
    mean = kd_loss(s, t, labels, beta=0.3)
    assert mean.item() == pytest.approx(total.item() / int((labels != -100).sum()), rel=1e-12)


def test_all_masked_gives_zero_with_a_gradient_path(pair) -> None:
    s, t = pair
    s = s.requires_grad_(True)
    loss = kd_loss(s, t, torch.full((2, 4), -100), beta=0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(s.grad == 0)


def test_minus_inf_vocab_slots_equal_the_smaller_vocabulary() -> None:
    # Vocabulary padding masked to -inf on both sides must act as if those slots did not exist,
    # with finite gradients (no 0 * inf).
    s, t = logits(3, 5, seed=3), logits(3, 5, seed=4)
    pad = torch.full((3, 2), float("-inf"), dtype=torch.float64)
    s_big = torch.cat([s, pad], dim=-1).requires_grad_(True)
    t_big = torch.cat([t, pad], dim=-1)
    for beta in (0.0, 0.4, 1.0):
        loss = kd_loss(s_big, t_big, beta=beta)
        assert loss.item() == pytest.approx(kd_loss(s, t, beta=beta).item(), rel=1e-12)
        (grad,) = torch.autograd.grad(loss, s_big)
        assert torch.isfinite(grad).all()
    loss = skew_kl_loss(s_big, t_big, alpha=0.1, reverse=True)
    assert loss.item() == pytest.approx(skew_kl_loss(s, t, 0.1, reverse=True).item(), rel=1e-12)


def test_half_precision_is_computed_in_float32(pair) -> None:
    s, t = pair
    got = kd_loss(s.to(torch.bfloat16), t.to(torch.bfloat16), beta=0.5)
    assert got.dtype == torch.float32
    want = kd_loss(s.to(torch.bfloat16).double(), t.to(torch.bfloat16).double(), beta=0.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_kd_loss_gradcheck(beta) -> None:
    s = logits(2, 3, 5, seed=5).requires_grad_(True)
    t = logits(2, 3, 5, seed=6).requires_grad_(True)
    lab = torch.tensor([[1, -100, 2], [0, 4, -100]])
    assert torch.autograd.gradcheck(
        lambda a, b: kd_loss(a, b, lab, beta=beta, temperature=1.5), (s, t)
    )


def test_bad_arguments_raise(pair) -> None:
    s, t = pair
    with pytest.raises(ValueError, match="beta"):
        kd_loss(s, t, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(s, t, reduction="batchmean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(s, t[..., :-1])
    with pytest.raises(ValueError, match="shift_for_next_token"):
        kd_loss(s, t, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        skew_kl_loss(s, t, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        hinton_loss(s, t, torch.zeros(2, 4, dtype=torch.long), alpha=-0.1)


# -- topk_kd_loss ----------------------------------------------------------------------------------


def ref_topk_kl(student_row, ids, teacher_logprobs, temperature=1.0) -> float:
    """Bucketed forward KL written out: K stored ids plus one tail bucket, tempered buckets."""
    pairs = [
        (int(i), float(lp))
        for i, lp in zip(ids, teacher_logprobs, strict=True)
        if i >= 0 and math.isfinite(lp)
    ]
    p = [math.exp(lp) for _, lp in pairs]
    p_tail = max(0.0, 1.0 - sum(p))
    if len({i for i, _ in pairs}) == len(student_row):
        p_tail = 0.0
    weights = [x ** (1 / temperature) for x in p] + [p_tail ** (1 / temperature)]
    total = sum(weights)
    p_buckets = [w / total for w in weights]
    q_full = softmax(student_row, temperature)
    q = [q_full[i] for i, _ in pairs]
    q_tail = sum(q_full[j] for j in range(len(q_full)) if j not in {i for i, _ in pairs})
    return kl(np.array(p_buckets), np.array(q + [q_tail]))


def teacher_topk(teacher, k):
    lp = torch.log_softmax(teacher, dim=-1)
    values, ids = lp.sort(dim=-1, descending=True)
    return ids[..., :k], values[..., :k]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_topk_with_the_whole_vocabulary_is_the_dense_forward_kl(pair, labels, temperature) -> None:
    s, t = pair
    ids, values = teacher_topk(t, V)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(0))
    ids, values = ids[..., perm], values[..., perm]  # order of the stored entries is irrelevant
    got = topk_kd_loss(s, ids, values, labels, temperature=temperature)
    dense = kd_loss(s, t, labels, beta=0.0, temperature=temperature)
    assert got.item() == pytest.approx(dense.item(), rel=1e-10)


def test_full_vocabulary_ignores_rounding_of_the_stored_values(pair) -> None:
    # API log-probs are rounded, so K = V entries may sum to a hair under 1: the tail covers no
    # token and must hold no mass (an empty student tail would otherwise make the KL infinite).
    s, t = pair
    ids, values = teacher_topk(t, V)
    got = topk_kd_loss(s, ids, values - 1e-4)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(kd_loss(s, t).item(), rel=1e-8)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_matches_the_bucketed_reference(pair, labels, k, temperature) -> None:
    s, t = pair
    ids, values = teacher_topk(t, k)
    got = topk_kd_loss(s, ids, values, labels, temperature=temperature)
    s_rows, keep = s.numpy().reshape(-1, V), labels.numpy().reshape(-1) != -100
    i_rows, v_rows = ids.numpy().reshape(-1, k), values.numpy().reshape(-1, k)
    want = np.mean(
        [
            ref_topk_kl(s_rows[n], i_rows[n], v_rows[n], temperature)
            for n in range(len(keep))
            if keep[n]
        ]
    )
    assert got.item() == pytest.approx(want, rel=1e-10)
    if temperature == 1.0:  # coarsening never raises a KL
        assert got.item() <= kd_loss(s, t, labels).item() + 1e-12


def test_tail_bucket_is_empty_when_the_teacher_mass_is_all_in_the_topk() -> None:
    s = logits(2, V, seed=8)
    # teacher puts all its mass on ids 2 and 5; the student's tail mass must then not count
    ids = torch.tensor([[2, 5], [5, 2]])
    values = torch.log(torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64))
    got = topk_kd_loss(s, ids, values, reduction="none")
    q = torch.softmax(s, dim=-1)
    want = [
        0.75 * math.log(0.75 / q[0, 2]) + 0.25 * math.log(0.25 / q[0, 5]),
        0.5 * math.log(0.5 / q[1, 5]) + 0.5 * math.log(0.5 / q[1, 2]),
    ]
    assert got.tolist() == pytest.approx(want, rel=1e-10)


def test_tail_bucket_counts_the_missing_mass() -> None:
    s = logits(1, V, seed=9)
    ids = torch.tensor([[0, 1]])
    values = torch.log(torch.tensor([[0.5, 0.2]], dtype=torch.float64))
    q = torch.softmax(s, dim=-1)[0]
    q_tail = float(q[2:].sum())
    want = 0.5 * math.log(0.5 / q[0]) + 0.2 * math.log(0.2 / q[1]) + 0.3 * math.log(0.3 / q_tail)
    assert topk_kd_loss(s, ids, values).item() == pytest.approx(want, rel=1e-10)


def test_topk_padding_entries_are_skipped(pair, labels) -> None:
    s, t = pair
    ids, values = teacher_topk(t, 3)
    base = topk_kd_loss(s, ids, values, labels, temperature=1.5)
    pad_ids = torch.cat([ids, torch.full_like(ids[..., :1], -1), ids[..., :1]], dim=-1)
    pad_values = torch.cat(
        [values, torch.zeros_like(values[..., :1]), torch.full_like(values[..., :1], -math.inf)],
        dim=-1,
    )  # id -1 with a finite value, and a real id with -inf: both padding
    got = topk_kd_loss(s, pad_ids, pad_values, labels, temperature=1.5)
    assert got.item() == pytest.approx(base.item(), rel=1e-12)


def test_topk_masked_tokens_are_ignored(pair, labels) -> None:
    s, t = pair
    ids, values = teacher_topk(t, 3)
    base = topk_kd_loss(s, ids, values, labels)
    masked = labels == -100
    s2, ids2, values2 = s.clone(), ids.clone(), values.clone()
    s2[masked] = float("nan")
    ids2[masked] = 10_000  # out of range, but never looked at
    values2[masked] = float("nan")
    assert topk_kd_loss(s2, ids2, values2, labels).item() == pytest.approx(base.item(), rel=1e-12)
    # the same out-of-range ids on kept tokens are an error, not a silent gather
    with pytest.raises(ValueError, match="vocabulary"):
        topk_kd_loss(s, ids2, values, None)


def test_topk_tiny_student_tail_stays_exact() -> None:
    # The student puts ~1e-40 outside the stored ids: 1 - sum(q_k) would round to 0 in float64,
    # the complement logsumexp does not.
    s = torch.tensor([[0.0, 0.0, -92.0, -92.0]], dtype=torch.float64)
    ids = torch.tensor([[0, 1]])
    values = torch.log(torch.tensor([[0.45, 0.45]], dtype=torch.float64))
    log_q_tail = math.log(2) - 92.0 - math.log(2 + 2 * math.exp(-92.0))
    log_q_head = -math.log(2 + 2 * math.exp(-92.0))
    want = 2 * 0.45 * (math.log(0.45) - log_q_head) + 0.1 * (math.log(0.1) - log_q_tail)
    assert topk_kd_loss(s, ids, values).item() == pytest.approx(want, rel=1e-12)


def test_topk_gradcheck() -> None:
    s = logits(2, 3, 6, seed=10).requires_grad_(True)
    t = logits(2, 3, 6, seed=11)
    ids, values = teacher_topk(t, 3)
    ids[0, 1, 2], values[1, 0, 1] = -1, -math.inf
    lab = torch.tensor([[1, 2, -100], [0, 4, 5]])
    assert torch.autograd.gradcheck(
        lambda a: topk_kd_loss(a, ids, values, lab, temperature=1.7), (s,)
    )
    full_ids, full_values = teacher_topk(t, 6)  # empty tail
    assert torch.autograd.gradcheck(lambda a: topk_kd_loss(a, full_ids, full_values), (s,))


# -- skew KL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_skew_kl_at_alpha_zero_is_plain_kl(pair, labels, reverse) -> None:
    s, t = pair
    got = skew_kl_loss(s, t, alpha=0.0, reverse=reverse, labels=labels)
    assert got.item() == pytest.approx(kd_loss(s, t, labels, beta=float(reverse)).item(), 1e-12)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_skew_kl_matches_distillm_definitions(pair, labels, alpha, temperature) -> None:
    s, t = pair

    def skl(si, ti):
        p, q = softmax(ti, temperature), softmax(si, temperature)
        return kl(p, alpha * p + (1 - alpha) * q)

    def srkl(si, ti):
        p, q = softmax(ti, temperature), softmax(si, temperature)
        return kl(q, alpha * q + (1 - alpha) * p)

    forward = skew_kl_loss(s, t, alpha, labels=labels, temperature=temperature)
    reverse = skew_kl_loss(s, t, alpha, reverse=True, labels=labels, temperature=temperature)
    assert forward.item() == pytest.approx(per_token_mean(s, t, labels, skl), rel=1e-10)
    assert reverse.item() == pytest.approx(per_token_mean(s, t, labels, srkl), rel=1e-10)


def test_skew_kl_gradients_are_finite(pair) -> None:
    s, t = pair
    s = s.requires_grad_(True)
    skew_kl_loss(s, t, 0.1, reverse=True).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# -- Hinton ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_hinton_mixes_hard_ce_and_scaled_soft_kl(pair, labels, alpha) -> None:
    s, t = pair
    temperature = 2.0
    s_rows, t_rows = s.numpy().reshape(-1, V), t.numpy().reshape(-1, V)
    lab = labels.numpy().reshape(-1)
    terms = []
    for n in range(len(lab)):
        if lab[n] == -100:
            continue
        ce = -math.log(softmax(s_rows[n])[lab[n]])
        soft = kl(softmax(t_rows[n], temperature), softmax(s_rows[n], temperature))
        terms.append((1 - alpha) * ce + alpha * temperature**2 * soft)
    got = hinton_loss(s, t, labels, alpha=alpha, temperature=temperature)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    if alpha == 0.0:  # pure hard-label CE, as torch computes it
        ce = torch.nn.functional.cross_entropy(s.reshape(-1, V), labels.reshape(-1))
        assert got.item() == pytest.approx(ce.item(), rel=1e-12)


# -- alignment and import weight -------------------------------------------------------------------


def test_shift_for_next_token_aligns_positions() -> None:
    lab = torch.tensor([[-100, 5, 6, 7]])
    out = torch.arange(4 * 3, dtype=torch.float64).reshape(1, 4, 3)
    shifted_labels, shifted = shift_for_next_token(lab, out)
    assert shifted_labels.tolist() == [[5, 6, 7]]
    assert torch.equal(shifted, out[:, :3])  # position i's logits now sit next to token i + 1
    with pytest.raises(ValueError):
        shift_for_next_token(lab, out[:, :3])


def test_importing_stillroom_and_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, stillroom, stillroom.stages, stillroom.train; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'stillroom.train.losses' not in sys.modules; "
        "from stillroom.train import kd_loss; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
