"""Self-Instruct's prompt texts and the parsing of the model's answers, for both stages
(:mod:`stillroom.generate.self_instruct` bootstraps instructions,
:mod:`stillroom.generate.self_instruct_instances` writes their instances).

* Instruction generation: the header and numbered list a prompt shows
  (:func:`encode_instruction_prompt`) and the candidate instructions in a continuation of that
  list (:func:`parse_instructions`).
* Instance generation: the question and headers of the few-shot prompts, one demo task as the
  prompts show it (:func:`output_first_demo`: every class label with its input;
  :func:`input_first_demo`: "Example 1", "Example 2", ... as the reference template lays them
  out), and the (input, output) pairs in an output-first (:func:`parse_output_first`) or
  input-first (:func:`parse_input_first`) answer, split as the reference's
  ``parse_instances_for_classification_task`` / ``parse_instances_for_generation_task`` split.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from stillroom.errors import ConfigError

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig

METHOD = "self_instruct"

# The paper's header: its exact wording is part of the method.
HEADER = "Come up with a series of tasks:"

# Where one numbered item ends and the next begins, as the reference code splits.
_ITEM_SPLIT = re.compile(r"\n\d+\s?\. ")
_LEADING_NUMBER = re.compile(r"^\s*\d+\s?\.\s+")
_WHITESPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------------
# Instruction generation: the numbered-list prompt and its continuation


def check_prompt_format(
    backend: str, prompt_format: str, configs: dict[str, BackendConfig]
) -> None:
    """Refuse ``prompt_format: raw`` for a backend that takes chat messages only."""
    backend_class = configs[backend].backend_class()
    if prompt_format == "raw" and not backend_class.supports_raw_prompt:
        raise ConfigError(
            f"backend {backend!r} ({backend_class.kind}) takes chat messages only; "
            "set prompt_format: chat",
            key="prompt_format",
        )


def prompt_line(instruction: str) -> str:
    """An instruction as it is shown in the prompt: one line, no trailing colon."""
    return _WHITESPACE.sub(" ", instruction).strip().rstrip(":")


def encode_instruction_prompt(instructions: list[str], header: str = HEADER) -> str:
    """The header, the instructions numbered 1..k, then "k+1." for the model to continue."""
    lines = [header]
    lines += [f"{number}. {prompt_line(text)}" for number, text in enumerate(instructions, 1)]
    return "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(text: str, *, strip_leading_number: bool = False) -> list[str]:
    """The candidate instructions in a continuation of the numbered list.

    The text continues item "9." and may go on with "\\n10. ...", "\\n11. ..."; each item is put
    on one line and its first letter upper-cased. ``strip_leading_number``: the text may begin
    with its own "9." (a chat model restating the list).
    """
    if strip_leading_number:
        text = _LEADING_NUMBER.sub("", text, count=1)
    out = []
    for piece in _ITEM_SPLIT.split(text):
        item = _WHITESPACE.sub(" ", piece).strip()
        if item:
            out.append(item[0].upper() + item[1:])
    return out


# ----------------------------------------------------------------------------------------------
# Instance generation: the few-shot texts and the (input, output) pairs in an answer

CLASSIFICATION_QUESTION = (
    # The paper's question (its appendix template); the examples below it are the seed tasks.
    "Can the following task be regarded as a classification task with finite output labels?"
)
OUTPUT_FIRST_HEADER = (
    "Each task below is a classification task. Name the labels its answer can take and, after "
    "each label, write an input whose correct answer is that label. If the task needs no input, "
    "only name the labels."
)
INPUT_FIRST_HEADER = (
    "Write examples for each task below, several when you can. Give each example an input and "
    "the output the task asks for; if the task needs no input, write the output directly."
)

_EXAMPLE_SPLIT = re.compile(r"Example\s?\d*\.?")
# An input that already opens with its own field name ("Sentence: ...", "Credit card statement:
# ...", "Input 2 - List: ..."), as the reference demos write them. A colon right after a word is
# required, so a raw analogy such as "Night : Day" is not taken for one.
_FIELD_NAME = re.compile(r"^[A-Z][\w'\u2019 -]{0,40}\w:")
_OUTPUT_FIELD = re.compile(r"Output\s*\d*\s*:")
_INPUT_FIELD = re.compile(r"Input\s*\d*\s*:")
_INPUT_PREFIX = re.compile(r"^Input\s*\d*\s*:")
CLASS_LABEL = "Class label:"


def _shown_input(given: str) -> str:
    """An instance's input as a demo shows it: as written when it names its own field (the
    reference demos' "Sentence: ..."), else after "Input:" so that the model can tell a bare
    input (a seed task's "2+2") from the label or example header above it."""
    given = given.strip()
    return given if _FIELD_NAME.match(given) else f"Input: {given}"


def _shown_output(output: str) -> str:
    # The reference template starts a multi-line output (a list, code) on its own line.
    output = output.strip()
    return f"Output:\n{output}" if "\n" in output else f"Output: {output}"


def output_first_demo(instruction: str, instances: list[tuple[str, str]]) -> str:
    """One classification task of the output-first prompt: the task, then each of its (input,
    label) instances as "Class label: <label>" followed by the input (none when it is empty)."""
    lines = [f"Task: {prompt_line(instruction)}"]
    for given, label in instances:
        lines.append(f"{CLASS_LABEL} {label.strip()}")
        if given.strip():
            lines.append(_shown_input(given))
    return "\n".join(lines) + "\n\n"


def input_first_demo(instruction: str, instances: list[tuple[str, str]]) -> str:
    """One task of the input-first prompt: "Example 1", "Example 2", ... each with its input and
    "Output:"; a task with one instance and no input shows only "Output:", as the reference
    template does."""
    lines = [f"Task: {prompt_line(instruction)}"]
    if len(instances) == 1 and not instances[0][0].strip():
        lines.append(_shown_output(instances[0][1]))
    else:
        for number, (given, output) in enumerate(instances, 1):
            lines.append(f"Example {number}")
            if given.strip():
                lines.append(_shown_input(given))
            lines.append(_shown_output(output))
    return "\n".join(lines) + "\n\n"


def split_input_output(text: str) -> tuple[str, str]:
    """One generated example as (input, output): what precedes "Output:" and what follows it
    (up to a next "Input:"), without an "Input:" field name."""
    if _OUTPUT_FIELD.search(text):
        parts = _OUTPUT_FIELD.split(text)
        given, output = parts[0].strip(), parts[1].strip()
    else:
        given, output = "", text.strip()
    if _INPUT_FIELD.search(output):  # several examples run together: keep the first
        output = _INPUT_FIELD.split(output)[0].strip()
    return _INPUT_PREFIX.sub("", given).strip(), output


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from an input-first answer: "Example N" blocks, or one "Output:"."""
    text = text.strip()
    if _EXAMPLE_SPLIT.search(text):
        blocks = [block.strip() for block in _EXAMPLE_SPLIT.split(text)]
        return [split_input_output(block) for block in blocks if block]
    if _OUTPUT_FIELD.search(text):
        return [split_input_output(text)]
    return []


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from an output-first answer: "Class label: X" then its input."""
    if CLASS_LABEL not in text:
        return []
    out = []
    for block in text.split(CLASS_LABEL)[1:]:
        label, _, given = block.strip().partition("\n")
        out.append((_INPUT_PREFIX.sub("", given.strip()).strip(), label.strip()))
    return out
