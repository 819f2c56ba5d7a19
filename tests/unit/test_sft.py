"""SFT on a tiny random Llama with the embedded SmolLM2 tokenizer (built per test, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")

from typer.testing import CliRunner  # noqa: E402

from stillroom.cli.main import app  # noqa: E402
from stillroom.errors import ConfigError  # noqa: E402
from stillroom.train.sft import (  # noqa: E402
    TRAIN_FILE,
    build_trainer,
    latest_checkpoint,
    parse_sft_config,
    train_sft,
)

IGNORE = -100


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    folder = tmp_path_factory.mktemp("student")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(folder: Path) -> Path:
    data = folder / "data.jsonl"
    rows = [{"id": str(i), "prompt": f"Add {i} and {i}.",
             "completion": f"The sum of {i} and {i} is {2 * i}." + " Done." * (i % 3)}
            for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data


def config_text(student: Path, **extra: Any) -> str:
    lines = {"student": str(student), "data": "data.jsonl", "output_dir": "run",
             "max_steps": 8, "learning_rate": 0.005, "batch_size": 4, "save_steps": 4,
             "max_length": 128, **extra}
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items())


def make_config(tmp_path: Path, student: Path, **extra: Any) -> Any:
    write_data(tmp_path)
    return parse_sft_config(config_text(student, **extra), str(tmp_path / "sft.yaml"), tmp_path)


def test_only_completion_and_eos_carry_labels(
    tmp_path: Path, student_dir: Path, tokenizer: Any
) -> None:
    trainer, facts = build_trainer(make_config(tmp_path, student_dir))
    assert facts == {"rows": 16, "format": "prompt_completion"}
    examples = [trainer.train_dataset[i] for i in (0, 2)]  # different lengths: padding appears
    batch = trainer.data_collator(examples)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # SmolLM2: the case this test is about
    for row, i in enumerate((0, 2)):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Add {i} and {i}."}], tokenize=False,
            add_generation_prompt=True)
        assert prompt.endswith("<|im_start|>assistant\n")
        completion = f"The sum of {i} and {i} is {2 * i}." + " Done." * (i % 3)
        prompt_ids = tokenizer(prompt).input_ids
        completion_ids = [*tokenizer(completion).input_ids, eos]
        start, n = len(prompt_ids), len(prompt_ids) + len(completion_ids)
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        assert ids[:n] == prompt_ids + completion_ids
        assert labels[:start] == [IGNORE] * start  # prompt
        assert labels[start:n] == completion_ids  # completion, ending in the trained EOS
        assert labels[n:] == [IGNORE] * (len(ids) - n)  # padding (also the EOS id)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (len(ids) - n)
    assert len(examples[0]["input_ids"]) < batch["input_ids"].shape[1]  # row 0 was padded


def test_training_lowers_the_loss_saves_and_resumes(tmp_path: Path, student_dir: Path) -> None:
    config = make_config(tmp_path, student_dir, max_steps=4)
    final = train_sft(config)
    first = json.loads((final / TRAIN_FILE).read_text())
    assert first["steps"] == 4 and first["rows"] == 16 and first["resumed_from"] is None
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint-4"

    config = make_config(tmp_path, student_dir, max_steps=8)
    final = train_sft(config)
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["resumed_from"] == "checkpoint-4"
    assert record["steps"] == 8
    assert record["final_loss"] < record["first_loss"]
    assert record["config"]["max_steps"] == 8 and record["train_seconds"] > 0

    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    tok = transformers.AutoTokenizer.from_pretrained(final)
    ids = tok("Add 3 and 3.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == len(tok)


def test_messages_train_the_last_assistant_turn(tmp_path: Path, student_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": f"Say {i}"},
                          {"role": "assistant", "content": f"{i}"}]} for i in range(4)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_sft_config(config_text(student_dir, data="chat.jsonl", train_turns="last"),
                              "x.yaml", tmp_path)
    trainer, facts = build_trainer(config)
    assert facts["format"] == "messages"
    example = trainer.train_dataset[1]
    start = [label != IGNORE for label in example["labels"]].index(True)
    tok = trainer.processing_class
    assert tok.decode(example["input_ids"][:start]).count("Hello.") == 1  # context, not trained
    assert tok.decode(example["input_ids"][start:]) == "1<|im_end|>"


def answer_labels(trainer: Any, index: int) -> tuple[str, str]:
    """(the text before the first trained token, the trained tokens) of one prepared example."""
    example = trainer.train_dataset[index]
    trained = [label != IGNORE for label in example["labels"]]
    start = trained.index(True)
    assert all(trained[start:])  # one trained span, to the end
    tok = trainer.processing_class
    return tok.decode(example["input_ids"][:start]), tok.decode(example["input_ids"][start:])


def test_a_messages_row_answered_by_complete_trains_on_its_answer(
    tmp_path: Path, student_dir: Path
) -> None:
    from stillroom import Pipeline
    from stillroom.stages import Complete
    from tests import fakes
    from tests.fakes import ScriptedBackend, ScriptedConfig

    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend()
    rows = [{"id": f"m{i}", "messages": [{"role": "user", "content": f"Say {i}"}]}
            for i in range(4)]
    Pipeline([Complete()], input=rows, backends={"default": ScriptedConfig()}).run(
        tmp_path / "answered", progress=False, diversity_embeddings=False)
    config = parse_sft_config(config_text(student_dir, data="answered"), "x.yaml", tmp_path)
    trainer, facts = build_trainer(config)
    assert facts == {"rows": 4, "format": "messages"}
    for index in range(4):
        prompt, trained = answer_labels(trainer, index)
        number = prompt.split("Say ")[1][0]
        assert prompt.endswith(f"Say {number}<|im_end|>\n<|im_start|>assistant\n")
        assert trained == f"answer to Say {number} #0<|im_end|>"  # the answer, then EOS


@pytest.mark.parametrize(
    "row",
    [
        # TRL's conversational prompt-completion
        {"prompt": [{"role": "user", "content": "Say 7"}],
         "completion": [{"role": "assistant", "content": "Seven."}]},
        # as stillroom wrote a `messages` row before: the answer beside the conversation
        {"messages": [{"role": "user", "content": "Say 7"}], "completion": "Seven."},
    ],
    ids=["conversational", "older-messages"],
)
def test_other_answer_shapes_train_on_the_answer(
    tmp_path: Path, student_dir: Path, row: dict[str, Any]
) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    config = parse_sft_config(config_text(student_dir, data="rows.jsonl"), "x.yaml", tmp_path)
    trainer, _ = build_trainer(config)
    prompt, trained = answer_labels(trainer, 0)
    assert prompt.endswith("Say 7<|im_end|>\n<|im_start|>assistant\n")
    assert trained == "Seven.<|im_end|>"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("data: d.jsonl\nlearning_rate: -1\n", "learning_rate", 2),
        ("data: d.jsonl\nbatchsize: 4\n", "batchsize", 2),
        ("data: d.jsonl\nlora: {r: 0}\n", "lora.r", 2),
        ("student: {init: {teacher: embedded, keep_evry: 2}}\ndata: d\n", "student.init.keep_evry", 1),
        ("output_dir: x\n", "data", None),
        ("data: d.jsonl\nformat: chat\n", "format", 2),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, line: int | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sft_config(text, "sft.yaml")
    assert caught.value.key == key
    assert caught.value.path == "sft.yaml"
    if line is not None:
        assert caught.value.line == line
    assert key in str(caught.value)


def test_cli_smoke(tmp_path: Path, student_dir: Path) -> None:
    write_data(tmp_path)
    (tmp_path / "sft.yaml").write_text(config_text(student_dir, max_steps=2, save_steps=10))
    result = CliRunner().invoke(app, ["train", "sft", str(tmp_path / "sft.yaml")])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 16 rows" in result.output
    assert (tmp_path / "run" / "final" / TRAIN_FILE).exists()

    (tmp_path / "bad.yaml").write_text("data: data.jsonl\nepochs: 0\n")
    bad = CliRunner().invoke(app, ["train", "sft", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "epochs" in bad.output
