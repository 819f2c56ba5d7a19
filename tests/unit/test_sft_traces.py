"""SFT on reasoning traces: how a row's trace enters the assistant turn (tags, the chat template's
own thinking field, dropped), and masking it from the loss. A byte-level tokenizer (one token per
byte) with small chat templates written here makes every label checkable by its text; the
student is a tiny random Llama (tests/tiny_models.py), nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")

from stillroom.errors import ConfigError, InputError  # noqa: E402
from stillroom.train.sft import (  # noqa: E402
    TRAIN_FILE,
    TraceFormat,
    build_trainer,
    parse_sft_config,
    sft_examples,
    template_thinking_field,
    trace_format,
    train_sft,
)
from tests.tiny_models import byte_tokenizer, tiny_llama  # noqa: E402

IGNORE = -100
EOS = "<eos>"

# A plain chat template (no thinking field), and one that writes the assistant's
# `reasoning_content` inside <think> tags before the answer, as Qwen3's does.
PLAIN = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
THINKING = (
    "{% for m in messages %}<{{ m['role'] }}>"
    "{% if m['role'] == 'assistant' and m.reasoning_content is defined and m.reasoning_content %}"
    "<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

ROWS: list[dict[str, Any]] = [
    {"id": "0", "prompt": "2+2?", "completion": "4", "reasoning": "two and two make four"},
    {"id": "1", "prompt": "3+3?", "completion": "6", "reasoning": None},  # no trace
    {"id": "2", "prompt": [{"role": "user", "content": "1+1?"}],
     "completion": [{"role": "assistant", "content": "2"}], "reasoning": "one and one"},
]


def tokenizer_with(template: str | None) -> Any:
    tokenizer = byte_tokenizer(bos=False)
    tokenizer.add_special_tokens({"eos_token": EOS})
    tokenizer.chat_template = template
    return tokenizer


def student(folder: Path, template: str | None) -> Path:
    tokenizer = tokenizer_with(template)
    tiny_llama(tokenizer, 512).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def config(tmp_path: Path, template: str | None, rows: list[dict[str, Any]] = ROWS,
           **extra: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = {"student": str(student(tmp_path / "student", template)), "data": "data.jsonl",
            "output_dir": "run", "max_steps": 1, "batch_size": 3, "max_length": 256,
            "learning_rate": 0.01, **extra}
    text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items())
    return parse_sft_config(text, str(tmp_path / "sft.yaml"), tmp_path)


def labelled(trainer: Any, index: int) -> tuple[str, str]:
    """(the text of the untrained tokens, the text of the trained ones) of one example."""
    example = trainer.train_dataset[index]
    tok = trainer.processing_class
    ids, labels = example["input_ids"], example["labels"]
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels, strict=True))
    untrained = tok.decode([t for t, label in zip(ids, labels, strict=True) if label == IGNORE])
    trained = tok.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])
    return untrained, trained


# -- rendering ---------------------------------------------------------------------------------


def test_tags_write_the_trace_before_the_answer_and_rows_without_one_are_unchanged() -> None:
    tok = tokenizer_with(PLAIN)
    examples = sft_examples(ROWS, "prompt_completion", tok, TraceFormat(mode="tags"))
    assert examples[0].prompt == "<user>2+2?</user>\n<assistant>"
    assert examples[0].completion == "<think>\ntwo and two make four\n</think>\n\n4"
    assert examples[0].completion[examples[0].trace_chars:] == "4"
    assert (examples[1].completion, examples[1].trace_chars) == ("6", 0)
    assert examples[2].completion == "<think>\none and one\n</think>\n\n2"
    custom = TraceFormat(mode="tags", start="<reason>", end="</reason>")
    assert sft_examples(ROWS[:1], "prompt_completion", tok, custom)[0].completion == (
        "<reason>\ntwo and two make four\n</reason>\n\n4")
    dropped = sft_examples(ROWS, "prompt_completion", tok, TraceFormat(mode="drop"))
    assert [e.completion for e in dropped] == ["4", "6", "2"]
    assert all(e.trace_chars == 0 for e in dropped)


def test_a_messages_row_gets_its_trace_in_the_last_assistant_turn() -> None:
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}],
           "thoughts": "say yes"}
    [example] = sft_examples([row], "messages", tokenizer_with(PLAIN),
                             TraceFormat(mode="tags", column="thoughts"))
    assert example.prompt == "<user>Hi</user>\n<assistant>"
    assert example.completion == "<think>\nsay yes\n</think>\n\nYes"


def test_the_template_field_is_used_where_the_template_has_one() -> None:
    thinking, plain = tokenizer_with(THINKING), tokenizer_with(PLAIN)
    assert template_thinking_field(thinking) == "reasoning_content"
    assert template_thinking_field(plain) is None
    assert template_thinking_field(tokenizer_with(None)) is None

    auto = parse_sft_config("data: d\n")
    assert trace_format(auto, thinking) == TraceFormat(mode="template", field="reasoning_content")
    assert trace_format(auto, plain).mode == "tags"
    with pytest.raises(ConfigError, match="no thinking field") as caught:
        trace_format(parse_sft_config("data: d\nreasoning: template\n"), plain)
    assert caught.value.key == "reasoning"

    examples = sft_examples(ROWS, "prompt_completion", thinking, trace_format(auto, thinking))
    assert examples[0].prompt == "<user>2+2?</user>\n<assistant>"
    # Where the template puts it, and the completion ends with the answer (TRL appends EOS),
    # not with the template's end-of-turn text.
    assert examples[0].completion == "<think>two and two make four</think>4"
    assert examples[0].completion[examples[0].trace_chars:] == "4"
    assert examples[1].completion == "6"


def test_a_template_that_drops_the_field_is_an_error_not_a_lost_trace() -> None:
    # Told to use a field the template never writes: the check after rendering catches it.
    told = TraceFormat(mode="template", field="reasoning_content")
    with pytest.raises(InputError, match="row 0: the chat template dropped the trace"):
        sft_examples(ROWS, "prompt_completion", tokenizer_with(PLAIN), told)


def test_an_inline_trace_in_the_answer_is_read_as_a_trace() -> None:
    rows = [{"prompt": "2+2?", "completion": "<think>\n two and two \n</think>\n\n4"},
            {"prompt": "3+3?", "completion": "<think>\n\n</think>\n\n6"}]  # asked not to think
    thinking = tokenizer_with(THINKING)
    moved = sft_examples(rows, "prompt_completion", thinking,
                         TraceFormat(mode="template", field="reasoning_content"))
    assert [e.completion for e in moved] == ["<think>two and two</think>4", "6"]
    tagged = sft_examples(rows, "prompt_completion", thinking, TraceFormat(mode="tags"))
    assert tagged[0].completion == "<think>\ntwo and two\n</think>\n\n4"
    assert tagged[0].trace_chars == len(tagged[0].completion) - 1
    dropped = sft_examples(rows, "prompt_completion", thinking, TraceFormat(mode="drop"))
    assert [e.completion for e in dropped] == ["4", "6"]
    # Without traces (KD reads rows this way) the text is the answer as it was.
    assert sft_examples(rows, "prompt_completion", thinking)[0].completion == rows[0]["completion"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "completion": "", "reasoning": "half a thought"}, "empty answer"),
        ({"prompt": "q", "completion": "<think>half a thought"}, "never ended"),
        # as `complete` keeps a cut trace with `truncated_reasoning: flag`
        ({"prompt": "q", "completion": "", "reasoning": "half", "reasoning_truncated": True},
         "reasoning_truncated` is true"),
        ({"prompt": "q", "completion": "a", "reasoning": ["one", "two"]}, "must be text"),
        # Two traces for one answer: written as they are, the turn would hold both.
        ({"prompt": "q", "completion": "<think>inline</think> 4", "reasoning": "field trace"},
         "a trace in `reasoning` and another inline"),
        ({"prompt": "q", "completion": "<think>a</think><think>b</think> 4"}, "second <think>"),
        # Its own closing tag would end the trace early and read back as the answer.
        ({"prompt": "q", "completion": "4", "reasoning": "the tag </think> closes it, so"},
         "holds the closing tag </think>"),
    ],
)
@pytest.mark.parametrize("mode", ["tags", "template"])
def test_rows_a_trace_cannot_be_trained_from_are_refused(
    row: dict[str, Any], message: str, mode: str
) -> None:
    tokenizer = tokenizer_with(PLAIN if mode == "tags" else THINKING)
    traces = TraceFormat(mode=mode, field="reasoning_content" if mode == "template" else None)
    with pytest.raises(InputError, match=f"row 0: .*{message}"):
        sft_examples([row], "prompt_completion", tokenizer, traces)


@pytest.mark.parametrize("mode", ["tags", "drop"])
def test_only_an_answer_that_begins_with_the_start_tag_holds_an_inline_trace(mode: str) -> None:
    # The rule verifiers and judges use (llm.reasoning.final_answer): a tag further in is text.
    rows = [{"prompt": "q", "completion": "Use `</think>` to close; it is 4"},
            {"prompt": "q", "completion": "</think> 4"},
            {"prompt": "q", "completion": "So <think>x</think> is how it looks; 4"}]
    examples = sft_examples(rows, "prompt_completion", tokenizer_with(PLAIN),
                            TraceFormat(mode=mode))
    assert [(e.completion, e.trace_chars) for e in examples] == [
        (row["completion"], 0) for row in rows]


def test_a_bad_row_names_the_data_file_and_line(tmp_path: Path) -> None:
    rows = [ROWS[0], {"prompt": "q", "completion": "<think>half a thought"}]
    with pytest.raises(InputError) as caught:
        build_trainer(config(tmp_path, PLAIN, rows))
    assert caught.value.path == f"{tmp_path / 'data.jsonl'}:2"
    assert str(caught.value).startswith(f"{tmp_path / 'data.jsonl'}:2: row 1: ")
    assert "never ended" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("data: d\nreasoning: inline\n", "reasoning"),
        ("data: d\nthink_end: ''\n", "think_end"),
        ("data: d\nreasoning: drop\nmask_reasoning: true\n", None),
    ],
)
def test_bad_reasoning_keys_are_config_errors(text: str, key: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sft_config(text, "sft.yaml")
    assert caught.value.key == key
    if key is None:
        assert "mask_reasoning" in str(caught.value)


# -- labels and training -------------------------------------------------------------------------


@pytest.mark.parametrize("template", [PLAIN, THINKING], ids=["tags", "template"])
def test_the_trace_is_learned_unless_masked_the_answer_always_the_prompt_never(
    tmp_path: Path, template: str
) -> None:
    torch.set_num_threads(1)
    block = ("<think>\ntwo and two make four\n</think>\n\n" if template == PLAIN
             else "<think>two and two make four</think>")
    trainer, facts = build_trainer(config(tmp_path / "on", template))
    assert facts["reasoning"]["rows_with_trace"] == 2 and not facts["reasoning"]["masked"]
    assert labelled(trainer, 0) == ("<user>2+2?</user>\n<assistant>", f"{block}4{EOS}")

    trainer, facts = build_trainer(config(tmp_path / "off", template, mask_reasoning=True))
    assert facts["reasoning"] == {"mode": "tags" if template == PLAIN else "template",
                                  "field": None if template == PLAIN else "reasoning_content",
                                  "rows_with_trace": 2, "masked": True}
    assert labelled(trainer, 0) == (f"<user>2+2?</user>\n<assistant>{block}", f"4{EOS}")
    # The masked tokens are exactly prompt + trace block, in order, then the answer to the end.
    example = trainer.train_dataset[0]
    start = [label != IGNORE for label in example["labels"]].index(True)
    assert all(label != IGNORE for label in example["labels"][start:])
    # A row without a trace: only its prompt is masked.
    assert labelled(trainer, 1) == ("<user>3+3?</user>\n<assistant>", f"6{EOS}")


def test_one_real_step_with_the_trace_masked_records_how(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    final = train_sft(config(tmp_path, PLAIN, mask_reasoning=True))
    record = json.loads((final / TRAIN_FILE).read_text())
    assert record["steps"] == 1 and record["rows"] == 3
    assert record["reasoning"] == {"mode": "tags", "field": None, "rows_with_trace": 2,
                                   "masked": True}
    assert record["config"]["mask_reasoning"] is True
    assert record["first_loss"] is not None and record["first_loss"] > 0


def test_without_traces_the_record_says_none(tmp_path: Path) -> None:
    rows = [{"prompt": "q", "completion": "a"}] * 3
    trainer, facts = build_trainer(config(tmp_path, PLAIN, rows))
    assert "reasoning" not in facts
    assert labelled(trainer, 0) == ("<user>q</user>\n<assistant>", f"a{EOS}")


def test_masking_with_a_real_bpe_tokenizer_masks_the_whole_trace_and_no_answer_token(
    smollm2_tokenizer_dir: Path,
) -> None:
    import transformers

    from stillroom.train.sft import tokenize_masked

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)  # SmolLM2's
    rows = [{"prompt": "What is 2 + 2?", "completion": "The answer is 4.",
             "reasoning": "two plus two is four"}]
    [example] = tokenize_masked(sft_examples(rows, "prompt_completion", tok,
                                             TraceFormat(mode="tags")), tok)
    ids, mask = example["input_ids"], example["completion_mask"]
    start = mask.index(1)
    assert mask == [0] * start + [1] * (len(ids) - start)
    untrained, trained = tok.decode(ids[:start]), tok.decode(ids[start:])
    assert untrained.endswith("<|im_start|>assistant\n<think>\ntwo plus two is four\n</think>")
    # The seam's white space goes with the answer (BPE splits it differently there).
    assert trained.lstrip("\n") == "The answer is 4.<|im_end|>"
