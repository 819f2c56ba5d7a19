"""The KD training step (:mod:`stillroom.train.kd` builds it from the config): training examples,
padded batches, and the transformers ``Trainer`` whose loss is ``(1 - alpha) * CE + alpha * KD``
(KD = ``T**2`` times the divergence at temperature T, :func:`scaled_kd`).

* :class:`Example`: one sequence, its labels (-100 on the prompt) and, offline, the teacher's
  top-k per position; :class:`KDCollator` pads a batch of them into tensors.
* :class:`KDSettings`: the recipe's loss and on-policy settings, as the trainer reads them.
* :func:`trainer_class`: ``KDTrainer``, defined on first use (torch is imported then, not when
  this module is): its loss runs the online teacher or reads the stored top-k, and it draws
  on-policy (GKD) batches the student completes itself.
* :func:`scaled_kd`: the KD term as trained, the divergence at temperature T times ``T**2``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from stillroom.train.kd_alignment import TopK

IGNORE_INDEX = -100  # the same value as stillroom.train.losses.IGNORE_INDEX (kept torch-free here)


# -- examples and batches --------------------------------------------------------------------------


@dataclass
class Example:
    """One training sequence: ids, labels (-100 on the prompt) and per-position teacher top-k."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    teacher: list[TopK] = field(default_factory=list)  # offline: aligned with labels


class KDCollator:
    """Right-padded tensors: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding),
    offline ``teacher_ids`` / ``teacher_logprobs`` ``(B, T, K)`` (-1 / -inf where there is no
    data), and ``prompt_lengths`` ``(B,)`` for on-policy generation."""

    def __init__(self, pad_id: int, offline: bool):
        self.pad_id = pad_id
        self.offline = offline

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        import torch

        size, length = len(examples), max(len(e.input_ids) for e in examples)
        ids = torch.full((size, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((size, length), dtype=torch.long)
        labels = torch.full((size, length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            ids[row, :n] = torch.tensor(example.input_ids)
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(example.labels)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "prompt_lengths": torch.tensor([e.prompt_length for e in examples])}
        if self.offline:
            k = max((len(t) for e in examples for t in e.teacher), default=0) or 1
            teacher_ids = torch.full((size, length, k), -1, dtype=torch.long)
            teacher_logprobs = torch.full((size, length, k), float("-inf"))
            for row, example in enumerate(examples):
                for position, topk in enumerate(example.teacher):
                    if topk:
                        teacher_ids[row, position, : len(topk)] = torch.tensor([i for i, _ in topk])
                        teacher_logprobs[row, position, : len(topk)] = torch.tensor(
                            [lp for _, lp in topk], dtype=torch.float32)
            batch["teacher_ids"], batch["teacher_logprobs"] = teacher_ids, teacher_logprobs
        return batch


# -- the trainer -------------------------------------------------------------------------------------


@dataclass
class KDSettings:
    mode: str
    alpha: float = 0.5
    beta: float = 0.0
    temperature: float = 1.0  # the loss's: both distributions are softened by it
    lambda_on_policy: float = 0.0
    max_new_tokens: int = 64
    seed: int = 0
    sampling_temperature: float = 0.9  # the on-policy samples' (GKD/TRL sample at 0.9)


def scaled_kd(divergence: Any, temperature: float) -> Any:
    """The KD term as the recipe trains it: ``T**2`` times the divergence at temperature T.

    Softening both sides by T scales the divergence's gradient with respect to the student's
    logits by about ``1/T**2`` (exactly ``(q_T - p_T) / T`` for the forward KL, and ``q_T - p_T``
    itself shrinks like ``1/T`` as T grows). Hinton et al. (2015) multiply by ``T**2`` so that
    changing T does not change how much the KD term weighs against the CE it is mixed with; every
    KD path here (forward KL, reverse KL, the generalized JSD, offline top-k) gets the factor.
    At T = 1 it is 1, so GKD's setting (loss at T = 1) is unchanged.
    """
    return divergence * temperature**2


def trainer_class() -> type:
    """``KDTrainer``, defined on first use so that importing this module does not import torch."""
    global _KDTrainer
    if _KDTrainer is None:
        _KDTrainer = _define_trainer()
    return _KDTrainer


_KDTrainer: type | None = None


def _define_trainer() -> type:  # noqa: C901 - one class, its methods are small
    import torch
    import torch.nn.functional as F
    from transformers import GenerationConfig, Trainer

    from stillroom.train.losses import kd_loss, shift_for_next_token, topk_kd_loss

    class KDTrainer(Trainer):  # type: ignore[misc]
        """A transformers ``Trainer`` whose loss is ``(1 - alpha) * CE + alpha * T**2 * KD_T``."""

        # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation.
        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, kd: KDSettings, teacher: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.kd = kd
            self.teacher = teacher
            if teacher is not None:
                teacher.to(self.args.device).eval().requires_grad_(False)
            self._parts: dict[str, list[float]] = {"kd_loss": [], "ce_loss": [], "on_policy": []}
            self._micro = (-1, 0)  # (global step, micro-batches seen in it)

        # -- the loss --

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            on_policy = self._draw_on_policy()
            if on_policy:
                inputs = self.on_policy_batch(model, inputs)
            forward: dict[str, Any] = {k: inputs[k] for k in
                                       ("input_ids", "attention_mask", "position_ids") if k in inputs}
            outputs = model(**forward)
            labels, student = shift_for_next_token(inputs["labels"], outputs.logits)
            kd = self.kd_term(student, forward, inputs, labels)
            if on_policy:
                loss = self.kd.alpha * kd
            else:
                ce = F.cross_entropy(student.float().reshape(-1, student.shape[-1]),
                                     labels.reshape(-1), ignore_index=IGNORE_INDEX)
                loss = (1 - self.kd.alpha) * ce + self.kd.alpha * kd
                self._parts["ce_loss"].append(float(ce.detach()))
            self._parts["kd_loss"].append(float(kd.detach()))
            self._parts["on_policy"].append(float(on_policy))
            return (loss, outputs) if return_outputs else loss

        def kd_term(self, student: Any, forward: dict[str, Any], inputs: dict[str, Any],
                    labels: Any) -> Any:
            if self.teacher is not None:
                with torch.no_grad():
                    teacher = self.teacher(**forward).logits[:, :-1]
                vocab = min(student.shape[-1], teacher.shape[-1])  # padded embedding rows differ
                divergence = kd_loss(student[..., :vocab], teacher[..., :vocab], labels,
                                     beta=self.kd.beta, temperature=self.kd.temperature)
                return scaled_kd(divergence, self.kd.temperature)
            teacher_ids = inputs["teacher_ids"][:, 1:]
            # Only positions with teacher data count for KD (the EOS usually has none).
            scored = (teacher_ids >= 0).any(dim=-1)
            kd_labels = torch.where(scored, labels, IGNORE_INDEX)
            divergence = topk_kd_loss(student, teacher_ids, inputs["teacher_logprobs"][:, 1:],
                                      kd_labels, temperature=self.kd.temperature)
            return scaled_kd(divergence, self.kd.temperature)

        # -- on-policy batches (GKD) --

        def _draw_on_policy(self) -> bool:
            if self.kd.lambda_on_policy == 0 or self.teacher is None:
                return False
            step, seen = self._micro
            seen = seen + 1 if step == self.state.global_step else 0
            self._micro = (self.state.global_step, seen)
            draw = random.Random(f"{self.kd.seed}:{self.state.global_step}:{seen}").random()
            return draw < self.kd.lambda_on_policy

        def on_policy_batch(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
            """The batch's prompts (left-padded) completed by the student's own samples."""
            tokenizer: Any = self.processing_class
            prompts, prompt_mask = _left_padded_prompts(inputs, tokenizer.pad_token_id)
            student = self.accelerator.unwrap_model(model)
            eos = tokenizer.eos_token_id
            settings = GenerationConfig(
                do_sample=True, temperature=self.kd.sampling_temperature, top_k=0, top_p=1.0,
                max_new_tokens=self.kd.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
            was_training = student.training
            student.eval()
            with torch.no_grad():
                sequences = student.generate(input_ids=prompts, attention_mask=prompt_mask,
                                             generation_config=settings)
            student.train(was_training)
            generated = sequences[:, prompts.shape[1]:]
            # Keep each sample up to and including its first EOS; what follows is padding.
            is_eos = generated == eos
            after_eos = (is_eos.cumsum(dim=-1) - is_eos.long()) > 0
            completion_mask = (~after_eos).long()
            mask = torch.cat([prompt_mask, completion_mask], dim=-1)
            labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX),
                                torch.where(after_eos, IGNORE_INDEX, generated)], dim=-1)
            # Left padding: positions count real tokens only, for student and teacher alike.
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            return {"input_ids": sequences, "attention_mask": mask, "labels": labels,
                    "position_ids": positions}

        # -- logging the two parts --

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                for key, values in self._parts.items():
                    if values:
                        logs[key] = sum(values) / len(values)
                self._parts = {key: [] for key in self._parts}
            super().log(logs, start_time)

    return KDTrainer


def _left_padded_prompts(inputs: dict[str, Any], pad_id: int) -> tuple[Any, Any]:
    import torch

    lengths = inputs["prompt_lengths"].tolist()
    width = max(lengths)
    ids = inputs["input_ids"]
    prompts = torch.full((len(lengths), width), pad_id, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros_like(prompts)
    for row, n in enumerate(lengths):
        prompts[row, width - n:] = ids[row, :n]
        mask[row, width - n:] = 1
    return prompts, mask


__all__ = [
    "IGNORE_INDEX",
    "Example",
    "KDCollator",
    "KDSettings",
    "scaled_kd",
    "trainer_class",
]
