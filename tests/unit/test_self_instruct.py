"""Self-Instruct with a scripted model: prompts, parsing, every filter (dropped and kept), the
instance stage's branches and filters, lineage on every row, failed requests."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import LINEAGE_KEYS, derived_id
from stillroom.errors import ConfigError
from stillroom.generate.self_instruct import REFERENCE_BLACKLIST, SelfInstruct
from stillroom.generate.self_instruct_instances import SelfInstructInstances
from stillroom.generate.self_instruct_prompts import (
    HEADER,
    INPUT_FIRST_HEADER,
    OUTPUT_FIRST_HEADER,
    encode_instruction_prompt,
    parse_input_first,
    parse_instructions,
    parse_output_first,
)
from stillroom.llm.types import Completion, Request
from stillroom.pipeline.stage import StageContext
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

SEEDS = [row for _, row in iter_rows(resolve_input_path("builtin:self_instruct_seed_tasks"))]
Script = Callable[[Request, int], str]

# Instructions far from every seed task and from each other (ROUGE-L well under 0.7).
NOVEL = [
    "Suggest a name for a bakery that sells only sourdough bread.",
    "Convert the temperature from Fahrenheit to Kelvin and show each step.",
    "Summarize the story of a famous opera in two sentences.",
    "List five questions a journalist might ask a retired astronaut.",
    "Rewrite the sentence so that it sounds more polite to a customer.",
    "Estimate how many piano tuners work in a large city and explain why.",
    "Explain the rules of chess castling to a young beginner.",
    "Invent a riddle whose answer is the word umbrella.",
    "Compare the nutritional value of lentils and chickpeas briefly.",
    "Propose a weekly chore schedule for four roommates sharing a flat.",
    "Describe how a bill becomes a law in a parliamentary system.",
    "Translate the idiom into plain English and give its origin.",
]


@pytest.fixture(autouse=True)
def fresh_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend()
    fakes.CURRENT["default"] = backend
    return backend


def use(script: Script) -> ScriptedBackend:
    backend = ScriptedBackend(script)
    fakes.CURRENT["default"] = backend
    return backend


def continuation(*items: str) -> str:
    """What a completion model writes after "9.": the 9th item, then "\\n10. ...", ..."""
    text = " " + items[0]
    for number, item in enumerate(items[1:], 10):
        text += f"\n{number}. {item}"
    return text


def prompt_of(request: Request) -> str:
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    return str(request.messages[-1]["content"])


def is_instruction_request(request: Request) -> bool:
    return prompt_of(request).startswith(HEADER)


def run(
    stages: list[Any], tmp_path: Path, seeds: list[dict[str, Any]] | None = None, **options: Any
) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    pipeline = Pipeline(
        stages,
        input=seeds if seeds is not None else SEEDS,
        backends={"default": ScriptedConfig(max_retries=1)},
    )
    result = pipeline.run(tmp_path / "out", progress=False, max_failure_rate=1.0, **options)
    folder = OutputFolder(tmp_path / "out")
    return result, {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}


def assert_lineage(row: dict[str, Any], stage: str) -> dict[str, Any]:
    entry = row["metadata"][stage]
    assert set(LINEAGE_KEYS) <= set(entry), entry
    assert entry["method"] == "self_instruct"
    assert entry["template"].startswith("self_instruct.") and "@" in entry["template"]
    assert isinstance(row["id"], str) and row["id"]
    return entry  # type: ignore[no-any-return]


def ctx() -> StageContext:
    return StageContext("self_instruct", seed=0)


# ---------------------------------------------------------------------------------------------
# Prompt format


def test_the_first_prompts_show_eight_numbered_seeds_and_end_with_nine() -> None:
    seeds = [(row["id"], row["instruction"]) for row in SEEDS]
    plan = SelfInstruct().plan(ctx(), 1, 0, seeds, machine=[])
    lines = plan.prompt.split("\n")
    assert lines[0] == "Come up with a series of tasks:"
    assert [line.split(".", 1)[0] for line in lines[1:9]] == [str(n) for n in range(1, 9)]
    assert lines[9] == "9." and plan.prompt.endswith("\n9.")
    assert len(plan.seed_ids) == 8 and plan.machine_ids == []
    assert plan.request.prompt == plan.prompt  # a raw prompt, no chat template
    assert plan.request.params.temperature == 0.7 and plan.request.params.top_p == 0.5


def test_once_the_pool_has_machine_instructions_prompts_show_six_seeds_and_two_of_them() -> None:
    seeds = [(row["id"], row["instruction"]) for row in SEEDS]
    machine = [(f"m{i}", text) for i, text in enumerate(NOVEL[:5])]
    plan = SelfInstruct().plan(ctx(), 3, 1, seeds, machine)
    assert len(plan.seed_ids) == 6 and len(plan.machine_ids) == 2
    shown = re.findall(r"^\d+\. (.*)$", plan.prompt, flags=re.MULTILINE)
    assert len(shown) == 8
    assert sum(text in NOVEL for text in shown) == 2
    one = SelfInstruct().plan(ctx(), 1, 0, seeds, [machine[0]])
    assert len(one.machine_ids) == 1 and len(one.seed_ids) == 7


def test_sampling_depends_only_on_round_and_request() -> None:
    seeds = [(row["id"], row["instruction"]) for row in SEEDS]
    stage = SelfInstruct()
    assert stage.plan(ctx(), 2, 3, seeds, []).prompt == stage.plan(ctx(), 2, 3, seeds, []).prompt
    assert stage.plan(ctx(), 2, 3, seeds, []).prompt != stage.plan(ctx(), 2, 4, seeds, []).prompt
    assert stage.plan(ctx(), 2, 3, seeds, []).prompt != stage.plan(ctx(), 3, 3, seeds, []).prompt


def test_prompt_lines_are_whitespace_normalized_without_trailing_colon() -> None:
    prompt = encode_instruction_prompt(["Sort  the list\nbelow:", "Name a color."])
    assert prompt == "Come up with a series of tasks:\n1. Sort the list below\n2. Name a color.\n3."


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parsing_splits_the_continuation_at_numbered_items() -> None:
    text = (
        " name a  fruit\nthat is red.\n10. Second task here\n11 . Third one\n12.No space is glued"
    )
    assert parse_instructions(text) == [
        "Name a fruit that is red.",  # first letter upper-cased, the rest kept
        "Second task here",
        # the reference splits only at "\n<n>. " / "\n<n> . ": the rest stays on its item
        "Third one 12.No space is glued",
    ]
    assert parse_instructions("   \n10. ") == []
    assert parse_instructions(" Keep USA as is") == ["Keep USA as is"]


def test_a_chat_answer_restating_its_number_is_parsed_too() -> None:
    assert parse_instructions("9. Plan a trip\n10. Pack a bag", strip_leading_number=True) == [
        "Plan a trip",
        "Pack a bag",
    ]


# ---------------------------------------------------------------------------------------------
# Filters, one rule at a time


@pytest.mark.parametrize(
    ("dropped", "kept", "reason"),
    [
        ("Name three colors", "Name three primary colors", "too short (fewer than 4 words)"),
        (" ".join(["word"] * 151), " ".join(["word"] * 150), "too long (more than 150 words)"),
        ("Describe the image of a cat", "Describe the imagination of a cat", "blacklisted word"),
        (
            "Tell me how to go to the station",
            "Tell me where to go today please",
            "blacklisted word",
        ),
        ("Plot the sales of last year", "Summarize the plotline of Hamlet", "blacklisted word"),
        (
            "Write a program that sorts numbers",
            "Write a poem about programs and numbers",
            "starts with 'Write a program'",
        ),
        (
            "Write a PROGRAM to add two numbers",
            "Write an essay on the program",
            "starts with 'Write a program'",
        ),
        ('"Quote this sentence for me"', "Quote this sentence for me", "starts with punctuation"),
        (
            "Écris une phrase en français",
            "Ecris une phrase en francais",
            "starts with a non-ASCII character",
        ),
    ],
)
def test_each_rule_drops_its_case_and_keeps_the_other(dropped: str, kept: str, reason: str) -> None:
    stage = SelfInstruct()
    verdict = stage.filter(dropped)
    assert verdict is not None and verdict.reason == reason
    assert stage.filter(kept) is None


def test_the_blacklist_is_the_reference_codes_and_a_field() -> None:
    assert set(REFERENCE_BLACKLIST) == {
        "image",
        "images",
        "graph",
        "graphs",
        "picture",
        "pictures",
        "file",
        "files",
        "map",
        "maps",
        "draw",
        "plot",
        "go to",
    }
    stage = SelfInstruct(blacklist=["video"])
    assert stage.filter("Describe the video of a cat") is not None
    assert stage.filter("Describe the image of a cat") is None


def test_filters_in_a_run_drop_with_reasons_and_keep_the_rest(tmp_path: Path) -> None:
    response = continuation(
        NOVEL[0],
        "Name three colors",  # too short
        "Describe the picture of a dog sleeping",  # blacklist
        "Write a program to reverse a string",  # prefix
        "- Make a shopping list for a week",  # punctuation
        "¿Qué hora es en Madrid ahora mismo?",  # non-ASCII
        "Generate a one-sentence description for each of the following people.",  # seed copy
        NOVEL[1],
        NOVEL[1].replace("each step", "every step"),  # near-duplicate of the one just kept
    )
    use(lambda request, attempt: response)
    stage = SelfInstruct(num_instructions=3, requests_per_round=1, max_rounds=1)
    result, rows = run([stage], tmp_path)
    assert [row["instruction"] for row in rows["data"]] == [NOVEL[0], NOVEL[1]]
    reasons = {row["instruction"]: row["drop_reason"] for row in rows["dropped"]}
    assert reasons == {
        "Name three colors": "too short (fewer than 4 words)",
        "Describe the picture of a dog sleeping": "blacklisted word",
        "Write a program to reverse a string": "starts with 'Write a program'",
        "- Make a shopping list for a week": "starts with punctuation",
        "¿Qué hora es en Madrid ahora mismo?": "starts with a non-ASCII character",
        "Generate a one-sentence description for each of the following people.": (
            "ROUGE-L > 0.7 with the pool"
        ),
        NOVEL[1].replace("each step", "every step"): "ROUGE-L > 0.7 with the pool",
    }
    by_text = {row["instruction"]: row for row in rows["dropped"]}
    seed_copy = by_text["Generate a one-sentence description for each of the following people."]
    assert seed_copy["most_similar_id"] == "seed_task_2" and seed_copy["rouge_l"] == 1.0
    near = by_text[NOVEL[1].replace("each step", "every step")]
    kept_ids = {row["instruction"]: row["id"] for row in rows["data"]}
    assert near["most_similar_id"] == kept_ids[NOVEL[1]]  # kept earlier in the same response
    assert 0.7 < near["rouge_l"] < 1.0 and near["most_similar"] == NOVEL[1]
    assert by_text["Describe the picture of a dog sleeping"]["blacklisted"] == "picture"
    assert result.counts == {"data": 2, "dropped": 7, "failed": 0}


def test_a_truncated_response_is_discarded_whole_or_only_its_last_item(tmp_path: Path) -> None:
    class CutShort(ScriptedBackend):
        async def generate(self, request: Request) -> Completion:
            completion = await super().generate(request)
            completion.finish_reason = "length"
            return completion

    fakes.CURRENT["default"] = CutShort(
        lambda r, a: continuation(NOVEL[0], NOVEL[1], "Describe the")
    )
    _, rows = run([SelfInstruct(num_instructions=5, max_rounds=1, requests_per_round=1)], tmp_path)
    assert rows["data"] == []
    assert [r["drop_reason"] for r in rows["dropped"]] == ["response cut at max_tokens"] * 3

    stage = SelfInstruct(
        num_instructions=5, max_rounds=1, requests_per_round=1, discard_truncated=False
    )
    _, rows = run([stage], tmp_path / "second")
    assert [r["instruction"] for r in rows["data"]] == [NOVEL[0], NOVEL[1]]
    assert [(r["instruction"], r["drop_reason"]) for r in rows["dropped"]] == [
        ("Describe the", "response cut at max_tokens")
    ]


# ---------------------------------------------------------------------------------------------
# Rounds, quota, failures


def test_rounds_stop_when_enough_instructions_are_kept(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: continuation(*NOVEL[request.sample * 3 :][:3]))
    stage = SelfInstruct(num_instructions=4, requests_per_round=1)
    _, rows = run([stage], tmp_path)
    assert [row["instruction"] for row in rows["data"]] == NOVEL[:4]
    assert len(backend.calls) == 2  # two rounds of one request: 3 + 1 kept
    assert [(r["instruction"], r["drop_reason"]) for r in rows["dropped"]] == [
        (NOVEL[4], "num_instructions reached"),
        (NOVEL[5], "num_instructions reached"),
    ]
    # round 2 shows the machine instructions of round 1
    second = prompt_of(backend.calls[1])
    assert sum(text in second for text in NOVEL[:3]) == 2
    steps = [row["metadata"]["self_instruct"]["step"] for row in rows["data"]]
    assert steps == ["instruction_generation round 1"] * 3 + ["instruction_generation round 2"]


def test_rounds_stop_at_max_rounds(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: continuation("Name three colors"))
    result, rows = run(
        [SelfInstruct(num_instructions=5, requests_per_round=3, max_rounds=2)], tmp_path
    )
    assert len(backend.calls) == 6 and rows["data"] == []
    assert result.counts["dropped"] == 6


def test_requests_of_a_round_go_out_together(tmp_path: Path) -> None:
    backend = ScriptedBackend(
        lambda request, attempt: continuation(NOVEL[request.sample]), latency=0.02
    )
    fakes.CURRENT["default"] = backend
    run([SelfInstruct(num_instructions=4, requests_per_round=4)], tmp_path)
    assert backend.max_in_flight == 4


def test_a_failed_request_becomes_a_failed_row_and_the_rest_go_on(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.sample == 1:
            raise fakes.server_error(500)
        return continuation(NOVEL[request.sample])

    use(script)
    result, rows = run(
        [SelfInstruct(num_instructions=2, requests_per_round=3, max_rounds=1)], tmp_path
    )
    assert [row["instruction"] for row in rows["data"]] == [NOVEL[0], NOVEL[2]]
    [failed] = rows["failed"]
    assert failed["stage"] == "self_instruct" and failed["error_type"] == "InternalServerError"
    assert failed["attempts"] == 2 and failed["prompt"].startswith(HEADER)
    entry = assert_lineage(failed, "self_instruct")
    assert entry["request_index"] == 1 and entry["round"] == 1
    assert result.failures_by_reason == {"self_instruct: InternalServerError": 1}


def test_an_empty_response_fails_and_one_without_instructions_is_dropped(tmp_path: Path) -> None:
    use(lambda request, attempt: ["   ", " \n10. ", continuation(NOVEL[0])][request.sample])
    _, rows = run([SelfInstruct(num_instructions=1, requests_per_round=3, max_rounds=1)], tmp_path)
    assert [row["instruction"] for row in rows["data"]] == [NOVEL[0]]
    assert [row["error_type"] for row in rows["failed"]] == ["EmptyCompletion"]
    assert [row["drop_reason"] for row in rows["dropped"]] == ["no instruction in the response"]
    for row in rows["failed"] + rows["dropped"]:
        assert_lineage(row, "self_instruct")


def test_a_rerun_gives_the_same_rows_from_the_cache(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: continuation(*NOVEL[request.sample * 2 :][:2]))
    stage = SelfInstruct(num_instructions=5, requests_per_round=2)
    _, first = run([stage], tmp_path / "a")
    calls = len(backend.calls)
    _, second = run([SelfInstruct(num_instructions=5, requests_per_round=2)], tmp_path / "b")
    assert len(backend.calls) == calls  # every answer came from the request cache
    assert first["data"] == second["data"] and first["dropped"] == second["dropped"]


def test_chat_prompt_format_and_backends_without_raw_prompts() -> None:
    from stillroom.llm.anthropic_backend import AnthropicConfig

    config = AnthropicConfig(model="claude")
    with pytest.raises(ConfigError):
        SelfInstruct().check_backends({"default": config})
    SelfInstruct(prompt_format="chat").check_backends({"default": config})
    seeds = [(row["id"], row["instruction"]) for row in SEEDS]
    plan = SelfInstruct(prompt_format="chat").plan(ctx(), 1, 0, seeds, [])
    assert plan.request.messages == [{"role": "user", "content": plan.prompt}]


# ---------------------------------------------------------------------------------------------
# Instances


def instance_script(clf: dict[str, str], answers: dict[str, str]) -> Script:
    """Answers the classification question from ``clf`` and instance prompts from ``answers``,
    each keyed by the instruction."""

    def script(request: Request, attempt: int) -> str:
        prompt = prompt_of(request)
        instruction = prompt.rsplit("Task: ", 1)[1].split("\n", 1)[0]
        if prompt.endswith("Is it classification?"):
            return clf.get(instruction, " No")
        return answers[instruction]

    return script


def task(instruction: str, **extra: Any) -> dict[str, Any]:
    return {"id": derived_id("t", instruction), "instruction": instruction, **extra}


def test_classification_picks_output_first_and_others_input_first(tmp_path: Path) -> None:
    clf_task = "Tell whether the review is positive or negative."
    gen_task = "Suggest a name for a new bakery."
    backend = use(
        instance_script(
            {clf_task: " Yes"},
            {
                clf_task: "Class label: Positive\nReview: Lovely food.\n"
                "Class label: Negative\nReview: Cold soup.",
                gen_task: "Output: Crumb & Co.",
            },
        )
    )
    result, rows = run([SelfInstructInstances()], tmp_path, seeds=[task(clf_task), task(gen_task)])
    prompts = [prompt_of(call) for call in backend.calls]
    output_first = [p for p in prompts if p.startswith(OUTPUT_FIRST_HEADER)]
    input_first = [p for p in prompts if p.startswith(INPUT_FIRST_HEADER)]
    assert len(output_first) == 1 and output_first[0].endswith(f"Task: {clf_task}\n")
    assert "Class label:" in output_first[0]
    assert len(input_first) == 1 and input_first[0].endswith(f"Task: {gen_task}\n")
    assert "Example 1\n" in input_first[0] and "Example 2\n" in input_first[0]
    clf_prompts = [p for p in prompts if p.endswith("Is it classification?")]
    assert len(clf_prompts) == 2
    assert clf_prompts[0].startswith(
        "Can the following task be regarded as a classification task with finite output labels?"
    )
    assert (
        "Is it classification? Yes" in clf_prompts[0]
        and "Is it classification? No" in clf_prompts[0]
    )
    data = sorted(rows["data"], key=lambda r: (r["instruction"], r["output"]))
    assert [(r["is_classification"], r["input"], r["output"]) for r in data] == [
        (False, "", "Crumb & Co."),
        (True, "Review: Cold soup.", "Negative"),
        (True, "Review: Lovely food.", "Positive"),
    ]
    for row in data:
        entry = assert_lineage(row, "self_instruct_instances")
        assert entry["generation"] == (
            "output_first" if row["is_classification"] else "input_first"
        )
        assert entry["classification"]["source"] == "model"
        assert row["completion"] == row["output"]
        assert row["prompt"] == (
            f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
        )
    assert result.counts == {"data": 3, "dropped": 0, "failed": 0}


def test_a_row_that_already_says_it_is_classification_skips_the_question(tmp_path: Path) -> None:
    backend = use(instance_script({}, {"Pick the odd one out.": "Class label: B\nA, B, C"}))
    _, rows = run(
        [SelfInstructInstances()],
        tmp_path,
        seeds=[task("Pick the odd one out.", is_classification=True)],
    )
    assert len(backend.calls) == 1 and rows["data"][0]["output"] == "B"
    assert rows["data"][0]["input"] == "A, B, C"


def test_instance_parsing() -> None:
    assert parse_input_first(
        "Example 1\nInput: 2+2\nOutput: 4\nExample 2\nList: [3, 1]\nOutput: [1, 3]"
    ) == [("2+2", "4"), ("List: [3, 1]", "[1, 3]")]
    assert parse_input_first("Output: Paris") == [("", "Paris")]
    assert parse_input_first("Output 1: a\nInput 2: b\nOutput 2: c") == [("", "a")]
    assert parse_input_first("just some words") == []
    assert parse_output_first("Class label: Yes\nSentence: hi\nthere\nClass label: No") == [
        ("Sentence: hi\nthere", "Yes"),
        ("", "No"),
    ]
    assert parse_output_first("Input: x\nOutput: y") == []


INSTR = "Solve the arithmetic problem and give only the number."


def instances_of(answer: str, tmp_path: Path, **fields: Any) -> dict[str, list[dict[str, Any]]]:
    use(instance_script({}, {INSTR: answer}))
    stage = SelfInstructInstances(**fields)
    _, rows = run([stage], tmp_path, seeds=[task(INSTR, is_classification=False)])
    for row in rows["data"] + rows["dropped"]:
        entry = assert_lineage(row, "self_instruct_instances")
        assert entry["parent_id"] == task(INSTR)["id"]
    return rows


def examples(*pairs: tuple[str, str]) -> str:
    return "\n".join(f"Example {i}\nInput: {a}\nOutput: {b}" for i, (a, b) in enumerate(pairs, 1))


@pytest.mark.parametrize(
    ("bad", "good", "reason"),
    [
        (("2+2", "2+2"), ("2+2", "4"), "instance: input equals output"),
        (("3+3", ""), ("3+3", "6"), "instance: empty output"),
        (("4+4", "The answer is:"), ("4+4", "8"), "instance: output ends with ':'"),
        (("Problem:", "10"), ("5+5", "10"), "instance: input ends with ':'"),
    ],
)
def test_each_instance_filter_drops_its_case_and_keeps_the_other(
    bad: tuple[str, str], good: tuple[str, str], reason: str, tmp_path: Path
) -> None:
    rows = instances_of(examples(bad, good), tmp_path)
    assert [(r["input"], r["output"]) for r in rows["data"]] == [good]
    assert [(r["input"], r["output"], r["drop_reason"]) for r in rows["dropped"]] == [
        (*bad, reason)
    ]


def test_an_instance_filter_can_be_switched_off(tmp_path: Path) -> None:
    rows = instances_of(examples(("2+2", "2+2")), tmp_path, drop_input_equals_output=False)
    assert [(r["input"], r["output"]) for r in rows["data"]] == [("2+2", "2+2")]


def test_a_task_whose_same_input_has_different_outputs_is_dropped(tmp_path: Path) -> None:
    rows = instances_of(examples(("2+2", "4"), ("1+1", "2"), ("2+2", "5")), tmp_path)
    assert rows["data"] == []
    reasons = sorted(r["drop_reason"] for r in rows["dropped"])
    assert reasons == ["instance: task has conflicts"] * 3 + [
        "task: the same input with different outputs"
    ]


def test_the_same_input_with_the_same_output_is_kept_once(tmp_path: Path) -> None:
    rows = instances_of(examples(("2+2", "4"), ("1+1", "2"), ("2+2", "4")), tmp_path)
    assert [(r["input"], r["output"]) for r in rows["data"]] == [("2+2", "4"), ("1+1", "2")]
    assert [r["drop_reason"] for r in rows["dropped"]] == ["instance: duplicate"]


def test_at_most_max_instances_per_task(tmp_path: Path) -> None:
    seven = examples(*[(f"{i}+{i}", str(2 * i)) for i in range(1, 8)])
    rows = instances_of(seven, tmp_path / "a")
    assert len(rows["data"]) == 5
    assert [r["drop_reason"] for r in rows["dropped"]] == ["instance: over max_instances"] * 2
    rows = instances_of(seven, tmp_path / "b", max_instances=10)
    assert len(rows["data"]) == 7 and rows["dropped"] == []


def test_a_task_with_no_instance_is_dropped_with_its_raw_answer(tmp_path: Path) -> None:
    rows = instances_of("I do not know.", tmp_path / "a")
    assert rows["data"] == []
    [dropped] = rows["dropped"]
    assert dropped["drop_reason"] == "task: no instance in the response"
    assert dropped["raw_instances"] == "I do not know."


def test_a_task_whose_instances_all_fail_the_filters_is_dropped(tmp_path: Path) -> None:
    rows = instances_of(examples(("2+2", "2+2")), tmp_path)
    assert sorted(r["drop_reason"] for r in rows["dropped"]) == [
        "instance: input equals output",
        "task: no instance survived the filters",
    ]


def test_a_truncated_instance_answer_loses_its_last_instance(tmp_path: Path) -> None:
    class CutShort(ScriptedBackend):
        async def generate(self, request: Request) -> Completion:
            completion = await super().generate(request)
            completion.finish_reason = "length"
            return completion

    fakes.CURRENT["default"] = CutShort(
        instance_script({}, {INSTR: examples(("1+1", "2"), ("2+2", "4"))})
    )
    _, rows = run([SelfInstructInstances()], tmp_path, seeds=[task(INSTR, is_classification=False)])
    assert [r["output"] for r in rows["data"]] == ["2"]
    assert [r["drop_reason"] for r in rows["dropped"]] == ["instance: cut at max_tokens"]


# ---------------------------------------------------------------------------------------------
# Both stages together


def test_the_two_stages_together_keep_lineage_on_every_row_and_counts_add_up(
    tmp_path: Path,
) -> None:
    def script(request: Request, attempt: int) -> str:
        prompt = prompt_of(request)
        if prompt.startswith(HEADER):
            return continuation(
                NOVEL[2 * request.sample], "Draw a map", NOVEL[2 * request.sample + 1]
            )
        instruction = prompt.rsplit("Task: ", 1)[1].split("\n", 1)[0]
        if prompt.endswith("Is it classification?"):
            return " Yes" if "Compare" in instruction else " No"
        if "Compare" in instruction:
            return (
                "Class label: Lentils\nQuestion: more protein?\n"
                "Class label: Chickpeas\nQuestion: more fat?"
            )
        if "riddle" in instruction:
            return "nothing useful"
        return examples(("a", "b"), ("c", "c"))

    use(script)
    stages = [SelfInstruct(num_instructions=10, requests_per_round=2), SelfInstructInstances()]
    result, rows = run(stages, tmp_path)
    instructions = {r["instruction"] for r in rows["data"]}
    assert len(instructions) == 9  # NOVEL[:10] less the riddle, which has no instance
    for row in rows["data"]:
        assert row["metadata"]["self_instruct"]["step"].startswith("instruction_generation round")
        entry = assert_lineage(row, "self_instruct_instances")
        assert entry["seed_id"] is None  # machine-written: no seed at its root
        assert entry["parent_id"].startswith("si-")  # the instruction row it was made from
        assert row["is_classification"] == ("Compare" in row["instruction"])
    for row in rows["dropped"]:
        stage = row["stage"]
        entry = assert_lineage(row, stage)
        assert entry["step"] == "instances" or entry["step"].startswith("instruction_generation")
    parents = {r["metadata"]["self_instruct_instances"]["parent_id"] for r in rows["data"]}
    dropped_tasks = {
        r["metadata"]["self_instruct_instances"]["parent_id"]
        for r in rows["dropped"]
        if r["drop_reason"].startswith("task:")
    }
    assert len(parents) + len(dropped_tasks) == 10  # every kept instruction accounted for
    assert len({r["id"] for r in rows["data"] + rows["dropped"]}) == len(rows["data"]) + len(
        rows["dropped"]
    )
    assert result.counts["failed"] == 0


def test_few_shot_fields_set_after_the_pipeline_is_built_take_effect(tmp_path: Path) -> None:
    backend = use(instance_script({}, {"Name a planet.": "Output: Mars"}))
    stage = SelfInstructInstances(classification_examples=10)
    pipeline = Pipeline(
        [stage], input=[task("Name a planet.")], backends={"default": ScriptedConfig()}
    )  # builds the templates
    stage.classification_examples = 4
    stage.input_first_examples = 2
    pipeline.run(tmp_path / "out", progress=False)
    question, instances = (prompt_of(call) for call in backend.calls)
    assert question.count("Is it classification?") == 4 + 1
    assert instances.count("Task: ") == 2 + 1
