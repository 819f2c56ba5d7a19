"""The on-policy distillation step (:mod:`stillroom.train.on_policy` builds it from the config).

* :func:`schedule`: which rows each micro-batch reads, fixed in advance (a permutation per epoch
  from the seed), so the trainer knows micro-batch i+1's prompts while it trains i, and a resumed
  run reads the same rows (the transformers ``Trainer`` skips the batches already trained).
* :class:`Sampler`: the student's samples of a micro-batch's prompts, drawn from
  ``(seed, micro-batch)`` and kept with their log-probs at T = 1 under the sampling weights.
* :class:`Prefetcher`: sampling and the teacher's scoring of micro-batch i, started ahead (with
  ``overlap``, micro-batch i+1 is sampled and sent while the teacher still scores i); the wait
  for the teacher is measured.
* :func:`loss_tensors`: the scored samples as padded tensors; a sample without a score is never
  in them.
* :func:`trainer_class`: ``OnPolicyTrainer``, the transformers ``Trainer`` whose loss is the
  reverse-KL estimate (:mod:`stillroom.train.on_policy_losses`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from stillroom.errors import StillroomError
from stillroom.train.on_policy_teachers import Score, wait


class TeacherFailed(StillroomError):
    """Every sample of a micro-batch lost its teacher score: the run stops (the last checkpoint
    stays; fix the teacher and rerun with ``resume: true``). Not bad input: exit 1."""

    exit_code = 1


def schedule(rows: int, micro_batches: int, batch_size: int, seed: int) -> list[int]:
    """Row indices for ``micro_batches`` micro-batches of ``batch_size``: whole epochs, each a
    permutation drawn from ``(seed, epoch)``, cut to length."""
    out: list[int] = []
    epoch = 0
    while len(out) < micro_batches * batch_size:
        order = list(range(rows))
        random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
        out.extend(order)
        epoch += 1
    return out[: micro_batches * batch_size]


@dataclass
class Sample:
    """One student sample: its row, the student's prompt ids, the sampled ids (EOS included when
    sampled) and their log-probs at T = 1 under the weights that sampled them."""

    row: int
    prompt: list[int]
    completion: list[int]
    logprobs: list[float]


@dataclass
class Pending:
    samples: list[Sample]
    teachers: list[str]
    futures: list[Future[Score]]


@dataclass
class Ready:
    """A micro-batch's samples with their scores (None entries: failed) and the wait."""

    samples: list[Sample]
    teachers: list[str]
    scores: list[Score]
    waited: float


@dataclass
class Prefetcher:
    """Starts micro-batches (sample, then send to the teachers) ahead of the loss that uses them.

    ``sample(g, rows)`` draws micro-batch ``g``; ``send(sample) -> (teacher, future)`` submits its
    scoring; ``rows_of(g)`` are its rows; ``total`` micro-batches in the run. With ``overlap``
    :meth:`take` of ``g`` starts ``g + 1`` before waiting for ``g``'s scores.
    """

    sample: Callable[[int, list[int]], list[Sample]]
    send: Callable[[Sample], tuple[str, Future[Score]]]
    rows_of: Callable[[int], list[int]]
    total: int
    overlap: bool = True
    pending: dict[int, Pending] = field(default_factory=dict)
    events: list[tuple[str, int]] = field(default_factory=list)  # (what, micro-batch), in order

    def _start(self, g: int) -> None:
        self.events.append(("sample", g))
        samples = self.sample(g, self.rows_of(g))
        sent = [self.send(s) for s in samples]
        self.pending[g] = Pending(samples, [name for name, _ in sent], [f for _, f in sent])

    def take(self, g: int) -> Ready:
        # Micro-batches started but never taken (a resumed run skips ahead) are dropped.
        for stale in [k for k in self.pending if k < g]:
            del self.pending[stale]
        if g not in self.pending:
            self._start(g)
        if self.overlap and g + 1 < self.total and g + 1 not in self.pending:
            self._start(g + 1)
        pending = self.pending.pop(g)
        scores, waited = wait(pending.futures)
        self.events.append(("scored", g))
        return Ready(pending.samples, pending.teachers, scores, waited)


def accept_entries(sample: Sample, score: Score) -> str | None:
    """Why a score cannot be trained on (its tokens are not the sample's), or None."""
    if score.entries is None:
        return score.reason or "no score"
    if [entry.get("id") for entry in score.entries] != sample.completion:
        return "the teacher scored other tokens than the sample's"
    return None


def alternatives(entry: dict[str, Any], chosen: int, id_of: Callable[[str], int | None],
                 vocab: int) -> list[tuple[int, float]]:
    """The sampled token and the teacher's alternatives that name a student id (by id, or by
    text when a server gives text only and it names one token), each once; an alternative that
    cannot be placed is left out, so its mass stays in the tail bucket."""
    out = [(chosen, float(entry["logprob"]))]
    seen = {chosen}
    for alt in entry.get("top_logprobs") or []:
        token_id = alt.get("id")
        if token_id is None:
            token_id = id_of(str(alt.get("token", "")))
        logprob = float(alt.get("logprob", float("-inf")))
        if token_id is None or int(token_id) in seen or not 0 <= int(token_id) < vocab \
                or logprob != logprob or logprob == float("-inf"):
            continue
        seen.add(int(token_id))
        out.append((int(token_id), logprob))
    return out


def loss_tensors(samples: list[Sample], entries: list[list[dict[str, Any]]], pad_id: int,
                 id_of: Callable[[str], int | None], vocab: int, topk: bool) -> dict[str, Any]:
    """Padded tensors of the scored samples only (the caller passes those alone).

    ``input_ids``/``attention_mask`` ``(B, L)`` right-padded prompt + completion; ``positions``
    ``(B, C)`` the index of the logits that predict each completion token; ``tokens``,
    ``sample_logprobs``, ``teacher_logprobs``, ``mask`` ``(B, C)``; with ``topk``,
    ``teacher_ids``/``teacher_topk`` ``(B, C, K)`` (-1/-inf padding) and ``has_alternatives``.
    """
    import torch

    size = len(samples)
    length = max(len(s.prompt) + len(s.completion) for s in samples)
    width = max(len(s.completion) for s in samples)
    ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention = torch.zeros((size, length), dtype=torch.long)
    positions = torch.zeros((size, width), dtype=torch.long)
    tokens = torch.zeros((size, width), dtype=torch.long)
    sample_lp = torch.zeros((size, width))
    teacher_lp = torch.zeros((size, width))
    mask = torch.zeros((size, width), dtype=torch.bool)
    per_position: list[list[list[tuple[int, float]]]] = []
    for b, (sample, scored) in enumerate(zip(samples, entries, strict=True)):
        sequence = sample.prompt + sample.completion
        n, c = len(sequence), len(sample.completion)
        ids[b, :n] = torch.tensor(sequence)
        attention[b, :n] = 1
        positions[b, :c] = torch.arange(len(sample.prompt) - 1, n - 1)
        tokens[b, :c] = torch.tensor(sample.completion)
        sample_lp[b, :c] = torch.tensor(sample.logprobs)
        teacher_lp[b, :c] = torch.tensor([float(e.get("logprob") or 0.0) for e in scored])
        # A log-prob the server rounded to -inf (or left out) is no usable score: never trained.
        mask[b, :c] = torch.tensor([e.get("logprob") is not None and math.isfinite(e["logprob"])
                                    for e in scored])
        teacher_lp[b, :c] = torch.where(mask[b, :c], teacher_lp[b, :c], 0.0)
        if topk:
            per_position.append([alternatives(e, t, id_of, vocab)
                                 for e, t in zip(scored, sample.completion, strict=True)])
    out = {"input_ids": ids, "attention_mask": attention, "positions": positions,
           "tokens": tokens, "sample_logprobs": sample_lp, "teacher_logprobs": teacher_lp,
           "mask": mask}
    if topk:
        k = max((len(p) for row in per_position for p in row), default=1)
        teacher_ids = torch.full((size, width, k), -1, dtype=torch.long)
        teacher_topk = torch.full((size, width, k), float("-inf"))
        has = torch.zeros((size, width), dtype=torch.bool)
        for b, row in enumerate(per_position):
            for t, pairs in enumerate(row):
                teacher_ids[b, t, : len(pairs)] = torch.tensor([i for i, _ in pairs])
                teacher_topk[b, t, : len(pairs)] = torch.tensor([lp for _, lp in pairs])
                has[b, t] = len(pairs) > 1
        out.update(teacher_ids=teacher_ids, teacher_topk=teacher_topk, has_alternatives=has)
    return out


def estimate_loss(student_logits: Any, batch: dict[str, Any], kl_estimate: str,
                  max_ratio: float) -> tuple[Any, Any, Any]:
    """``(loss, estimate, per-sample estimate)`` of a micro-batch from the student's logits
    ``(B, L, V)``: the sampled-token estimate and, where chosen, the top-k form, each averaged over
    its own positions and combined by their token counts."""
    import torch

    from stillroom.train.on_policy_losses import LOGPROB_FLOOR, sampled_reverse_kl, topk_reverse_kl

    index = batch["positions"].unsqueeze(-1).expand(-1, -1, student_logits.shape[-1])
    logits = student_logits.gather(1, index)  # (B, C, V): the logits predicting each token
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    student_lp = logprobs.gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
    mask = batch["mask"]
    if kl_estimate == "sampled":
        topk_mask = torch.zeros_like(mask)
    elif kl_estimate == "topk":
        topk_mask = mask
    else:  # auto: the top-k form where the teacher gave alternatives
        topk_mask = mask & batch.get("has_alternatives", torch.zeros_like(mask))
    sampled_mask = mask & ~topk_mask
    parts, estimates, counts = [], [], []
    for part_mask, kind in ((sampled_mask, "sampled"), (topk_mask, "topk")):
        count = int(part_mask.sum())
        if not count:
            continue
        if kind == "sampled":
            loss, est = sampled_reverse_kl(student_lp, batch["sample_logprobs"],
                                           batch["teacher_logprobs"], part_mask,
                                           max_ratio=max_ratio)
        else:
            loss, est = topk_reverse_kl(logits, batch["teacher_ids"], batch["teacher_topk"],
                                        part_mask)
        parts.append(loss * count)
        estimates.append(est * count)
        counts.append(count)
    total = max(sum(counts), 1)
    if not parts:  # nothing scored: a zero still attached to the graph
        return student_logits.sum() * 0.0, torch.zeros(()), torch.zeros(len(mask))
    loss = torch.stack(parts).sum() / total
    estimate = torch.stack(estimates).sum() / total
    # Per sample, for the record: the sampled-token estimate k_t = log q - log p (detached).
    # The teacher's log-probs floored as the losses floor them, so the record matches the loss.
    teacher = batch["teacher_logprobs"].clamp(min=LOGPROB_FLOOR)
    k = (student_lp.detach() - teacher).masked_fill(~mask, 0.0)
    per_sample = k.sum(-1) / mask.sum(-1).clamp(min=1)
    return loss, estimate.detach(), per_sample


def trainer_class() -> type:
    """``OnPolicyTrainer``, defined on first use so that importing this module needs no torch."""
    global _Trainer
    if _Trainer is None:
        _Trainer = _define_trainer()
    return _Trainer


_Trainer: type | None = None


def _define_trainer() -> type:
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OnPolicyTrainer(Trainer):  # type: ignore[misc]
        """The loss of each micro-batch is the reverse-KL estimate on the student's own samples
        as the teacher scored them; ``step_hook(model, inputs) -> (batch, samples)`` gives them."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, on_policy: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.on_policy = on_policy
            self._parts: dict[str, list[float]] = {"kd_loss": [], "teacher_wait": []}

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            # The schedule is the order: micro-batch g is always rows[g*B:(g+1)*B].
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            batch, waited = self.on_policy.micro_batch(model, inputs, self.state.global_step + 1)
            device = self.args.device
            outputs = model(input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device))
            on_device = {key: value.to(device) for key, value in batch.items()}
            loss, estimate, per_sample = estimate_loss(outputs.logits, on_device,
                                                       self.on_policy.kl_estimate,
                                                       self.on_policy.max_ratio)
            self.on_policy.record(per_sample.tolist())
            self._parts["kd_loss"].append(float(estimate))
            self._parts["teacher_wait"].append(waited)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                if self._parts["kd_loss"]:
                    logs["kd_loss"] = sum(self._parts["kd_loss"]) / len(self._parts["kd_loss"])
                logs["teacher_wait"] = sum(self._parts["teacher_wait"])
                self._parts = {key: [] for key in self._parts}
            super().log(logs, start_time)

    return OnPolicyTrainer


__all__ = [
    "Prefetcher",
    "Ready",
    "Sample",
    "TeacherFailed",
    "accept_entries",
    "alternatives",
    "estimate_loss",
    "loss_tensors",
    "schedule",
    "trainer_class",
]
