"""`stillroom complete` on conversations, against the echo server, read back by TRL's own SFT
preparation and by `stillroom train sft`: the assistant's answer is trained on, not only the
question (it was not when `complete` kept `messages` without the answer and wrote a text
`completion` beside it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
IGNORE = -100
# The columns trl.data_utils.is_conversational may pick one of to decide a row's shape.
TRL_KEYS = {"prompt", "completion", "messages", "chosen", "rejected"}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "Name a primary colour."}],
    # Ends in an answer: regenerated, the old one replaced.
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Count to three."},
     {"role": "assistant", "content": "OLD ANSWER"}],
]


def tiny_student(tokenizer: Any) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.mark.timeout(600)
def test_complete_on_messages_writes_the_answer_that_trl_trains_on(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:
    pytest.importorskip("trl")
    import datasets
    import transformers
    from trl import SFTConfig, SFTTrainer

    base_url, _ = echo_server()
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"id": f"c{i}", "messages": messages}) + "\n"
                              for i, messages in enumerate(CONVERSATIONS)))
    out = tmp_path / "out"
    result = subprocess.run(
        [STILLROOM, "complete", str(source), "-o", str(out), "--base-url", base_url,
         "--model", "m", "--no-progress", "--no-embeddings"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr

    # The rows as written: each conversation ends with the echo server's answer, once.
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert "completion" not in loaded.column_names
    assert set(loaded.column_names) & TRL_KEYS == {"messages"}  # one reading, whatever the seed
    rows = sorted(loaded, key=lambda row: row["id"])
    answers = ["echo: What is the capital of France?", "echo: Name a primary colour.",
               "echo: Count to three."]
    for row, asked, answer in zip(rows, CONVERSATIONS, answers, strict=True):
        before = [m for m in asked if m["content"] != "OLD ANSWER"]
        assert row["messages"] == [*before, {"role": "assistant", "content": answer}]

    # TRL's own preparation (what SFTTrainer does to any dataset it is given).
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", max_length=512,
                     bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=tiny_student(tokenizer), args=args, train_dataset=loaded,
                         processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == len(rows)
    for example in prepared:
        trained = tokenizer.decode([t for t in example["labels"] if t != IGNORE])
        assert sum(answer in trained for answer in answers) == 1, trained
        assert "OLD ANSWER" not in tokenizer.decode(example["input_ids"])

    # `stillroom train sft` on the same folder: the answer, and only the answer, is trained.
    student = tmp_path / "student"
    tiny_student(tokenizer).save_pretrained(student)
    tokenizer.save_pretrained(student)
    from stillroom.train.sft import build_trainer, parse_sft_config

    config = parse_sft_config(f"student: {student}\ndata: out\nmax_length: 512\n", "sft.yaml",
                              tmp_path)
    ours, facts = build_trainer(config)
    assert facts["format"] == "messages"
    trained_texts = sorted(
        tokenizer.decode([t for t in example["labels"] if t != IGNORE])
        for example in ours.train_dataset
    )
    # Every assistant turn is trained: the third conversation's earlier "Hello." too.
    earlier = ["", "", "Hello.<|im_end|>"]
    assert trained_texts == sorted(f"{before}{answer}<|im_end|>"
                                   for before, answer in zip(earlier, answers, strict=True))
