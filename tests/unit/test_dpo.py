"""DPO on a tiny random Llama with the embedded SmolLM2 tokenizer (built per test, nothing downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")

from typer.testing import CliRunner  # noqa: E402

from stillroom.cli.main import app  # noqa: E402
from stillroom.errors import ConfigError, InputError  # noqa: E402
from stillroom.train.dpo import (  # noqa: E402
    TRAIN_FILE,
    build_trainer,
    latest_checkpoint,
    parse_dpo_config,
    train_dpo,
)

F = torch.nn.functional


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def tiny_llama(folder: Path, tokenizer: Any, seed: int) -> Path:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("student"), tokenizer, seed=0)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A second random model with the same tokenizer: a reference that differs from the policy."""
    return tiny_llama(tmp_path_factory.mktemp("reference"), tokenizer, seed=1)


def question(i: int) -> str:
    return f"Add {i} and {i}."


def chosen(i: int) -> str:
    return f"The sum is {2 * i}." + " Done." * (i % 3)  # different lengths: padding appears


def rejected(i: int) -> str:
    return "I cannot" + " say" * (i % 2) + "!"


def pair_rows(conversational: bool = False, n: int = 16) -> list[dict[str, Any]]:
    if not conversational:
        return [{"id": f"p{i}", "prompt": question(i), "chosen": chosen(i), "rejected": rejected(i)}
                for i in range(n)]
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": question(i)}],
             "chosen": [{"role": "assistant", "content": chosen(i)}],
             "rejected": [{"role": "assistant", "content": rejected(i)}]} for i in range(n)]


def write_rows(folder: Path, rows: list[dict[str, Any]], name: str = "pairs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config_text(student: Path, **extra: Any) -> str:
    lines = {"student": str(student), "data": "pairs.jsonl", "output_dir": "run",
             "max_steps": 8, "learning_rate": 0.002, "batch_size": 4, "save_steps": 4,
             "max_length": 128, **extra}
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items())


def make_config(tmp_path: Path, student: Path, conversational: bool = False, **extra: Any) -> Any:
    write_rows(tmp_path, pair_rows(conversational))
    return parse_dpo_config(config_text(student, **extra), str(tmp_path / "dpo.yaml"), tmp_path)


# -- an independent DPO computation ----------------------------------------------------------------


def rendered(tokenizer: Any, i: int) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question(i)}],
                                         tokenize=False, add_generation_prompt=True)


def answer_logprob(model: Any, prompt_ids: list[int], answer_ids: list[int]) -> Any:
    """log p(answer | prompt): the sum of the answer tokens' log-probabilities, one unpadded
    sequence."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, ids[0, 1:, None])[:, 0]
    return token_logprobs[len(prompt_ids) - 1:].sum()


def margins_of(policy: Any, reference: Any, tokenizer: Any, rows: list[int]) -> Any:
    """Per pair: (pi_c - ref_c) - (pi_r - ref_r), from our own tokenization."""
    eos = tokenizer.eos_token_id
    out = []
    for i in rows:
        prompt = tokenizer(rendered(tokenizer, i)).input_ids
        good = [*tokenizer(chosen(i)).input_ids, eos]
        bad = [*tokenizer(rejected(i)).input_ids, eos]
        out.append((answer_logprob(policy, prompt, good) - answer_logprob(reference, prompt, good))
                   - (answer_logprob(policy, prompt, bad) - answer_logprob(reference, prompt, bad)))
    return torch.stack(out)


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_loss_equals_an_independent_dpo_loss(
    tmp_path: Path, student_dir: Path, other_dir: Path, tokenizer: Any, conversational: bool
) -> None:
    beta = 0.5
    config = make_config(tmp_path, student_dir, conversational, reference=str(other_dir), beta=beta)
    trainer, facts = build_trainer(config)
    assert facts["format"] == ("conversational" if conversational else "prompt_chosen_rejected")
    assert facts["reference"] == str(other_dir) and facts["pairs_trained"] == 16
    picked = [0, 1, 2]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in picked])

    # The batch is [chosen..., rejected...]: prompt unmasked, answer + EOS in the completion mask.
    eos = tokenizer.eos_token_id
    for half, answer in ((0, chosen), (1, rejected)):
        for row, i in enumerate(picked):
            prompt = tokenizer(rendered(tokenizer, i)).input_ids
            completion = [*tokenizer(answer(i)).input_ids, eos]
            n = len(prompt) + len(completion)
            index = half * len(picked) + row
            ids = batch["input_ids"][index].tolist()
            assert ids[:n] == prompt + completion
            mask = batch["completion_mask"][index].tolist()
            assert mask == [0] * len(prompt) + [1] * len(completion) + [0] * (len(ids) - n)
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # some padding

    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    policy = transformers.AutoModelForCausalLM.from_pretrained(student_dir)
    reference = transformers.AutoModelForCausalLM.from_pretrained(other_dir)
    margins = margins_of(policy, reference, tokenizer, picked)
    expected = (-F.logsigmoid(beta * margins)).mean()
    assert abs(margins).min() > 0.05  # policy and reference really differ
    assert float(trl_loss) == pytest.approx(float(expected), abs=1e-4)
    mode = "train" if trainer.model.training else "eval"
    logged = trainer._metrics[mode]["rewards/margins"][-1]
    assert logged == pytest.approx(float(beta * margins.mean()), abs=1e-4)


def test_training_raises_the_margin_saves_and_resumes(
    tmp_path: Path, student_dir: Path, tokenizer: Any
) -> None:
    final = train_dpo(make_config(tmp_path, student_dir, max_steps=2, save_steps=2))
    first = json.loads((final / TRAIN_FILE).read_text())
    assert first["steps"] == 2 and first["resumed_from"] is None
    assert first["reference"] == "frozen copy of the starting student"
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint-2"

    final = train_dpo(make_config(tmp_path, student_dir, max_steps=4, save_steps=2))
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["recipe"] == "dpo" and record["resumed_from"] == "checkpoint-2"
    assert record["steps"] == 4 and record["rows"] == 16 and record["pairs_trained"] == 16
    margins = dict((int(step), value) for step, value in record["margins"])
    assert sorted(margins) == list(range(1, 5))  # the curve survives the resume
    assert margins[1] == pytest.approx(0.0, abs=1e-5)  # step 1: policy == reference
    # After the resume the reference is still the starting student, not checkpoint-2.
    assert margins[3] > 0.5 * margins[2] > 0
    assert record["final_margin"] > 0 and record["final_accuracy"] >= 0.75
    assert record["final_loss"] < record["first_loss"]

    # Independently: the saved model prefers chosen over rejected more than the start did.
    trained = transformers.AutoModelForCausalLM.from_pretrained(final)
    start = transformers.AutoModelForCausalLM.from_pretrained(student_dir)
    gained = margins_of(trained, start, tokenizer, list(range(16)))
    assert gained.mean() > 1.0 and (gained > 0).float().mean() >= 0.75


def test_lora_uses_the_adapter_free_model_as_reference(tmp_path: Path, student_dir: Path) -> None:
    config = make_config(tmp_path, student_dir, max_steps=2, learning_rate=0.01,
                         lora={"r": 4, "alpha": 8})
    final = train_dpo(config)
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["reference"] == "student with LoRA adapters disabled" and record["steps"] == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(final)  # merged: a plain model
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_max_prompt_length_keeps_the_end_of_the_prompt(
    tmp_path: Path, student_dir: Path, tokenizer: Any
) -> None:
    trainer, facts = build_trainer(make_config(tmp_path, student_dir, max_prompt_length=12))
    assert facts["prompts_clipped"] == 16
    example = trainer.train_dataset[3]
    # The last 12 tokens of the rendered prompt: the question's end and the assistant header.
    assert example["prompt_ids"] == tokenizer(rendered(tokenizer, 3)).input_ids[-12:]
    assert tokenizer.decode(example["prompt_ids"]).endswith("3.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(example["chosen_ids"]) == chosen(3) + "<|im_end|>"


# -- errors ----------------------------------------------------------------------------------------


GOOD = {"id": "a", "prompt": "p", "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "b", "prompt": "p", "chosen": "yes"}, "row 1 (id 'b'): `rejected` is missing"),
        ({"id": "b", "prompt": "p", "chosen": "same ", "rejected": "same"}, "same text"),
        ({"id": "b", "prompt": "p", "chosen": "yes", "rejected": "  "}, "`rejected` is empty"),
        ({"id": "b", "prompt": "", "chosen": "yes", "rejected": "no"}, "`prompt` is empty"),
        ({"id": "b", "prompt": [{"role": "user", "content": "p"}], "chosen": "y", "rejected": "n"},
         "`prompt` must be text"),
        ({"prompt": "p", "chosen": 3, "rejected": "no"}, "row 1: `chosen` must be text"),
        ({"id": "b", "messages": [{"role": "user", "content": "p"}]}, "`prompt` is missing"),
    ],
)
def test_bad_rows_are_named_before_any_model_loads(
    tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    write_rows(tmp_path, [GOOD, bad])
    # The student does not exist: the data error must come first.
    config = parse_dpo_config(config_text(tmp_path / "missing-model"), "dpo.yaml", tmp_path)
    with pytest.raises(InputError) as caught:
        build_trainer(config)
    assert message in str(caught.value)
    assert str(tmp_path / "pairs.jsonl") in str(caught.value)


@pytest.mark.parametrize(
    ("prompt", "answer", "message"),
    [
        ([{"role": "user", "content": "p"}, {"role": "assistant", "content": "x"}],
         [{"role": "assistant", "content": "y"}], "ends with an assistant turn"),
        ([{"role": "user", "content": "p"}], [{"role": "user", "content": "y"}],
         "`chosen` must be a list of one {role: assistant, content} message"),
        ([{"role": "user", "content": "p"}], [{"role": "assistant", "content": ""}],
         "`chosen` is empty"),
    ],
)
def test_bad_conversational_rows(
    tmp_path: Path, prompt: Any, answer: Any, message: str
) -> None:
    rows = [{"id": "c", "prompt": prompt, "chosen": answer,
             "rejected": [{"role": "assistant", "content": "n"}]}]
    write_rows(tmp_path, rows)
    config = parse_dpo_config(config_text(tmp_path / "missing-model"), "dpo.yaml", tmp_path)
    with pytest.raises(InputError, match="row 0 \\(id 'c'\\)") as caught:
        build_trainer(config)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("data: d.jsonl\nbeta: 0\n", "beta", 2),
        ("data: d.jsonl\nloss_type: dpo\n", "loss_type", 2),
        ("data: d.jsonl\nformat: messages\n", "format", 2),
        ("data: d.jsonl\nbeta: 0.1\nrefrence: x\n", "refrence", 3),
        ("data: d.jsonl\nlora: {r: 0}\n", "lora.r", 2),
        ("output_dir: x\n", "data", None),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, line: int | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dpo_config(text, "dpo.yaml")
    assert caught.value.key == key and caught.value.path == "dpo.yaml"
    if line is not None:
        assert caught.value.line == line
    assert key in str(caught.value)


def test_config_cross_checks_and_defaults() -> None:
    with pytest.raises(ConfigError, match="max_prompt_length"):
        parse_dpo_config("data: d\nmax_length: 64\nmax_prompt_length: 64\n", "dpo.yaml")
    with pytest.raises(ConfigError, match="reference"):
        parse_dpo_config("data: d\nreference: ' '\n", "dpo.yaml")
    config = parse_dpo_config("data: d\n", "dpo.yaml")
    assert (config.beta, config.loss_type, config.reference, config.format) == \
        (0.1, "sigmoid", None, "auto")


def test_a_reference_with_another_tokenizer_is_refused(
    tmp_path: Path, student_dir: Path, tokenizer: Any
) -> None:
    import copy

    changed = copy.deepcopy(tokenizer)
    changed.add_tokens(["<extra-token>"])
    other = tiny_llama(tmp_path / "other-tokenizer", changed, seed=2)
    config = make_config(tmp_path, student_dir, reference=str(other))
    with pytest.raises(ConfigError, match="different tokenizer") as caught:
        build_trainer(config)
    assert caught.value.key == "reference"


def test_cli_smoke(tmp_path: Path, student_dir: Path) -> None:
    write_rows(tmp_path, pair_rows())
    (tmp_path / "dpo.yaml").write_text(config_text(student_dir, max_steps=2, save_steps=10))
    result = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "dpo.yaml")])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 16 pairs" in result.output and "reward margin" in result.output
    assert (tmp_path / "run" / "final" / TRAIN_FILE).exists()

    (tmp_path / "bad.yaml").write_text("data: pairs.jsonl\nbeta: -1\n")
    bad = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "beta" in bad.output
    write_rows(tmp_path, [GOOD, {**GOOD, "id": "z", "rejected": "yes"}])
    bad = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "dpo.yaml")])
    assert bad.exit_code == 2 and "id 'z'" in bad.output


# -- soft labels (Constitutional AI's principle_preference): cDPO -----------------------------------


SOFT = [1.0, 0.7, 0.5]


def soft_rows(n: int = 16) -> list[dict[str, Any]]:
    """Pairs as principle_preference writes them: ``preference.p_first`` is the probability that
    the *first* candidate is better; the chosen one is the first when p_first > 0.5. Every other
    row has its candidates the other way round (p_first < 0.5), so p(chosen) = 1 - p_first; and
    ``score_chosen`` is a decoy that must not be read."""
    rows = []
    for i, row in enumerate(pair_rows(n=n)):
        p = SOFT[i % 3]
        p_first = p if i % 2 == 0 or p == 0.5 else 1 - p
        rows.append({**row, "score_chosen": 9.0, "score_rejected": 2.0,
                     "preference": {"principle_id": "p1", "p_first": p_first, "orders": []}})
    return rows


def soft_config(tmp_path: Path, student: Path, rows: list[dict[str, Any]], **extra: Any) -> Any:
    write_rows(tmp_path, rows)
    return parse_dpo_config(config_text(student, **extra), str(tmp_path / "dpo.yaml"), tmp_path)


def test_cdpo_loss_is_the_formula() -> None:
    from stillroom.train.dpo_soft import cdpo_loss

    h = torch.tensor([-1.5, 0.0, 0.4, 2.0], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([1.0, 0.5, 0.7, 0.2], dtype=torch.float64)
    beta = 0.3
    got = cdpo_loss(h, p, beta)
    for k in range(4):  # by hand, in float64
        s = 1 / (1 + math.exp(-beta * float(h[k].detach())))
        by_hand = -float(p[k]) * math.log(s) - (1 - float(p[k])) * math.log(1 - s)
        assert float(got[k].detach()) == pytest.approx(by_hand, rel=1e-12)
    got.sum().backward()
    # d/dh = beta * (sigmoid(beta h) - p): zero at p = 0.5, h = 0
    expected = beta * (torch.sigmoid(beta * h.detach()) - p)
    assert torch.allclose(h.grad, expected, rtol=1e-12, atol=0)
    assert h.grad[1] == 0


def test_soft_label_loss_equals_the_formula_by_hand(
    tmp_path: Path, student_dir: Path, other_dir: Path, tokenizer: Any
) -> None:
    from trl import DPOTrainer

    beta = 0.5
    config = soft_config(tmp_path, student_dir, soft_rows(), reference=str(other_dir), beta=beta)
    trainer, facts = build_trainer(config)
    assert facts["soft_labelled_pairs"] == 16 and facts["loss"] == "cdpo"
    policy = transformers.AutoModelForCausalLM.from_pretrained(student_dir)
    reference = transformers.AutoModelForCausalLM.from_pretrained(other_dir)
    margins = margins_of(policy, reference, tokenizer, [0, 1, 2])
    assert abs(margins).min() > 0.05  # policy and reference really differ
    for i in range(3):  # p = 1, 0.7 (from p_first 0.3), 0.5
        p = SOFT[i % 3]
        batch = trainer.data_collator([trainer.train_dataset[i]])
        assert batch["p_chosen"].tolist() == [pytest.approx(p)]
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
        h = margins[i]
        expected = -p * F.logsigmoid(beta * h) - (1 - p) * F.logsigmoid(-beta * h)
        assert float(loss) == pytest.approx(float(expected), abs=1e-4)
        if p == 1.0:  # plain DPO: TRL's own sigmoid loss on the same batch
            without = {k: v for k, v in batch.items() if k != "p_chosen"}
            with torch.no_grad():
                trl_loss = DPOTrainer.compute_loss(trainer, trainer.model, without)
            assert float(loss) == pytest.approx(float(trl_loss), abs=1e-5)
    # a batch of several pairs is their mean, each with its own p
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    p = torch.tensor(SOFT)
    expected = (-p * F.logsigmoid(beta * margins[:3])
                - (1 - p) * F.logsigmoid(-beta * margins[:3])).mean()
    assert float(loss) == pytest.approx(float(expected), abs=1e-4)
    logged = trainer._metrics["train" if trainer.model.training else "eval"]["rewards/margins"]
    assert logged[-1] == pytest.approx(float(beta * margins[:3].mean()), abs=1e-4)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_p_one_half_with_equal_log_ratios_has_zero_gradient(
    tmp_path: Path, student_dir: Path, lora: Any
) -> None:
    # the default reference is a copy of the student, or with LoRA the student without its
    # (zero-initialised) adapters: every margin is 0 before training
    trainer, facts = build_trainer(soft_config(tmp_path, student_dir, soft_rows(), lora=lora))
    assert facts["reference"].startswith("student with LoRA" if lora else "frozen copy")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (2, 5)])
    assert batch["p_chosen"].tolist() == [0.5, 0.5]
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-7
    trainer.model.zero_grad()
    batch["p_chosen"] = torch.tensor([1.0, 1.0])  # hard labels: DPO pushes
    trainer.compute_loss(trainer.model, batch).backward()
    assert max(float(p.grad.abs().max()) for p in trainer.model.parameters()
               if p.grad is not None) > 1e-4


def test_soft_labels_are_used_by_default_and_not_when_switched_off(
    tmp_path: Path, student_dir: Path
) -> None:
    from trl import DPOTrainer

    trainer, facts = build_trainer(soft_config(tmp_path, student_dir, soft_rows()))
    assert type(trainer).__name__ == "SoftLabelDPOTrainer"
    assert trainer.train_dataset["p_chosen"] == pytest.approx([SOFT[i % 3] for i in range(16)])
    # the Trainer's own data loader keeps the column (it drops columns it does not know)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "p_chosen" in batch and batch["p_chosen"].shape == (4,)

    trainer, facts = build_trainer(soft_config(tmp_path, student_dir, soft_rows(),
                                               soft_labels=False))
    assert type(trainer) is DPOTrainer and facts["soft_labelled_pairs"] == 0
    assert facts["loss"] == "sigmoid" and "p_chosen" not in trainer.train_dataset.column_names


def test_ratings_only_pairs_train_as_before(tmp_path: Path, student_dir: Path) -> None:
    from trl import DPOTrainer

    rows = [{**row, "score_chosen": 8.5, "score_rejected": 3.0} for row in pair_rows()]
    trainer, facts = build_trainer(soft_config(tmp_path, student_dir, rows))
    assert type(trainer) is DPOTrainer and facts["soft_labelled_pairs"] == 0
    assert "p_chosen" not in trainer.train_dataset.column_names
    # and naming the ratings as the soft label is refused
    with pytest.raises(ConfigError) as caught:
        parse_dpo_config("data: d\nsoft_label_column: score_chosen\n", "dpo.yaml")
    assert caught.value.key == "soft_label_column" and "ratings" in str(caught.value)


def test_soft_label_problems_are_named(tmp_path: Path, student_dir: Path) -> None:
    rows = soft_rows()
    rows[3]["preference"]["p_first"] = 1.5
    with pytest.raises(InputError, match=r"row 3 \(id 'p3'\).*p_first.*\[0, 1\]"):
        build_trainer(soft_config(tmp_path, student_dir, rows))
    with pytest.raises(ConfigError, match="soft_labels: false") as caught:
        build_trainer(soft_config(tmp_path, student_dir, soft_rows(), loss_type="ipo"))
    assert caught.value.key == "loss_type"
    # a column named in the config holds p(chosen) itself
    rows = [{**row, "p": 0.8} for row in pair_rows()]
    trainer, facts = build_trainer(soft_config(tmp_path, student_dir, rows, soft_label_column="p"))
    assert facts["soft_labelled_pairs"] == 16
    assert trainer.train_dataset["p_chosen"] == pytest.approx([0.8] * 16)
    # a number type numpy gives is a number too
    import numpy as np

    from stillroom.train.dpo_soft import soft_label

    assert soft_label({"p": np.float32(0.75)}, "p") == pytest.approx(0.75)
    # a column no pair has is a typo, not "all hard labels"
    with pytest.raises(InputError, match="soft_label_column: q.*no pair has"):
        build_trainer(soft_config(tmp_path, student_dir, rows, soft_label_column="q"))
    # ratings in any spelling, and a column that would not be read, are refused
    with pytest.raises(ConfigError, match="holds ratings"):
        build_trainer(soft_config(tmp_path, student_dir, rows, soft_label_column="Score_Chosen"))
    with pytest.raises(ConfigError, match="would not be read"):
        build_trainer(soft_config(tmp_path, student_dir, rows, soft_label_column="p",
                                  soft_labels=False))


def test_cli_trains_soft_labels_and_switches_them_off(tmp_path: Path, student_dir: Path) -> None:
    write_rows(tmp_path, soft_rows())
    (tmp_path / "dpo.yaml").write_text(config_text(student_dir, max_steps=1, save_steps=10,
                                                   batch_size=2))
    result = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "dpo.yaml")])
    assert result.exit_code == 0, result.output
    assert "trained 1 steps on 16 pairs, 16 with soft labels (cDPO)" in result.output
    record = json.loads((tmp_path / "run" / "final" / TRAIN_FILE).read_text())
    assert record["loss"] == "cdpo" and len(record["margins"]) == 1
    assert record["config"]["soft_labels"] is True

    (tmp_path / "off.yaml").write_text(config_text(student_dir, max_steps=1, save_steps=10,
                                                   batch_size=2, output_dir="off"))
    result = CliRunner().invoke(app, ["train", "dpo", str(tmp_path / "off.yaml"),
                                      "--no-soft-labels"])
    assert result.exit_code == 0, result.output
    assert "trained 1 steps on 16 pairs (" in result.output
    record = json.loads((tmp_path / "off" / "final" / TRAIN_FILE).read_text())
    assert record["loss"] == "sigmoid" and record["soft_labelled_pairs"] == 0
