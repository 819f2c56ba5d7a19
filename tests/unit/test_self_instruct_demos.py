"""Self-Instruct instance generation against the reference code (yizhongw/self-instruct): the
few-shot demos show every label of a classification task and several examples of the others, as
``self_instruct/templates/instance_gen_template.py`` does, and an answer with several instances
per task is split as ``prepare_for_finetuning.py``'s ``parse_instances_for_*`` split it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import derived_id
from stillroom.errors import ConfigError
from stillroom.generate.self_instruct_instances import SelfInstructInstances, demo_instances
from stillroom.generate.self_instruct_prompts import (
    INPUT_FIRST_HEADER,
    OUTPUT_FIRST_HEADER,
    parse_input_first,
    parse_output_first,
)
from stillroom.llm.types import Request
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

DEMOS = [row for _, row in iter_rows(resolve_input_path("builtin:self_instruct_instance_demos"))]


def demo_block(prompt: str, instruction: str) -> str:
    """The part of a few-shot prompt that shows one task, up to the next task."""
    start = prompt.index(f"Task: {instruction}\n")
    end = prompt.find("\n\nTask: ", start)
    return prompt[start:end]


def normalized(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# The demos


def test_the_builtin_demos_are_the_reference_templates_tasks() -> None:
    clf = [row for row in DEMOS if row["is_classification"]]
    gen = [row for row in DEMOS if not row["is_classification"]]
    assert (len(clf), len(gen)) == (16, 11)  # the reference template's tasks
    assert len({row["id"] for row in DEMOS}) == len(DEMOS)
    labels = [[i["output"] for i in row["instances"]] for row in clf]
    assert labels[0] == ["mixed", "Positive", "Negative"]
    assert labels[6] == ["C", "D", "A", "B"]
    assert sum(len(row["instances"]) > 1 for row in clf) == 14
    assert sum(len(row["instances"]) > 1 for row in gen) == 4


def test_the_rendered_demos_are_the_reference_templates_up_to_whitespace() -> None:
    """The few-shot body (everything between our header and the asked task) has the reference
    template's text, word for word: the hashes are of the reference's two templates (header and
    trailing "Task:" removed, whitespace runs as one space), commit a69e741. Only whitespace
    differs: a stray double or trailing space, and one multi-line output starting on its own
    line."""
    reference = {
        "output_first": "351fe1402f7e9d287da3ca4723f4c26b7994b3997aba874313bc2e03bf92c37f",
        "input_first": "2d319396c9c2454ec8d40c7bf74a601ddf9bfcab458025e48474e1bea65b944e",
    }
    headers = {"output_first": OUTPUT_FIRST_HEADER, "input_first": INPUT_FIRST_HEADER}
    templates = SelfInstructInstances().templates()
    for name, digest in reference.items():
        prompt = templates[name].format(instruction="ASKED")
        assert prompt.startswith(headers[name] + "\n\n") and prompt.endswith("Task: ASKED\n")
        body = prompt[len(headers[name]) :].removesuffix("Task: ASKED\n")
        assert hashlib.sha256(normalized(body).encode()).hexdigest() == digest, name


def test_the_output_first_prompt_shows_every_label_of_each_classification_task() -> None:
    prompt = SelfInstructInstances().templates()["output_first"].format(instruction="ASKED")
    for row in (r for r in DEMOS if r["is_classification"]):
        block = demo_block(prompt, " ".join(row["instruction"].split()))
        shown = re.findall(r"^Class label: (.*)$", block, flags=re.MULTILINE)
        assert shown == [i["output"] for i in row["instances"]], row["instruction"]
    block = demo_block(
        prompt, "Classify the sentiment of the sentence into positive, negative, or mixed."
    )
    assert block.splitlines()[1:] == [
        "Class label: mixed",
        "Sentence: I enjoy the flavor of the restaurant but their service is too slow.",
        "Class label: Positive",
        "Sentence: I had a great day today. The weather was beautiful and I spent time with "
        "friends and family.",
        "Class label: Negative",
        "Sentence: I was really disappointed by the latest superhero movie. I would not "
        "recommend it to anyone.",
    ]


def test_the_input_first_prompt_gives_tasks_several_examples() -> None:
    prompt = SelfInstructInstances().templates()["input_first"].format(instruction="ASKED")
    assert demo_block(prompt, "Sort the given list ascendingly.").splitlines()[1:] == [
        "Example 1",
        "List: [10, 92, 2, 5, -4, 92, 5, 101]",
        "Output: [-4, 2, 5, 5, 10, 92, 92, 101]",
        "Example 2",
        "Input 2 - List: [9.99, 10, -5, -1000, 5e6, 999]",
        "Output: [-1000, -5, 9.99, 10, 999, 5e6]",
    ]
    assert prompt.count("Example 2\n") == 4
    # A task with no input shows its output alone, as the reference does.
    assert demo_block(prompt, "Converting 85 F to Celsius.").endswith("\nOutput: 85°F = 29.44°C")


def write_tasks(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def instances(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"input": given, "output": output} for given, output in pairs]


OWN_TASKS = [
    {
        "instruction": "Is the number odd or even?",
        "is_classification": True,
        "instances": instances(("7", "Odd"), ("12", "Even")),
    },
    {
        "instruction": "Double the number.",
        "is_classification": False,
        "instances": instances(("3", "6"), ("Number: 10", "20"), ("x" * 300, "y")),
    },
]


def test_own_seed_tasks_with_several_instances_make_the_demos(tmp_path: Path) -> None:
    seeds = write_tasks(tmp_path / "seeds.jsonl", OWN_TASKS)
    stage = SelfInstructInstances(seed_tasks=seeds, instance_demos=None)
    templates = stage.templates()
    clf = templates["output_first"].format(instruction="ASKED")
    assert demo_block(clf, "Is the number odd or even?").splitlines()[1:] == [
        "Class label: Odd",
        "Input: 7",  # a bare input gets a field name; one that has its own keeps it
        "Class label: Even",
        "Input: 12",
    ]
    gen = templates["input_first"].format(instruction="ASKED")
    block = demo_block(gen, "Double the number.")
    assert block.splitlines()[1:7] == [
        "Example 1",
        "Input: 3",
        "Output: 6",
        "Example 2",
        "Number: 10",
        "Output: 20",
    ]
    assert "Example 3\n" in block
    # The reference code's demos unless told otherwise; the classification question keeps
    # using the seed tasks.
    default = SelfInstructInstances(seed_tasks=seeds).templates()
    assert "Is the number odd or even?" not in default["output_first"].text
    assert "Task: Is the number odd or even?" in default["classification"].text


def test_max_example_chars_leaves_out_long_instances_and_whole_classification_tasks(
    tmp_path: Path,
) -> None:
    clf_task = {**OWN_TASKS[0], "instances": instances(("7", "Odd"), ("1" * 300, "Even"))}
    assert demo_instances(clf_task, None) == [("7", "Odd"), ("1" * 300, "Even")]
    assert demo_instances(clf_task, 100) == []  # showing "Odd" alone would hide "Even"
    assert demo_instances(OWN_TASKS[1], 100) == [("3", "6"), ("Number: 10", "20")]
    seeds = write_tasks(tmp_path / "seeds.jsonl", [clf_task, OWN_TASKS[1]])
    with pytest.raises(ConfigError) as error:
        SelfInstructInstances(
            seed_tasks=seeds, instance_demos=None, max_example_chars=100
        ).templates()
    assert error.value.key == "seed_tasks" and "at most 100 characters" in str(error.value)
    # Over the builtin demos: the long ones go, the rest stay.
    prompt = SelfInstructInstances(max_example_chars=400).templates()["output_first"].text
    assert "Does the information in the document supports the claim?" not in prompt
    assert "Class label: Politics, Sports" in prompt


def test_a_relative_demo_file_is_read_from_the_pipeline_files_folder(tmp_path: Path) -> None:
    write_tasks(tmp_path / "demos.jsonl", OWN_TASKS)
    (tmp_path / "pipeline.yaml").write_text(
        "input: builtin:self_instruct_seed_tasks\n"
        "stages:\n  - type: self_instruct_instances\n    instance_demos: demos.jsonl\n"
    )
    [stage] = Pipeline.from_file(tmp_path / "pipeline.yaml").stages
    assert "Task: Double the number." in stage.templates()["input_first"].text


def test_a_missing_or_unusable_demo_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        SelfInstructInstances(instance_demos=str(tmp_path / "nope.jsonl")).templates()
    assert error.value.key == "instance_demos"
    only_clf = write_tasks(tmp_path / "clf.jsonl", OWN_TASKS[:1])
    with pytest.raises(ConfigError) as error:
        SelfInstructInstances(instance_demos=only_clf).templates()
    assert error.value.key == "instance_demos" and "is_classification" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Parsing an answer with several instances, against the reference parser

# Each expected value is what the reference's parse_instances_for_generation_task /
# parse_instances_for_classification_task return for the same text (finish_reason "stop", run on
# commit 0b26cca), as sorted (input, output) pairs. None of these texts hits an instance filter,
# so the pairs are the parse alone.
GENERATION_CASES = [
    (
        "Example 1\nInput: 2+2\nOutput: 4\nExample 2\nList: [3, 1]\nOutput: [1, 3]",
        [("2+2", "4"), ("List: [3, 1]", "[1, 3]")],
    ),
    (
        "Example 1\nParagraph: The cat sat.\nQuestion: Who sat?\nOutput: The cat.\n"
        "Example 2\nParagraph: A dog ran.\nQuestion: Who ran?\nOutput: A dog.\n"
        "Example 3\nParagraph: Birds sing.\nQuestion: Who sings?\nOutput:\nBirds.",
        [
            ("Paragraph: A dog ran.\nQuestion: Who ran?", "A dog."),
            ("Paragraph: Birds sing.\nQuestion: Who sings?", "Birds."),
            ("Paragraph: The cat sat.\nQuestion: Who sat?", "The cat."),
        ],
    ),
    ("Example 1\nOutput: Mars\nExample 2\nOutput: Venus", [("", "Mars"), ("", "Venus")]),
    (
        "Example 1\nInput 1: apple\nOutput 1: fruit\nInput 2: carrot\nOutput 2: vegetable",
        [("apple", "fruit")],  # pairs run together in one example: the first only
    ),
    ("Output: Paris", [("", "Paris")]),
    (
        "Example 1\nList: [2, 1]\nOutput: [1, 2]\n"
        "Example 2\nInput 2 - List: [9, 3]\nOutput: [3, 9]",
        [("Input 2 - List: [9, 3]", "[3, 9]"), ("List: [2, 1]", "[1, 2]")],
    ),
]
CLASSIFICATION_CASES = [
    (
        "Class label: Positive\nSentence: I loved it.\nClass label: Negative\n"
        "Sentence: I hated it.\nClass label: Mixed\nSentence: Good food, slow service.",
        [
            ("Sentence: Good food, slow service.", "Mixed"),
            ("Sentence: I hated it.", "Negative"),
            ("Sentence: I loved it.", "Positive"),
        ],
    ),
    (
        "Class label: Yes\nSentence: hi\nthere\nClass label: No",
        [("", "No"), ("Sentence: hi\nthere", "Yes")],
    ),
    ("Class label: Montreal", [("", "Montreal")]),
    (
        "Class label: Spam\nEmail: Win a prize now!\nClass label: Not spam\n"
        "Email: See you at noon.\nClass label: Spam",
        [
            ("", "Spam"),
            ("Email: See you at noon.", "Not spam"),
            ("Email: Win a prize now!", "Spam"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), GENERATION_CASES)
def test_input_first_parsing_matches_the_reference(text: str, expected: list[Any]) -> None:
    assert sorted(set(parse_input_first(text))) == expected


@pytest.mark.parametrize(("text", "expected"), CLASSIFICATION_CASES)
def test_output_first_parsing_matches_the_reference(text: str, expected: list[Any]) -> None:
    assert sorted(set(parse_output_first(text))) == expected


def test_the_stage_keeps_the_reference_instances_of_a_several_instance_answer(
    tmp_path: Path,
) -> None:
    clf_text, clf_expected = CLASSIFICATION_CASES[0]
    gen_text, gen_expected = GENERATION_CASES[1]
    answers = {"Rate the sentiment.": clf_text, "Answer the question.": gen_text}

    def script(request: Request, attempt: int) -> str:
        assert request.prompt is not None
        return answers[request.prompt.rsplit("Task: ", 1)[1].strip()]

    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(script)
    rows = [
        {"id": derived_id("t", name), "instruction": name, "is_classification": name[0] == "R"}
        for name in answers
    ]
    pipeline = Pipeline(
        [SelfInstructInstances()], input=rows, backends={"default": ScriptedConfig()}
    )
    result = pipeline.run(tmp_path / "out", progress=False)
    data = OutputFolder(tmp_path / "out").read_rows("data")
    kept = {
        name: sorted((r["input"], r["output"]) for r in data if r["instruction"] == name)
        for name in answers
    }
    assert kept == {"Rate the sentiment.": clf_expected, "Answer the question.": gen_expected}
    assert result.counts == {"data": 6, "dropped": 0, "failed": 0}
