"""Multi-turn and tool-calling SFT: every assistant turn trained (tool calls too), system, user and
tool turns masked, tools rendered natively or as the plain turns a model without a tool API is
asked in. A byte-level tokenizer (one token per byte) with small chat templates written here
makes every label checkable by its text; the SmolLM2 tokenizer checks the real ChatML case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")

from stillroom.errors import ConfigError, InputError  # noqa: E402
from stillroom.llm.tool_calls import (  # noqa: E402
    as_plain_messages,
    assistant_turn,
    make_call,
    tool_turn,
    tools_text,
)
from stillroom.train.sft import TraceFormat, build_trainer, parse_sft_config, sft_examples  # noqa: E402
from stillroom.train.sft_turns import (  # noqa: E402
    ToolRendering,
    conversation_example,
    row_conversation,
    tokenize_turns,
    tool_rendering,
)
from tests.tiny_models import byte_tokenizer, tiny_llama  # noqa: E402

IGNORE = -100
EOS = "<eos>"

# No tool support: reads only role and content (as SmolLM2's ChatML does). The end of a turn
# is the EOS token, then a newline that belongs to no turn.
PLAIN = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# Renders tools, calls (arguments as they are given) and tool results. It tests
# `is defined`, so a null key that Arrow added would change (or break) the rendering.
NATIVE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}: "
    "{{ t.function.description }};{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% if m.tool_calls is defined %}{% for c in m.tool_calls %}"
    "[call {{ c.function.name }} {{ c.function.arguments }}]{% endfor %}{% endif %}"
    "{% if m.name is defined %}({{ m.name }}){% endif %}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# The same, but quoting the arguments as Qwen2.5's template does (`tojson`).
QUOTING = NATIVE.replace("{{ c.function.arguments }}", "{{ c.function.arguments | tojson }}")
# Shows an assistant turn's text only when it is the last message, as templates that drop the
# reasoning of earlier turns do: earlier turns render differently once later turns follow.
FORGETFUL = (
    "{% for m in messages %}<{{ m['role'] }}>"
    "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}<eos>\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
# Prompts for an answer with a header the rendered answer does not start with.
MISMATCHED = PLAIN.replace("{% if add_generation_prompt %}<assistant>",
                           "{% if add_generation_prompt %}<assistant>:")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                        "b": {"type": "number"}}}}},
]
CALL = make_call("get_weather", {"city": "Paris"}, "call_0")
TOOL_ROW: dict[str, Any] = {
    "id": "t0",
    "tools": tools_text(TOOLS),
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        assistant_turn("", [CALL]),
        tool_turn(CALL, "sunny, 21 C"),
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome."},
    ],
}
CHAT_ROW: dict[str, Any] = {"id": "c0", "messages": [
    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Say 2"}, {"role": "assistant", "content": "2"}]}


def tokenizer_with(template: str | None) -> Any:
    tokenizer = byte_tokenizer(bos=False)
    tokenizer.add_special_tokens({"eos_token": EOS})
    tokenizer.chat_template = template
    return tokenizer


def runs(encoded: dict[str, list[int]], tokenizer: Any) -> tuple[list[str], list[str]]:
    """(the trained runs of tokens, the untrained ones), each decoded, in order."""
    trained: list[list[int]] = []
    untrained: list[list[int]] = []
    previous = None
    for token, bit in zip(encoded["input_ids"], encoded["completion_mask"], strict=True):
        into = trained if bit else untrained
        if bit != previous:
            into.append([])
        into[-1].append(token)
        previous = bit
    return ([tokenizer.decode(r) for r in trained], [tokenizer.decode(r) for r in untrained])


def sequences(row: dict[str, Any], template: str | None, **options: Any) -> tuple[Any, Any]:
    """(the row's training sequences, the tokenizer)."""
    tokenizer = tokenizer_with(template)
    found = conversation_example(0, row, tokenizer, tool_rendering(tokenizer),
                                 options.pop("traces", None), **options)
    return found, tokenizer


def example(row: dict[str, Any], template: str | None, **options: Any) -> tuple[Any, Any]:
    """(the row's one training sequence, the tokenizer)."""
    [turns], tokenizer = sequences(row, template, **options)
    return turns, tokenizer


# -- which turns are trained ---------------------------------------------------------------------


def test_every_assistant_turn_is_trained_with_its_end_and_nothing_else() -> None:
    turns, tok = example(CHAT_ROW, PLAIN)
    trained, untrained = runs(tokenize_turns(turns, tok), tok)
    assert trained == [f"Hello.{EOS}", f"2{EOS}"]
    assert untrained == [f"<user>Hi{EOS}\n<assistant>", f"\n<user>Say 2{EOS}\n<assistant>"]
    # The sequence is the conversation as the template renders it, cut after the last answer.
    assert turns.text == tok.apply_chat_template(CHAT_ROW["messages"], tokenize=False).rstrip()


def test_train_turns_last_trains_only_the_final_answer() -> None:
    turns, tok = example(CHAT_ROW, PLAIN, train_turns="last")
    trained, untrained = runs(tokenize_turns(turns, tok), tok)
    assert trained == [f"2{EOS}"]
    assert untrained == [f"<user>Hi{EOS}\n<assistant>Hello.{EOS}\n<user>Say 2{EOS}\n<assistant>"]


@pytest.mark.parametrize("writes_bos", [True, False])
def test_the_sequence_has_one_bos_whether_the_template_or_the_tokenizer_adds_it(
    writes_bos: bool,
) -> None:
    tok = byte_tokenizer(bos=True)  # adds <bos> before any text
    tok.add_special_tokens({"eos_token": EOS})
    tok.chat_template = ("<bos>" if writes_bos else "") + PLAIN
    [turns] = conversation_example(0, CHAT_ROW, tok, tool_rendering(tok), None)
    encoded = tokenize_turns(turns, tok)
    assert encoded["input_ids"].count(tok.bos_token_id) == 1
    assert encoded["input_ids"][0] == tok.bos_token_id
    assert runs(encoded, tok)[0] == [f"Hello.{EOS}", f"2{EOS}"]


def test_a_template_without_an_end_of_turn_gets_eos_after_the_final_answer() -> None:
    bare = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}[assistant] {% endif %}"
    turns, tok = example(CHAT_ROW, bare)
    trained, _ = runs(tokenize_turns(turns, tok), tok)
    assert trained == ["Hello.", f"2{EOS}"]  # as TRL ends every completion


def test_a_turn_rendered_differently_in_context_is_trained_in_a_sequence_of_its_own(
    tmp_path: Path,
) -> None:
    [whole, alone], tok = sequences(CHAT_ROW, FORGETFUL)
    trained, untrained = runs(tokenize_turns(whole, tok), tok)
    assert trained == [f"2{EOS}"]  # the turn the template keeps, in the whole conversation
    assert untrained == [f"<user>Hi{EOS}\n<assistant>{EOS}\n<user>Say 2{EOS}\n<assistant>"]
    # The earlier turn, after exactly the prompt the student is given for it.
    assert runs(tokenize_turns(alone, tok), tok) == ([f"Hello.{EOS}"], [f"<user>Hi{EOS}\n<assistant>"])
    # Only the final turn: one sequence.
    turns, tok = example(CHAT_ROW, FORGETFUL, train_turns="last")
    assert runs(tokenize_turns(turns, tok), tok)[0] == [f"2{EOS}"]
    # Through `stillroom train sft`: three sequences from two rows, and the record says why.
    one = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    trainer, facts = build_trainer(config(tmp_path, FORGETFUL, [one, CHAT_ROW]))
    assert len(trainer.train_dataset) == 3 and facts["separate_turns"] == 1


def test_a_template_whose_answer_does_not_start_with_its_prompt_is_refused_naming_the_row(
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError, match=r"row 0: .*assistant turn 1 \(message 1\) with a "
                                         r"different start than the prompt"):
        example(CHAT_ROW, MISMATCHED)
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            CHAT_ROW]
    with pytest.raises(InputError) as caught:
        build_trainer(config(tmp_path, MISMATCHED, rows))
    assert str(caught.value).startswith(f"{tmp_path / 'data.jsonl'}:1: row 0: ")
    assert "its final assistant turn" in str(caught.value)


def test_qwen3s_template_trains_each_turn_as_it_renders_it_last(smollm2_tokenizer_dir: Path) -> None:
    # Qwen3 writes an empty <think> block into an assistant turn after the last user turn only
    # while it is the last message; TRL ships the template (same ChatML tokens as SmolLM2).
    import transformers
    from trl.chat_template_utils import qwen3_chat_template

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.chat_template = qwen3_chat_template
    rendering = tool_rendering(tok)
    assert rendering == ToolRendering(native=True, arguments_as_text=True)
    row = {**TOOL_ROW, "messages": TOOL_ROW["messages"][:5]}  # ends with "Sunny." after the call
    found = conversation_example(0, row, tok, rendering, None)
    trained = [runs(tokenize_turns(turns, tok), tok)[0] for turns in found]
    empty = "<think>\n\n</think>\n\n"
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert trained == [[f"{empty}Sunny.<|im_end|>"], [f"{empty}{call}<|im_end|>"]]
    # In the whole conversation the call is context, rendered as the template renders history.
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in found[0].text


def test_an_older_messages_row_with_its_answer_beside_it_is_trained_on_that_answer() -> None:
    row = {"messages": CHAT_ROW["messages"][:3], "completion": "two"}
    turns, tok = example(row, PLAIN)
    assert runs(tokenize_turns(turns, tok), tok)[0] == [f"Hello.{EOS}", f"two{EOS}"]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "a"}], "must end with an assistant turn"),
        ([{"role": "assistant", "content": "a"}], "no turn before the answer"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
          {"role": "assistant", "content": "c"}], "starts with an assistant turn"),
    ],
)
def test_unusable_conversations_are_errors_naming_the_row(
    messages: list[dict[str, str]], message: str
) -> None:
    with pytest.raises(InputError, match=f"row 0: .*{message}"):
        example({"messages": messages}, PLAIN)


# -- tools ---------------------------------------------------------------------------------------


def test_the_probe_tells_native_quoting_and_plain_templates_apart() -> None:
    assert tool_rendering(tokenizer_with(NATIVE)) == ToolRendering(True, arguments_as_text=True)
    assert tool_rendering(tokenizer_with(QUOTING)) == ToolRendering(True, arguments_as_text=False)
    assert tool_rendering(tokenizer_with(PLAIN)) == ToolRendering(False)
    assert tool_rendering(tokenizer_with(None)) == ToolRendering(False)


def test_tool_format_forces_plain_turns_or_insists_on_native_ones() -> None:
    assert tool_rendering(tokenizer_with(NATIVE), "plain") == ToolRendering(False)
    assert tool_rendering(tokenizer_with(NATIVE), "native").native
    with pytest.raises(ConfigError, match="does not render tools") as caught:
        tool_rendering(tokenizer_with(PLAIN), "native")
    assert caught.value.key == "tool_format"
    tok = tokenizer_with(NATIVE)
    [plain] = conversation_example(0, TOOL_ROW, tok, tool_rendering(tok, "plain"), None)
    assert plain.text == tok.apply_chat_template(
        as_plain_messages(TOOL_ROW["messages"], TOOLS), tokenize=False).rstrip()


def test_without_tool_support_the_student_learns_the_plain_format_it_is_asked_in() -> None:
    turns, tok = example(TOOL_ROW, PLAIN)
    plain = as_plain_messages(TOOL_ROW["messages"], TOOLS)
    assert turns.text == tok.apply_chat_template(plain, tokenize=False).rstrip()
    assert turns.has_tools
    trained, untrained = runs(tokenize_turns(turns, tok), tok)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert trained == [f"{call}{EOS}", f"Sunny.{EOS}", f"Welcome.{EOS}"]
    context = "".join(untrained)
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in context  # the result: context
    assert '"name": "add"' in context and "Be brief." in context  # every tool, the system text


@pytest.mark.parametrize("template", [NATIVE, QUOTING], ids=["text-arguments", "dict-arguments"])
def test_a_template_with_tool_support_renders_them_natively(template: str) -> None:
    turns, tok = example(TOOL_ROW, template)
    trained, untrained = runs(tokenize_turns(turns, tok), tok)
    # Arguments come out as a JSON object either way (text as written, or a dict quoted by tojson).
    arguments = '{"city": "Paris"}'
    assert trained == [f"[call get_weather {arguments}]{EOS}", f"Sunny.{EOS}", f"Welcome.{EOS}"]
    assert untrained[0].startswith("<tools>get_weather: Weather of a city;add: Add two numbers;")
    assert f"<tool>sunny, 21 C(get_weather){EOS}" in "".join(untrained)
    assert "<tool_call>" not in turns.text  # no plain-format text beside the native one


def test_rows_read_back_through_arrow_render_as_written() -> None:
    import pyarrow as pa

    from stillroom.data.tables import rows_to_table

    table = rows_to_table([TOOL_ROW, CHAT_ROW])
    read = pa.Table.from_batches(table.to_batches()).to_pylist()
    # Arrow merged the message shapes: a plain turn came back with null tool keys.
    assert read[1]["messages"][0]["tool_calls"] is None and read[1]["tools"] is None
    # The conversation trained on is the one written, whichever template renders it.
    for original, back in zip([TOOL_ROW, CHAT_ROW], read, strict=True):
        assert row_conversation(back, 0) == original["messages"]
    for template in (NATIVE, PLAIN):
        tok = tokenizer_with(template)
        rendering = tool_rendering(tok)
        for original, back in zip([TOOL_ROW, CHAT_ROW], read, strict=True):
            [expected] = conversation_example(0, original, tok, rendering, None)
            [again] = conversation_example(0, back, tok, rendering, None)
            assert (again.text, again.trained) == (expected.text, expected.trained)


def test_bad_tools_are_an_error_naming_the_row() -> None:
    with pytest.raises(InputError, match=r"row 0: tools\[0\]: a tool needs a non-empty `name`"):
        example({**TOOL_ROW, "tools": '[{"description": "x"}]'}, PLAIN)


def test_prompt_completion_pairs_of_a_tool_row_keep_the_calls_in_the_prompt() -> None:
    # What KD reads (stillroom.train.kd): the final answer after the calls and results.
    [pair] = sft_examples([TOOL_ROW], "messages", tokenizer_with(PLAIN))
    assert pair.completion == "Welcome."
    assert "<tool_call>" in pair.prompt and "<tool_response>" in pair.prompt
    assert pair.prompt.endswith(f"<user>Thanks{EOS}\n<assistant>")


# -- traces --------------------------------------------------------------------------------------


def test_the_final_turn_gets_the_trace_and_masking_it_keeps_every_answer_trained() -> None:
    row = {**CHAT_ROW, "reasoning": "just say it"}
    turns, tok = example(row, PLAIN, traces=TraceFormat(mode="tags"))
    block = "<think>\njust say it\n</think>\n\n"
    assert runs(tokenize_turns(turns, tok), tok)[0] == [f"Hello.{EOS}", f"{block}2{EOS}"]
    trained, untrained = runs(tokenize_turns(turns, tok, mask_trace=True), tok)
    assert trained == [f"Hello.{EOS}", f"2{EOS}"]
    assert untrained[-1].endswith(f"<assistant>{block}")


def test_a_template_thinking_field_holds_the_final_turns_trace() -> None:
    thinking = PLAIN.replace(
        "{{ m['content'] }}",
        "{% if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}</think>"
        "{% endif %}{{ m['content'] }}")
    row = {**CHAT_ROW, "reasoning": "just say it"}
    traces = TraceFormat(mode="template", field="reasoning_content")
    turns, tok = example(row, thinking, traces=traces)
    assert runs(tokenize_turns(turns, tok), tok)[0] == [
        f"Hello.{EOS}", f"<think>just say it</think>2{EOS}"]
    assert runs(tokenize_turns(turns, tok, mask_trace=True), tok)[0] == [f"Hello.{EOS}", f"2{EOS}"]
    # A template that leaves the field out loses the trace: an error, never a silent loss.
    with pytest.raises(InputError, match="row 0: the chat template dropped the trace"):
        example(row, PLAIN, traces=traces)


@pytest.mark.parametrize("template", [PLAIN, NATIVE], ids=["plain", "native"])
def test_a_calls_only_final_turn_with_a_trace_masks_the_trace_not_the_calls(template: str) -> None:
    row = {**TOOL_ROW, "messages": TOOL_ROW["messages"][:3], "reasoning": "look it up"}
    turns, tok = example(row, template, traces=TraceFormat(mode="tags"))
    trained, untrained = runs(tokenize_turns(turns, tok, mask_trace=True), tok)
    block = "<think>\nlook it up\n</think>"
    if template == PLAIN:  # the calls are the turn's text: the answer, after the block
        call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        assert (trained, untrained[-1][-len(block) - 2:]) == ([f"{call}{EOS}"], f"{block}\n\n")
    else:  # no text: the block ends with its closing tag, the template's calls follow
        call = '[call get_weather {"city": "Paris"}]'
        assert (trained, untrained[-1][-len(block):]) == ([f"\n\n{call}{EOS}"], block)


def test_drop_cuts_inline_traces_off_earlier_turns_too() -> None:
    row = {"messages": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "<think>greet</think>Hello."},
                        {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "<think>part</think>Bye."}]}
    turns, tok = example(row, PLAIN, traces=TraceFormat(mode="drop"))
    assert runs(tokenize_turns(turns, tok), tok)[0] == [f"Hello.{EOS}", f"Bye.{EOS}"]


# -- through `stillroom train sft` ---------------------------------------------------------------


def config(tmp_path: Path, template: str | None, rows: list[dict[str, Any]], **extra: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "student"
    tokenizer = tokenizer_with(template)
    tiny_llama(tokenizer, 4096).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    keys = {"student": str(folder), "data": "data.jsonl", "output_dir": "run", "max_steps": 1,
            "batch_size": 2, "max_length": 4096, **extra}
    text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items())
    return parse_sft_config(text, str(tmp_path / "sft.yaml"), tmp_path)


def test_build_trainer_labels_every_assistant_turn_and_records_the_tools(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer, facts = build_trainer(config(tmp_path, PLAIN, [TOOL_ROW, CHAT_ROW]))
    assert facts == {"rows": 2, "format": "messages",
                     "tools": {"rows_with_tools": 1, "rendering": "plain"}}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tok = trainer.processing_class
    texts = []
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        spans, current = [], []
        for token, label in zip(ids, labels, strict=True):
            if label != IGNORE:
                assert label == token
                current.append(token)
            elif current:
                spans.append(tok.decode(current))
                current = []
        if current:
            spans.append(tok.decode(current))
        texts.append(spans)
    assert texts[0][1:] == [f"Sunny.{EOS}", f"Welcome.{EOS}"]
    assert texts[0][0].startswith("<tool_call>") and texts[0][0].endswith(f"</tool_call>{EOS}")
    assert texts[1] == [f"Hello.{EOS}", f"2{EOS}"]


def test_train_turns_and_tool_format_are_checked_in_the_config() -> None:
    assert parse_sft_config("data: d\n").train_turns == "all"
    assert parse_sft_config("data: d\ntrain_turns: last\n").train_turns == "last"
    with pytest.raises(ConfigError) as caught:
        parse_sft_config("data: d\ntrain_turns: every\n", "sft.yaml")
    assert caught.value.key == "train_turns" and caught.value.line == 2
    assert parse_sft_config("data: d\ntool_format: plain\n").tool_format == "plain"
    with pytest.raises(ConfigError) as caught:
        parse_sft_config("data: d\ntool_format: hermes\n", "sft.yaml")
    assert caught.value.key == "tool_format"
