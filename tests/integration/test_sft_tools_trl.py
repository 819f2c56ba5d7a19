"""Tool-calling conversations written by stillroom's own output writer, read back as a user reads
them (``datasets.load_dataset("parquet")``), trained by TRL's own SFTTrainer and by
``stillroom train sft``: the labels cover every assistant turn (tool calls included) and no
system, user or tool turn.

The student is a tiny random Llama over the embedded SmolLM2 tokenizer. TRL's
``assistant_only_loss`` needs a template with ``{% generation %}`` markers and swaps one in only
for templates it knows; SmolLM2's ChatML is not one of them (checked below). Qwen2.5's template,
which TRL does know, uses the same ChatML tokens, so the SmolLM2 tokenizer with that template
is how TRL's assistant-only loss is tested on these rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

IGNORE = -100
END = "<|im_end|>"

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "search_books", "description": "Find books by words in the title",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "limit": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}}}}},
]


def conversations() -> list[dict[str, Any]]:
    from stillroom.llm.tool_calls import assistant_turn, make_call, tool_turn, tools_text

    weather = make_call("get_weather", {"city": "Paris", "unit": "C"}, "call_0")
    add = make_call("add", {"a": 2, "b": 40}, "call_1")
    books = make_call("search_books", {"query": "dune", "limit": 2, "tags": ["sf"]}, "call_0")
    return [
        {"id": "r0", "tools": tools_text(TOOLS), "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris, and what is 2 + 40?"},
            assistant_turn("Checking both.", [weather, add]),  # two calls in one turn
            tool_turn(weather, "sunny, 21 C"),
            tool_turn(add, '{"sum": 42}'),
            assistant_turn("Sunny and 21 C; 2 + 40 = 42.", None),
            {"role": "user", "content": "Thanks!"},
            assistant_turn("You are welcome.", None),
        ]},
        {"id": "r1", "tools": tools_text(TOOLS[2:]), "messages": [
            {"role": "user", "content": "Two SF books about dune?"},
            assistant_turn("", [books]),
            tool_turn(books, '["Dune", "Dune Messiah"]'),
            assistant_turn("Dune and Dune Messiah.", None),
        ]},
        # No tools: Arrow gives its turns the tool keys of the other rows as nulls.
        {"id": "r2", "tools": None, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Count to two."},
            {"role": "assistant", "content": "One, two."}]},
    ]


def assistant_texts(row: dict[str, Any]) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant" and m["content"]]


def context_texts(row: dict[str, Any]) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] != "assistant"]


def trained_runs(ids: list[int], labels: list[int], tokenizer: Any) -> list[str]:
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels, strict=True):
        trained = label != IGNORE
        if trained:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run) for run in runs]


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The rows written through a stillroom run (Parquet in data/), and loaded as a user would."""
    import datasets

    from stillroom import Pipeline

    def keep(row: dict[str, Any]) -> dict[str, Any]:
        return row

    out = tmp_path_factory.mktemp("tool-rows") / "out"
    Pipeline([keep], input=conversations()).run(out, progress=False, diversity_embeddings=False)
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    return out, loaded.sort("id")


def tiny_student(tokenizer: Any) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return transformers.LlamaForCausalLM(config)


def test_rows_read_back_are_the_rows_written(written: tuple[Path, Any]) -> None:
    _, loaded = written
    for row, original in zip(loaded, conversations(), strict=True):
        # `tools` stays JSON text: tools of different parameters keep their own schemas.
        assert row["tools"] == original["tools"]
        if original["tools"]:
            assert json.loads(row["tools"]) == [t for t in TOOLS if t["function"]["name"] in
                                                original["tools"]]
        # The messages are the ones written, but Arrow padded every turn with the other turns'
        # keys as nulls (what a template testing `is defined` would see).
        assert without_nulls(row["messages"]) == original["messages"]
    assert loaded[2]["messages"][0]["tool_calls"] is None


def test_trl_assistant_only_loss_trains_every_assistant_turn_and_no_user_or_tool_turn(
    written: tuple[Path, Any], smollm2_tokenizer_dir: Path, tmp_path: Path
) -> None:
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    torch.set_num_threads(1)
    _, loaded = written
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", max_length=2048,
                     bf16=False, use_cpu=True, assistant_only_loss=True, max_steps=1,
                     per_device_train_batch_size=3, save_strategy="no")

    smollm2 = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    # SmolLM2's ChatML has no generation markers and TRL has no training version of it.
    with pytest.raises(ValueError, match="patching is not supported for this template"):
        SFTTrainer(model=tiny_student(smollm2), args=args, train_dataset=loaded,
                   processing_class=smollm2)

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.chat_template = qwen2_5_chat_template  # same <|im_start|>/<|im_end|> tokens
    originals = conversations()
    # What TRL renders from the rows read back is what it renders from the rows as written:
    # the null keys Arrow added change nothing for this template.
    for row, original in zip(loaded, originals, strict=True):
        tools = json.loads(row["tools"]) if row["tools"] else None
        assert tokenizer.apply_chat_template(row["messages"], tools=tools, tokenize=False) == (
            tokenizer.apply_chat_template(original["messages"], tools=tools, tokenize=False))

    trainer = SFTTrainer(model=tiny_student(tokenizer), args=args, train_dataset=loaded,
                         processing_class=tokenizer)
    prepared: Any = trainer.train_dataset
    assert len(prepared) == len(originals)
    for example, original in zip(prepared, originals, strict=True):
        runs = trained_runs(example["input_ids"], example["labels"], tokenizer)
        turns = [m for m in original["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(turns)  # one trained span per assistant turn, calls-only too
        for run, turn in zip(runs, turns, strict=True):
            assert run.endswith(f"{END}\n")  # the end of the turn is trained
            assert turn["content"] in run
            for call in turn.get("tool_calls", []):
                assert f'"name": "{call["function"]["name"]}"' in run
                # Qwen2.5's template writes `arguments | tojson`: a row's JSON-text arguments
                # are trained as a quoted string (`stillroom train sft` passes them as objects).
                assert json.dumps(call["function"]["arguments"]) in run
        trained = "".join(runs)
        for text in context_texts(original):
            assert text not in trained  # no system, user or tool text is in the loss
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))


@pytest.mark.parametrize("template", ["smollm2", "qwen2.5"])
def test_stillroom_train_sft_trains_every_assistant_turn_of_the_same_rows(
    written: tuple[Path, Any], smollm2_tokenizer_dir: Path, tmp_path: Path, template: str
) -> None:
    import torch
    import transformers
    from trl.chat_template_utils import qwen2_5_chat_template

    from stillroom.llm.tool_calls import calls_as_text
    from stillroom.train.sft import TRAIN_FILE, build_trainer, parse_sft_config, train_sft

    torch.set_num_threads(1)
    out, _ = written
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    if template == "qwen2.5":
        tokenizer.chat_template = qwen2_5_chat_template
    student = tmp_path / "student"
    tiny_student(tokenizer).save_pretrained(student)
    tokenizer.save_pretrained(student)
    config = parse_sft_config(
        f"student: {student}\ndata: {out}\nmax_length: 2048\nmax_steps: 1\nbatch_size: 3\n"
        "output_dir: run\n", "sft.yaml", tmp_path)
    trainer, facts = build_trainer(config)
    native = template == "qwen2.5"
    assert facts["tools"] == {"rows_with_tools": 2, "rendering": "native" if native else "plain"}
    for example, original in zip(trainer.train_dataset, conversations(), strict=True):
        runs = trained_runs(example["input_ids"], example["labels"], tokenizer)
        turns = [m for m in original["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(turns)
        for run, turn in zip(runs, turns, strict=True):
            assert run.endswith(END) and turn["content"] in run
            calls = turn.get("tool_calls", [])
            if calls and not native:  # the plain format: exactly the <tool_call> blocks
                assert run == (f"{turn['content']}\n" if turn["content"] else "") + (
                    calls_as_text(calls) + END)
            for call in calls:  # natively: arguments as a JSON object, not a quoted string
                assert json.dumps(json.loads(call["function"]["arguments"])) in run
        trained = "".join(runs)
        for text in context_texts(original):
            assert text not in trained
        if not native:
            assert "<tool_response>" not in trained
    # One step, and the record says how the tools were rendered.
    record = json.loads((train_sft(config) / TRAIN_FILE).read_text())
    assert record["steps"] == 1 and record["rows"] == 3 and record["tools"] == facts["tools"]
    assert record["config"]["train_turns"] == "all" and record["first_loss"] > 0
