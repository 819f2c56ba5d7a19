"""KD recipe on tiny random Llamas with the embedded SmolLM2 tokenizer (built per module, nothing
downloaded): stored-logprob alignment, the loss against independent computations, refusals,
on-policy batches, training, resume, config errors and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from stillroom.cli.main import app  # noqa: E402
from stillroom.errors import ConfigError, InputError  # noqa: E402
from stillroom.train.common import latest_checkpoint, render_prompt  # noqa: E402
from stillroom.train.kd import (  # noqa: E402
    TRAIN_FILE,
    build_trainer,
    parse_kd_config,
    train_kd,
)
from stillroom.train.kd_alignment import Pieces, align_logprobs  # noqa: E402
from stillroom.train.losses import kd_loss, shift_for_next_token  # noqa: E402

IGNORE = -100
K = 5


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def tiny_llama(folder: Path, tokenizer: Any, seed: int, sharpness: float = 1.0) -> Path:
    """A 2-layer random Llama; ``sharpness`` scales its final norm, so its logits, so that a
    teacher has peaked distributions (a fresh random model's are nearly uniform)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpness)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("student"), tokenizer, 0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("teacher"), tokenizer, 1, sharpness=40.0)


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """The teacher's weights with a tokenizer that has one more entry: a different vocabulary."""
    folder = tmp_path_factory.mktemp("other")
    tiny_llama(folder, tokenizer, 1, sharpness=40.0)
    other = transformers.AutoTokenizer.from_pretrained(folder)
    other.add_tokens(["<kd_extra_token>"])
    other.save_pretrained(folder)
    return folder


def base_rows() -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"Add {i} and {i}.",
             "completion": f"The sum of {i} and {i} is {2 * i}." + " Done." * (i % 3)}
            for i in range(16)]


def teacher_logprobs(teacher_dir: Path, tokenizer: Any, rows: list[dict[str, Any]],
                     k: int = K) -> list[dict[str, Any]]:
    """Rows with the `logprobs` a `complete` stage would store, from the teacher's real forward
    pass on prompt + completion: per completion token its logprob and the top-k, with ids."""
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    out = []
    for row in rows:
        prompt = render_prompt([{"role": "user", "content": row["prompt"]}], tokenizer)
        prompt_ids = tokenizer(prompt).input_ids
        ids = tokenizer(row["completion"], add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt_ids + ids])).logits[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        entries = []
        for j, token in enumerate(ids):
            dist = logprobs[len(prompt_ids) + j - 1]  # the distribution that chose token j
            top = dist.topk(k)
            entries.append({
                "token": tokenizer.decode([token]), "id": token, "logprob": float(dist[token]),
                "top_logprobs": [{"token": tokenizer.decode([int(i)]), "id": int(i),
                                  "logprob": float(v)} for v, i in zip(top.values, top.indices,
                                                                        strict=True)],
            })
        out.append({**row, "logprobs": entries})
    return out


def write_rows(folder: Path, rows: list[dict[str, Any]], name: str = "data.jsonl") -> None:
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def config_text(student: Path, **extra: Any) -> str:
    lines = {"mode": "offline", "student": str(student), "data": "data.jsonl",
             "output_dir": "run", "max_steps": 8, "learning_rate": 0.005, "batch_size": 4,
             "save_steps": 4, "max_length": 128, **extra}
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items() if v is not None)


def make_config(tmp_path: Path, student: Path, **extra: Any) -> Any:
    return parse_kd_config(config_text(student, **extra), str(tmp_path / "kd.yaml"), tmp_path)


@pytest.fixture(scope="module")
def offline_rows(teacher_dir: Path, tokenizer: Any) -> list[dict[str, Any]]:
    return teacher_logprobs(teacher_dir, tokenizer, base_rows())


# -- alignment -------------------------------------------------------------------------------------


def reference_offline_loss(student: Any, tokenizer: Any, rows: list[dict[str, Any]],
                           alpha: float, temperature: float) -> float:
    """(1 - alpha) * CE + alpha * top-k KL, one token at a time in float64, from the rows alone."""
    ce_terms, kd_terms = [], []
    for row in rows:
        prompt = render_prompt([{"role": "user", "content": row["prompt"]}], tokenizer)
        prompt_ids = tokenizer(prompt).input_ids
        completion = [e["id"] for e in row["logprobs"]] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = student(torch.tensor([prompt_ids + completion])).logits[0].double()
        for j, token in enumerate(completion):
            z = logits[len(prompt_ids) + j - 1]
            ce_terms.append(-float(torch.log_softmax(z, -1)[token]))
            if j == len(completion) - 1:
                continue  # EOS: no teacher data, CE only
            entry = row["logprobs"][j]
            stored = {entry["id"]: entry["logprob"]}
            for alt in entry["top_logprobs"]:
                stored.setdefault(alt["id"], alt["logprob"])
            ids = list(stored)
            p = [math.exp(stored[i]) for i in ids]
            p.append(max(0.0, 1 - sum(p)))
            p = [x ** (1 / temperature) for x in p]
            p = [x / sum(p) for x in p]
            q_all = torch.softmax(z / temperature, -1)
            q = [float(q_all[i]) for i in ids]
            q.append(1 - sum(q))
            kd_terms.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)
                                if pi > 0))
    ce, kd = sum(ce_terms) / len(ce_terms), sum(kd_terms) / len(kd_terms)
    return (1 - alpha) * ce + alpha * temperature**2 * kd  # Hinton's T**2 on the KD term


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_offline_loss_equals_an_independent_computation(
    tmp_path: Path, student_dir: Path, tokenizer: Any, offline_rows: list[dict[str, Any]],
    temperature: float,
) -> None:
    write_rows(tmp_path, offline_rows)
    trainer, facts = build_trainer(make_config(tmp_path, student_dir, alpha=0.3,
                                               temperature=temperature))
    assert facts["rows"] == 16
    # every completion token has teacher data; each row's EOS does not
    assert facts["teacher_tokens"] == facts["label_tokens"] - 16
    picked = [0, 2, 5]  # different lengths: padding appears
    batch = trainer.data_collator([trainer.train_dataset[i] for i in picked])
    assert batch["teacher_ids"].shape[-1] >= K
    loss = trainer.compute_loss(trainer.model, batch).detach()
    expected = reference_offline_loss(trainer.model, tokenizer, [offline_rows[i] for i in picked],
                                      alpha=0.3, temperature=temperature)
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_positions_labels_and_the_eos(
    tmp_path: Path, student_dir: Path, tokenizer: Any, offline_rows: list[dict[str, Any]]
) -> None:
    row = offline_rows[1]
    eos_entry = {"token": "", "id": tokenizer.eos_token_id, "logprob": -0.1,
                 "top_logprobs": [{"token": ".", "id": 30, "logprob": -2.5}]}
    rows = [row, {**row, "id": "with-eos", "logprobs": [*row["logprobs"], eos_entry]}]
    write_rows(tmp_path, rows)
    trainer, facts = build_trainer(make_config(tmp_path, student_dir))
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    prompt = render_prompt([{"role": "user", "content": row["prompt"]}], tokenizer)
    start = len(tokenizer(prompt).input_ids)
    ids = [e["id"] for e in row["logprobs"]]
    end = start + len(ids)
    for b in (0, 1):
        labels, teacher = batch["labels"][b].tolist(), batch["teacher_ids"][b]
        assert labels[:start] == [IGNORE] * start
        assert labels[start:end + 1] == [*ids, tokenizer.eos_token_id]
        # teacher data sits on the label positions: the generated token first, then its top-k
        assert teacher[start:end, 0].tolist() == ids
        assert (teacher[:start] == -1).all()
    assert (batch["teacher_ids"][0, end] == -1).all()  # EOS: no teacher data, CE only
    assert batch["teacher_ids"][1, end, :2].tolist() == [tokenizer.eos_token_id, 30]
    assert batch["teacher_logprobs"][1, end, 0] == pytest.approx(-0.1)
    assert facts["teacher_tokens"] == 2 * len(ids) + 1


def test_rows_without_ids_align_like_rows_with_ids(
    tokenizer: Any, offline_rows: list[dict[str, Any]]
) -> None:
    pieces = Pieces(tokenizer)
    for row in offline_rows[:4]:
        plain = [{"token": e["token"], "logprob": e["logprob"],
                  "top_logprobs": [{"token": a["token"], "logprob": a["logprob"]}
                                   for a in e["top_logprobs"]]} for e in row["logprobs"]]
        ids, topk, eos = align_logprobs(row["logprobs"], row["completion"], pieces)
        ids2, topk2, eos2 = align_logprobs(plain, row["completion"], pieces)
        assert ids2 == ids == [e["id"] for e in row["logprobs"]] and eos == eos2 == []
        for with_ids, without in zip(topk, topk2, strict=True):
            assert without[0] == with_ids[0]  # the generated token
            assert set(without) <= set(with_ids)  # an alternative whose text is ambiguous drops


def test_a_non_canonical_split_trains_on_the_teacher_tokens(tokenizer: Any) -> None:
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    assert len(encode("The answer is")) == 3  # " answer" is one token...
    ids = [*encode("The"), *encode(" ans"), *encode("wer"), *encode(" is")]  # ...sampled as two
    assert len(ids) == 4
    entries = [{"token": tokenizer.decode([i]), "id": i, "logprob": -1.0, "top_logprobs": []}
               for i in ids]
    got, topk, _ = align_logprobs(entries, "The answer is", Pieces(tokenizer))
    assert got == ids and [t[0][0] for t in topk] == ids


def test_one_unreported_final_token_gets_ce_only(
    tokenizer: Any, offline_rows: list[dict[str, Any]]
) -> None:
    row = offline_rows[3]
    pieces = Pieces(tokenizer)
    ids, topk, _ = align_logprobs(row["logprobs"][:-1], row["completion"], pieces)
    assert ids == [e["id"] for e in row["logprobs"]]
    assert topk[-1] == [] and all(topk[:-1])
    with pytest.raises(InputError, match="does not match its logprobs"):
        align_logprobs(row["logprobs"][:-2], row["completion"], pieces)


# -- refusals ---------------------------------------------------------------------------------------


def refused(tmp_path: Path, student_dir: Path, rows: list[dict[str, Any]], **extra: Any) -> str:
    write_rows(tmp_path, rows)
    with pytest.raises(InputError) as caught:
        build_trainer(make_config(tmp_path, student_dir, **extra))
    return str(caught.value)


def test_an_edited_completion_is_refused(
    tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]]
) -> None:
    rows = [dict(r) for r in offline_rows]
    rows[4]["completion"] = rows[4]["completion"].replace("sum", "total")
    message = refused(tmp_path, student_dir, rows)
    assert "row 4 (id 'r4')" in message and "token 1 ' sum'" in message
    assert "changed after generation" in message

    rows[4] = {**offline_rows[4], "completion": offline_rows[4]["completion"] + " And more."}
    assert "row 4" in refused(tmp_path, student_dir, rows)


def test_a_different_tokenizer_is_refused(
    tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]]
) -> None:
    rows = [dict(r) for r in offline_rows]
    # the same texts under other ids: what a teacher with another tokenizer would store
    rows[2]["logprobs"] = [{**e, "id": e["id"] + 1} for e in rows[2]["logprobs"]]
    message = refused(tmp_path, student_dir, rows)
    assert "row 2 (id 'r2')" in message and "token 0" in message
    assert "tokenizers differ" in message

    # without ids: texts the student's tokenizer cannot produce
    rows[2] = {**offline_rows[2], "logprobs": [{"token": "\u2581The", "logprob": -1.0}]
               + [{k: v for k, v in e.items() if k != "id"} for e in offline_rows[2]["logprobs"][1:]]}
    message = refused(tmp_path, student_dir, rows)
    assert "row 2" in message and "'\u2581The'" in message and "tokenizers differ" in message


def test_teacher_tokenizer_is_compared_up_front(
    tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]], other_tokenizer_dir: Path
) -> None:
    write_rows(tmp_path, offline_rows)
    with pytest.raises(ConfigError) as caught:
        build_trainer(make_config(tmp_path, student_dir, teacher_tokenizer=str(other_tokenizer_dir)))
    assert caught.value.key == "teacher_tokenizer" and "tokenizer differs" in str(caught.value)
    trainer, _ = build_trainer(make_config(tmp_path, student_dir, teacher_tokenizer=str(student_dir)))
    assert len(trainer.train_dataset) == 16


def test_missing_or_malformed_logprobs_are_refused(
    tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]]
) -> None:
    rows = [dict(r) for r in offline_rows]
    del rows[7]["logprobs"]
    assert "row 7 (id 'r7'): no `logprobs`" in refused(tmp_path, student_dir, rows)
    rows[7] = {**offline_rows[7], "logprobs": [offline_rows[7]["logprobs"]] * 2}
    assert "n > 1" in refused(tmp_path, student_dir, rows)


def test_online_teacher_with_another_tokenizer_is_refused(
    tmp_path: Path, student_dir: Path, other_tokenizer_dir: Path
) -> None:
    write_rows(tmp_path, base_rows())
    with pytest.raises(ConfigError) as caught:
        build_trainer(make_config(tmp_path, student_dir, mode="online",
                                  teacher=str(other_tokenizer_dir)))
    assert caught.value.key == "teacher"


# -- online ------------------------------------------------------------------------------------------


def test_online_loss_equals_kd_loss_on_independent_forward_passes(
    tmp_path: Path, student_dir: Path, teacher_dir: Path
) -> None:
    write_rows(tmp_path, base_rows())
    trainer, _ = build_trainer(make_config(tmp_path, student_dir, mode="online",
                                           teacher=str(teacher_dir), alpha=0.4, beta=0.5,
                                           temperature=2.0))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 5, 9)])
    assert "teacher_ids" not in batch
    loss = trainer.compute_loss(trainer.model, batch).detach()
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels, s, t = shift_for_next_token(batch["labels"], trainer.model(**inputs).logits,
                                            teacher(**inputs).logits)
        kd = kd_loss(s, t, labels, beta=0.5, temperature=2.0)
        ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1))
    # the KD term carries T**2 = 4 (Hinton et al. 2015), and is logged with it
    assert float(loss) == pytest.approx(float(0.6 * ce + 0.4 * 4 * kd), rel=1e-5)
    assert kd > 0 and trainer._parts["kd_loss"] == [pytest.approx(float(4 * kd), rel=1e-5)]


def test_on_policy_batches_run_and_have_gradients(
    tmp_path: Path, student_dir: Path, teacher_dir: Path, tokenizer: Any
) -> None:
    write_rows(tmp_path, base_rows())
    trainer, _ = build_trainer(make_config(tmp_path, student_dir, mode="online",
                                           teacher=str(teacher_dir), alpha=1.0,
                                           lambda_on_policy=1.0, max_new_tokens=6))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 7)])
    torch.manual_seed(0)
    generated = trainer.on_policy_batch(trainer.model, batch)
    width = int(batch["prompt_lengths"].max())
    assert generated["input_ids"].shape[1] <= width + 6
    labels, mask = generated["labels"], generated["attention_mask"]
    assert (labels[:, :width] == IGNORE).all()  # the prompts carry no labels
    for b, n in enumerate(batch["prompt_lengths"].tolist()):
        # the left-padded prompt is the row's own prompt
        assert generated["input_ids"][b, width - n:width].tolist() == batch["input_ids"][b, :n].tolist()
        assert mask[b, :width].tolist() == [0] * (width - n) + [1] * n
    assert ((labels != IGNORE) == (mask.bool() & (torch.arange(labels.shape[1]) >= width))).all()

    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert trainer._parts["on_policy"] == [1.0] and trainer._parts["ce_loss"] == []


# -- temperatures: T**2 on every KD path, sampling at its own temperature ------------------------------


def fixed_example() -> tuple[Any, Any, Any]:
    """Student and teacher logits (2 sequences x 5 positions x 6 tokens, float64) and labels with a
    prompt position and a padded one: a fixed tiny example, in the unshifted layout of one
    forward pass."""
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 5, 6, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(2, 5, 6, generator=g, dtype=torch.float64) * 3
    labels = torch.tensor([[IGNORE, IGNORE, 2, 4, 1], [IGNORE, 3, 0, 5, IGNORE]])
    return student, teacher, labels


def recipe_kd_gradient(path: str, beta: float, temperature: float) -> Any:
    """The gradient, w.r.t. the student's logits at the kept positions, of the KD term the trainer
    trains: ``KDTrainer.kd_term`` itself, given the fixed example's teacher online (a stand-in
    module returning the fixed logits) or offline (its T = 1 log-probs stored over the whole
    vocabulary, so the tail bucket is empty and the top-k loss is the dense forward KL)."""
    from types import SimpleNamespace

    from stillroom.train.kd_trainer import KDSettings, trainer_class

    student, teacher, labels = fixed_example()
    student.requires_grad_(True)
    settings = KDSettings(mode=path, beta=beta, temperature=temperature)
    inputs: dict[str, Any] = {}
    if path == "online":
        owner = SimpleNamespace(kd=settings, teacher=lambda **_: SimpleNamespace(logits=teacher))
    else:
        owner = SimpleNamespace(kd=settings, teacher=None)
        ids = torch.arange(6).expand(2, 5, 6)
        # stored top-k are indexed by the token they score: position i holds the distribution
        # that predicted token i, i.e. the teacher logits of position i - 1
        stored = torch.log_softmax(torch.cat([teacher[:, :1], teacher[:, :-1]], dim=1), dim=-1)
        inputs = {"teacher_ids": ids, "teacher_logprobs": stored}
    shifted_labels, shifted_student = shift_for_next_token(labels, student)
    term = trainer_class().kd_term(owner, shifted_student, {}, inputs, shifted_labels)
    term.backward()
    return student.grad[:, :-1][shifted_labels != IGNORE]


def hand_gradient(divergence: str, temperature: float) -> Any:
    """The gradient of ``T**2 * D(p_T, q_T)`` per kept token over N kept tokens, by hand:
    forward KL ``T * (q_T - p_T) / N``; reverse KL ``T * q_T * (log q_T - log p_T - KL(q_T||p_T))
    / N`` (d/dz of softmax(z / T) brings the 1 / T that T**2 turns into T)."""
    student, teacher, labels = fixed_example()
    keep = labels[:, 1:] != IGNORE
    q = torch.softmax(student[:, :-1][keep] / temperature, dim=-1)
    p = torch.softmax(teacher[:, :-1][keep] / temperature, dim=-1)
    n = int(keep.sum())
    if divergence == "forward":
        return temperature * (q - p) / n
    kl = (q * (q.log() - p.log())).sum(-1, keepdim=True)
    return temperature * q * (q.log() - p.log() - kl) / n


@pytest.mark.parametrize(("path", "beta", "divergence"),
                         [("online", 0.0, "forward"), ("offline", 0.0, "forward"),
                          ("online", 1.0, "reverse")])
def test_kd_gradients_carry_t_squared(path: str, beta: float, divergence: str) -> None:
    for temperature in (1.0, 2.0):
        got = recipe_kd_gradient(path, beta, temperature)
        assert torch.allclose(got, hand_gradient(divergence, temperature), rtol=1e-9, atol=1e-12)
    # the ratio of gradient norms T=2 : T=1 is what the formula predicts; without T**2 it was 4x less
    ratio = recipe_kd_gradient(path, beta, 2.0).norm() / recipe_kd_gradient(path, beta, 1.0).norm()
    predicted = hand_gradient(divergence, 2.0).norm() / hand_gradient(divergence, 1.0).norm()
    assert float(ratio) == pytest.approx(float(predicted), rel=1e-9)


def test_jsd_gradient_is_t_squared_times_the_divergence_gradient() -> None:
    """The generalized JSD (beta 0.5): the trained term's gradient is exactly T**2 times that of
    the JSD written out by hand, at T = 2."""
    student, teacher, labels = fixed_example()
    student.requires_grad_(True)
    keep = labels[:, 1:] != IGNORE
    log_q = torch.log_softmax(student[:, :-1][keep] / 2.0, dim=-1)
    log_p = torch.log_softmax(teacher[:, :-1][keep] / 2.0, dim=-1)
    m = 0.5 * log_p.exp() + 0.5 * log_q.exp()
    jsd = 0.5 * (log_p.exp() * (log_p - m.log())).sum(-1) \
        + 0.5 * (log_q.exp() * (log_q - m.log())).sum(-1)
    jsd.mean().backward()
    by_hand = student.grad[:, :-1][keep]
    assert torch.allclose(recipe_kd_gradient("online", 0.5, 2.0), 4 * by_hand, rtol=1e-9,
                          atol=1e-12)


def test_on_policy_samples_use_the_sampling_temperature(
    tmp_path: Path, student_dir: Path, teacher_dir: Path
) -> None:
    write_rows(tmp_path, base_rows())
    trainer, _ = build_trainer(make_config(tmp_path, student_dir, mode="online",
                                           teacher=str(teacher_dir), alpha=1.0, temperature=2.0,
                                           lambda_on_policy=1.0, sampling_temperature=0.7,
                                           max_new_tokens=3))
    seen = []
    generate = trainer.model.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["generation_config"])
        return generate(*args, **kwargs)

    trainer.model.generate = recording
    batch = trainer.data_collator([trainer.train_dataset[0]])
    trainer.on_policy_batch(trainer.model, batch)
    assert [(c.temperature, c.do_sample, c.top_k, c.top_p) for c in seen] == [(0.7, True, 0, 1.0)]
    assert trainer.kd.temperature == 2.0  # the loss keeps its own
    # the default is GKD's / TRL's 0.9
    assert make_config(tmp_path, student_dir, mode="online", teacher="embedded",
                       lambda_on_policy=0.5).sampling_temperature == 0.9


# -- training, resume, config, CLI -------------------------------------------------------------------


def test_training_lowers_the_kd_loss_saves_and_resumes(
    tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]]
) -> None:
    write_rows(tmp_path, offline_rows)
    final = train_kd(make_config(tmp_path, student_dir, max_steps=3, save_steps=3, alpha=0.8,
                                 learning_rate=0.01))
    first = json.loads((final / TRAIN_FILE).read_text())
    assert first["steps"] == 3 and first["resumed_from"] is None and first["recipe"] == "kd"
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint-3"

    final = train_kd(make_config(tmp_path, student_dir, max_steps=8, save_steps=3, alpha=0.8,
                                 learning_rate=0.01))
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["resumed_from"] == "checkpoint-3" and record["steps"] == 8
    assert record["mode"] == "offline" and record["on_policy_share"] == 0.0
    kd = [value for _, value in record["kd_losses"]]
    ce = [value for _, value in record["ce_losses"]]
    assert [s for s, _ in record["kd_losses"]] == list(range(1, 9))  # the whole curve
    assert len(ce) == len(kd) == len(record["losses"])
    assert sum(kd[-3:]) < sum(first_kd := [v for _, v in first["kd_losses"]][:3])
    assert first_kd[0] > kd[-1]
    for (_, total), k, c in zip(record["losses"], kd, ce, strict=True):
        assert total == pytest.approx(0.2 * c + 0.8 * k, rel=1e-3)

    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("mode: offline\ndata: d.jsonl\nbeta: 0.5\n", "beta", 3),
        ("mode: offline\ndata: d.jsonl\nlambda_on_policy: 0.5\n", "lambda_on_policy", 3),
        ("mode: online\ndata: d.jsonl\n", "teacher", None),
        ("mode: offline\nteacher: embedded\ndata: d.jsonl\n", "teacher", 2),
        ("mode: online\nteacher: embedded\nteacher_tokenizer: x\ndata: d\n", "teacher_tokenizer", 3),
        ("mode: online\nteacher: embedded\nalpha: 0\nlambda_on_policy: 1\ndata: d\n",
         "lambda_on_policy", 4),
        ("data: d.jsonl\n", "mode", None),
        ("mode: both\ndata: d.jsonl\n", "mode", 1),
        ("mode: offline\ndata: d.jsonl\nalpha: 1.5\n", "alpha", 3),
        ("mode: offline\ndata: d.jsonl\ntemperature: 0\n", "temperature", 3),
        ("mode: offline\ndata: d.jsonl\nlogprob_column: x\n", "logprob_column", 3),
        ("mode: online\nteacher: embedded\ndata: d\nsampling_temperature: 0.7\n",
         "sampling_temperature", 4),
        ("mode: offline\ndata: d\nsampling_temperature: 0.7\n", "sampling_temperature", 3),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, line: int | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kd_config(text, "kd.yaml")
    assert caught.value.key == key and caught.value.path == "kd.yaml"
    assert key in str(caught.value)
    if line is not None:
        assert caught.value.line == line and str(caught.value).startswith(f"kd.yaml:{line}: {key}")


def test_cli_smoke(tmp_path: Path, student_dir: Path, offline_rows: list[dict[str, Any]]) -> None:
    write_rows(tmp_path, offline_rows)
    (tmp_path / "kd.yaml").write_text(config_text(student_dir, max_steps=2, save_steps=10))
    result = CliRunner().invoke(app, ["train", "kd", str(tmp_path / "kd.yaml")])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 16 rows, offline KD (final loss" in result.output
    assert ", kd " in result.output and ", ce " in result.output
    assert (tmp_path / "run" / "final" / TRAIN_FILE).exists()

    (tmp_path / "bad.yaml").write_text("mode: offline\ndata: data.jsonl\nbeta: 0.3\n")
    bad = CliRunner().invoke(app, ["train", "kd", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "beta" in bad.output and "bad.yaml:3" in bad.output


# -- the real stored format ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_llamacpp_logprobs_train_the_embedded_tokenizer_student(
    tmp_path: Path, student_dir: Path
) -> None:
    from stillroom import api
    from stillroom.data.output import OutputFolder

    prompts = [{"id": "a", "prompt": "What is 2 + 3? Answer briefly."},
               {"id": "b", "prompt": "Name a color."},
               {"id": "c", "prompt": "Say hello in French."}]
    result = api.complete(prompts, tmp_path / "teacher", top_logprobs=5, max_tokens=16,
                          progress=False)
    assert result.counts["data"] == 3
    rows = OutputFolder(tmp_path / "teacher").read_rows("data")
    assert all(len(r["logprobs"][0]["top_logprobs"]) == 5 for r in rows)
    (tmp_path / "kd.yaml").write_text(config_text(
        student_dir, data="teacher", max_steps=2, batch_size=2, save_steps=10))
    final = train_kd(parse_kd_config((tmp_path / "kd.yaml").read_text(), "kd.yaml", tmp_path))
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["steps"] == 2 and record["rows"] == 3
    # every stored token found its student position (at most one unreported final token per row
    # and each EOS are without teacher data)
    assert record["teacher_tokens"] >= sum(len(r["logprobs"]) for r in rows) - 3
    assert record["label_tokens"] - record["teacher_tokens"] <= 2 * 3
    assert all(math.isfinite(v) for _, v in record["kd_losses"])
