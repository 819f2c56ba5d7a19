"""`stillroom eval` with thinking modes: the prompts of `thinking: on|off` (tags, or the chat
template's own enable_thinking switch), the answer part graded and the trace recorded, a trace
that never ends failing with its reason, and the per-model summary and extra paired tests. The
model is a tiny random Llama over a byte-level tokenizer (tests/tiny_models.py) with small chat
templates written here; nothing downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.evaluate import Generation, evaluate, parse_eval_config, summary_rows
from stillroom.evaluate.run import answer_part

PLAIN = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# A template with its own switch, closing the trace empty when thinking is off (as Qwen3's).
SWITCH = PLAIN.replace(
    "<assistant>{% endif %}",
    "<assistant>{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")
# A template that opens the trace itself (as DeepSeek-R1's distills do).
OPENS = PLAIN.replace("<assistant>{% endif %}", "<assistant><think>\n{% endif %}")


# -- config ------------------------------------------------------------------------------------


def test_thinking_reads_bare_yaml_on_and_off() -> None:
    config = parse_eval_config(
        "data: d.jsonl\nmodels:\n  a: {model: embedded, thinking: on}\n"
        "  b: {model: embedded, thinking: off}\n  c: embedded\n"
        "paired_tests: [{a: a, b: b}, {a: a, b: c}]\n", "eval.yaml")
    assert [config.models[n].thinking for n in "abc"] == ["on", "off", None]
    assert config.all_pairs() == [("a", "b"), ("a", "c")]  # the default pair is not repeated


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("models:\n  a: {column: completion, thinking: on}\n", "models.a",
         "already written"),
        ("models:\n  a: {model: embedded, thinking: off, budget_forcing: true}\n",
         "models.a.thinking", "budget forcing opens"),
        ("models:\n  a: {model: embedded, thinking: maybe}\n", "models.a.thinking", None),
        ("models:\n  a: embedded\n  b: embedded\npaired_tests: [{a: a, b: z}]\n",
         "paired_tests.0.b", "no model named 'z'"),
    ],
)
def test_bad_thinking_options_are_config_errors(text: str, key: str, message: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_eval_config("data: d.jsonl\n" + text, "eval.yaml")
    assert caught.value.key == key
    if message:
        assert message in str(caught.value)


# -- the answer part ---------------------------------------------------------------------------


def test_the_answer_part_is_graded_and_the_trace_kept() -> None:
    inline = Generation("<think>\nadd them\n</think>\n\n4", tokens=12, finish_reason="stop")
    answer, trace = answer_part(inline, None, "<think>", "</think>", False)
    assert answer == "4"
    assert trace["reasoning"] == "add them" and trace["reasoning_ended"]
    assert trace["reasoning_tokens_estimated"] and 0 < trace["reasoning_tokens"] < 12

    # The prompt opened the trace: the text starts inside it.
    answer, trace = answer_part(Generation("add them</think>4", 5, "stop"), None,
                                "<think>", "</think>", True)
    assert (answer, trace["reasoning"]) == ("4", "add them")

    # Cut while thinking: no answer, and the record says so.
    answer, trace = answer_part(Generation("add them and then", 5, "length"), None,
                                "<think>", "</think>", True)
    assert answer == "" and trace["reasoning_ended"] is False

    # A trace the server returned apart is taken as it is, with its own count.
    parsed = Generation("4", 9, "stop", reasoning="add", reasoning_tokens=7)
    answer, trace = answer_part(parsed, None, "<think>", "</think>", False)
    assert (answer, trace["reasoning_tokens"]) == ("4", 7)
    assert "reasoning_tokens_estimated" not in trace

    assert answer_part(Generation("just 4", 2, "stop"), None, "<think>", "</think>", False) == (
        "just 4", {})


def test_a_column_is_graded_on_its_answer_and_an_unended_trace_fails_with_its_reason() -> None:
    rows = [
        # Graded whole, the trace's boxed 5 would be taken as the answer.
        {"id": "a", "prompt": "2+2?", "answer": "4",
         "completion": "<think>maybe \\boxed{5}? no.</think>\\boxed{4}"},
        {"id": "b", "prompt": "3+3?", "answer": "6", "completion": "<think>six, I think"},
        {"id": "c", "prompt": "1+1?", "answer": "2", "completion": "\\boxed{2}"},
    ]
    result = evaluate({"models": {"teacher": {"column": "completion"}}, "verifier": "math",
                       "perplexity": False}, rows=rows)
    outputs = [item["outputs"]["teacher"] for item in result["items"]]
    assert [o["passed"] for o in outputs] == [True, False, True]
    assert outputs[0]["output"] == "\\boxed{4}" and outputs[0]["reasoning"] == "maybe \\boxed{5}? no."
    assert "never ended" in outputs[1]["reason"] and outputs[1]["output"] == ""
    assert "reasoning" not in outputs[2]
    summary = result["models"]["teacher"]["reasoning"]
    assert summary["with_trace"] == 2 and summary["unended"] == 1
    assert summary["mean_tokens"] is None and summary["mean_chars"] > 0  # no token count here
    assert summary_rows(result)[0]["thinking"] == "as is: 16 chars, 1 unended"


# -- prompts and a real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch

    from tests.tiny_models import byte_tokenizer, tiny_llama

    torch.set_num_threads(1)
    tokenizer = byte_tokenizer(bos=False)
    tokenizer.add_special_tokens({"eos_token": "<eos>"})

    def folder(template: str) -> Path:
        tokenizer.chat_template = template
        path = tmp_path_factory.mktemp("model")
        tiny_llama(tokenizer, 512).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return folder


@pytest.mark.parametrize(
    ("template", "on", "off", "opened"),
    [
        (PLAIN, "<assistant><think>\n", "<assistant><think>\n\n</think>\n\n", True),
        (SWITCH, "<assistant>", "<assistant><think>\n\n</think>\n\n", False),
        (OPENS, "<assistant><think>\n", "<assistant><think>\n\n</think>\n\n", True),
    ],
    ids=["tags", "switch", "opened-by-template"],
)
def test_thinking_prompts(tiny: Any, template: str, on: str, off: str, opened: bool) -> None:
    from stillroom.evaluate.generation import TransformersGenerator, thinking_prompts

    generator = TransformersGenerator.load(tiny(template), name="m")
    try:
        turns = [[{"role": "user", "content": "2+2?"}]]
        assert generator.thinking_switch() == (template == SWITCH)
        prompts, was_opened = thinking_prompts(generator, turns, "on", "<think>", "</think>")
        assert prompts == ["<user>2+2?</user>\n" + on] and was_opened == opened
        prompts, was_opened = thinking_prompts(generator, turns, "off", "<think>", "</think>")
        assert prompts == ["<user>2+2?</user>\n" + off] and not was_opened
    finally:
        generator.close()


def test_one_model_with_thinking_on_off_and_as_is(tiny: Any) -> None:
    path = str(tiny(PLAIN))
    rows = [{"id": str(i), "prompt": f"{i}+{i}?", "answer": str(2 * i)} for i in range(3)]
    result = evaluate({
        "models": {"think": {"model": path, "thinking": "on"},
                   "no_think": {"model": path, "thinking": "off"},
                   "as_is": {"model": path}},
        "generation": {"max_new_tokens": 6}, "perplexity": False,
        "paired_tests": [{"a": "think", "b": "as_is"}],
    }, rows=rows)
    think = result["models"]["think"]["reasoning"]
    # A random byte model does not close its trace in 6 tokens: every answer fails, saying why.
    assert think["thinking"] == "on" and think["with_trace"] == 3 and think["unended"] == 3
    assert not think["tokens_estimated"] and 0 < think["mean_tokens"] <= 6
    for item in result["items"]:
        out = item["outputs"]["think"]
        assert out["output"] == "" and not out["passed"] and "never ended" in out["reason"]
        assert out["reasoning_tokens"] == out["tokens"]  # all of it was trace
    assert result["models"]["no_think"]["reasoning"]["thinking"] == "off"
    assert result["models"]["as_is"]["reasoning"] is None
    assert [t["models"] for t in result["paired_tests"]] == [["think", "no_think"],
                                                             ["think", "as_is"]]
    assert result["paired_test"] == result["paired_tests"][0]
    cells = [row["thinking"] for row in summary_rows(result)]
    assert cells[0] == f"on: {think['mean_tokens']:.0f} tok, 3 unended" and cells[1].startswith("off: ") and cells[2] == "-"


def test_a_template_that_opens_the_trace_is_read_as_opened_without_thinking(tiny: Any) -> None:
    # No `thinking:` key, but the template's generation prompt ends with <think> (R1-style):
    # the text starts inside the trace, and one cut at the token limit is no answer to grade.
    path = str(tiny(OPENS))
    rows = [{"id": str(i), "prompt": f"{i}+{i}?", "answer": str(2 * i)} for i in range(2)]
    result = evaluate({"models": {"r1": {"model": path}}, "generation": {"max_new_tokens": 6},
                       "perplexity": False}, rows=rows)
    summary = result["models"]["r1"]["reasoning"]
    assert summary["thinking"] is None and summary["with_trace"] == 2 and summary["unended"] == 2
    for item in result["items"]:
        out = item["outputs"]["r1"]
        assert out["output"] == "" and not out["passed"] and "never ended" in out["reason"]


def test_opened_by_template_needs_a_prompt_rendered_in_process() -> None:
    from stillroom.evaluate.run import opened_by_template

    class Backend:
        renders_chat_template = False

    class Client:
        backend = Backend()

    class Server:  # a chat server renders its own template: unknown here, not guessed
        client = Client()

        def render(self, turns: Any) -> str:
            raise AssertionError("a chat server's template is not rendered here")

    assert opened_by_template(Server(), [[{"role": "user", "content": "?"}]], "<think>") == [False]

    class InProcess(Backend):
        renders_chat_template = True

    class Engine(Server):
        client = type("C", (), {"backend": InProcess()})()

        def render(self, turns: Any) -> str:
            return "<assistant>" + ("<think>\n" if turns[0]["content"] == "r1" else "")

    turns = [[{"role": "user", "content": "r1"}], [{"role": "user", "content": "plain"}]]
    assert opened_by_template(Engine(), turns, "<think>") == [True, False]


def test_a_lone_closing_tag_in_an_answer_is_graded_as_written():
    """Without an opened prompt, only a text that begins with the start tag holds a trace, as
    for the verifiers: an answer that quotes `</think>` is not cut there."""
    from stillroom.evaluate.generation import Generation
    from stillroom.evaluate.run import answer_part

    quoted = Generation(text="Use </think> to close it; the sum is 4", tokens=12,
                        finish_reason="stop")
    assert answer_part(quoted, None, "<think>", "</think>", False) == (quoted.text, {})
    opened, record = answer_part(quoted, None, "<think>", "</think>", True)
    assert opened == "to close it; the sum is 4" and record["reasoning"] == "Use"
    leading = Generation(text="<think>add</think> 4", tokens=5, finish_reason="stop")
    answer, record = answer_part(leading, None, "<think>", "</think>", False)
    assert answer == "4" and record["reasoning"] == "add"
