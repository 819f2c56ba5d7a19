"""Supervised fine-tuning (SFT) of a student on a stillroom data folder, loss on completions only.

Usage::

    # stillroom train sft sft.yaml
    student: embedded                # embedded SmolLM2-135M | path/to/folder-or.gguf
                                     # | {init: {teacher: embedded, keep_every: 2}}
    data: out/quickstart/data        # a stillroom output (or its data/ folder), JSONL or Parquet
    format: auto                     # auto | prompt_completion | messages
    output_dir: out/student-sft
    epochs: 1
    max_steps: null                  # a number overrides epochs
    learning_rate: 5e-5
    batch_size: 4
    gradient_accumulation: 1
    max_length: 512                  # tokens; longer examples are cut at the end
    seed: 0
    save_steps: 200                  # a checkpoint every N optimizer steps
    lora: null                       # {r: 8, alpha: 16, dropout: 0.05} trains LoRA adapters (peft)
    resume: true                     # continue from the latest checkpoint in output_dir
    reasoning: auto                  # how a row's trace enters the answer: auto | tags | template
                                     # | drop (see "Reasoning traces" below)
    reasoning_column: reasoning      # the column holding the trace (rows without one: unchanged)
    think_start: "<think>"           # the tags of `reasoning: tags`
    think_end: "</think>"
    mask_reasoning: false            # true: the trace is context only (labels -100), the answer
                                     # is still learned
    train_turns: all                 # messages rows: all (every assistant turn) | last (the final one)
    tool_format: auto                # tools: auto (native when the template renders them) | native
                                     # | plain (as stillroom's in-process backends ask)

Python: ``train_sft(load_sft_config("sft.yaml"))`` returns ``output_dir/final``. Relative paths
in the file are relative to the file's folder. Needs the ``train`` extra (torch, transformers,
TRL, peft).

The method. Training uses TRL's ``SFTTrainer`` on *prompt/completion* text with
``completion_only_loss``: the labels of the prompt tokens are -100, so the cross-entropy is the
student's negative log-likelihood of the teacher's answer given the prompt (sequence-level
distillation, Kim & Rush 2016: fine-tune the student on the teacher's outputs).

How rows become training text (the row shapes ``complete`` writes; see ``stillroom.data.rows``
and the README's row formats):

* ``prompt_completion`` rows (columns ``prompt`` and ``completion``): the text ``prompt`` as
  one user turn, or a conversational ``prompt`` (a list of messages) as those turns, is rendered
  with the chat template and the assistant header after it (``add_generation_prompt``), so the
  student learns in the same format the transformers backend prompts it with at inference
  (without a template the turns' text is used as it is); the completion is the ``completion``
  text, or the assistant message's text when ``completion`` is a list
  (``[{"role": "assistant", "content": ...}]``, TRL's conversational completion).
* ``messages`` rows (a ``messages`` list ending with an assistant turn; tool calls and tool
  turns in the shape of :mod:`stillroom.llm.tool_calls`, the tools in a ``tools`` column):
  the whole conversation is one sequence, rendered with the chat template, and *every*
  assistant turn is trained (its text, its tool calls and its end-of-turn token), while system,
  user and tool turns are context (``train_turns: last`` trains only the final turn, as
  stillroom did before). Tools are rendered by the template when it supports them, else as
  the plain turns a model without a tool API is asked in. See :mod:`stillroom.train.sft_turns`
  for how the turns are found (prefix renders) and what is refused. (A ``messages`` row as
  older stillroom versions wrote it, without the answer and with a text ``completion`` beside
  it, is read with that ``completion`` as the final answer.) We do not use TRL's
  ``assistant_only_loss``: it needs ``{% generation %}`` markers in the chat template, which
  SmolLM2's template lacks and TRL cannot add to it; the examples are tokenized here with a
  ``completion_mask`` over the assistant turns, from which TRL builds the labels.

For prompt/completion rows the loss is on the answer only: TRL gets text prompt/completion
pairs and ``completion_only_loss``, so the prompt's labels are -100 and the answer's are its
tokens.

The end of a completion: TRL appends the tokenizer's EOS token (``<|im_end|>`` for SmolLM2,
which also closes a chat turn) to every completion and labels it, so the student learns to
stop. SmolLM2's pad token is the same id; that is harmless because labels are built from the
completion mask before padding and the collator pads labels with -100, so padding never counts
while the real EOS at the end of each completion does.

Reasoning traces (for a ``messages`` row: its final assistant turn; earlier turns are trained
as written, and ``drop`` cuts an inline trace off them too). A row may carry the teacher's trace beside its answer, in the ``reasoning``
column (what ``complete`` writes for a reasoning model; ``reasoning_column`` names another). The
student is trained to think the same way: the trace is written into the assistant turn before
the answer, as reasoning models are trained (DeepSeek-R1's distills, s1, LIMO). ``reasoning``
says how:

* ``tags``: the completion is ``{think_start}\n{trace}\n{think_end}\n\n{answer}`` (``<think>``
  tags by default), which is what such models write and what stillroom's splitter
  (:mod:`stillroom.llm.reasoning`) and eval's ``thinking`` modes read back;
* ``template``: the student's chat template has its own thinking field on the assistant message
  (Qwen3's ``reasoning_content``; ``thinking`` and ``reasoning`` are tried too): the assistant
  turn is rendered by the template with the trace in that field, so it lands where the template
  puts it. Each rendering is checked: the prompt must be the start of the rendered conversation
  and the trace must be in it before the answer; a template that drops the field is an error
  naming the row, never a silently lost trace;
* ``auto`` (the default): ``template`` when a probe rendering shows the template keeps the
  trace (the field is tried with a marker text), else ``tags``;
* ``drop``: the answer only, as if there were no trace.

An answer that holds its trace inline (``<think>...</think>`` then the answer, as a teacher
served without a reasoning parser writes it; ``think_start``/``think_end`` are the tags looked
for) is read as a trace and an answer, so every mode treats it as a trace in the column: moved
into the template's field, dropped, or masked (an empty trace block, as a model asked not to
think writes it, is dropped). Only an answer that *begins* with ``think_start`` holds one (the
rule verifiers and judges use, :func:`stillroom.llm.reasoning.final_answer`): a tag further in
is quoted text, e.g. an answer explaining the tags, and is trained as written. Refused, with
the data file, line and row number (nothing can be learned from them as they are, and guessing
would train on a garbled turn): a row with a trace and an empty answer; an inline trace that
never ended (a trace cut at the token limit, kept with a flag); a row with a trace in the column
*and* one inline in its answer, or an answer with two inline traces; a trace that holds
``think_end`` itself (written into the turn it would end the trace early and the rest would read
back as the answer). ``drop`` ignores the column and only cuts an inline trace off.
``mask_reasoning: true`` keeps the
trace in the sequence as context but takes it out of the loss: TRL's completion mask covers the
whole completion and cannot leave out a span inside it, so the examples are tokenized here as
TRL tokenizes prompt/completion text (prompt, then prompt + completion + EOS; the completion
starts where the two token lists part) and the completion mask is 0 over the prompt and the
trace block (its tags included), 1 over the answer and EOS; TRL builds the labels from that
mask (``completion_only_loss``). The white space between the closing tag and the answer goes
with the answer when the tokenizer splits it differently there (SmolLM2's BPE tokenizes
``"</think>\n\nThe"`` as ``</think>``, ``\n``, ``\n``, ``The`` but a text ending in
``\n\n`` with one ``\n\n`` token): the answer starts where the two tokenizations part, so
no answer token is ever masked. The record
(``stillroom_train.json``) says which mode was used and how many rows had a trace.

Outputs, in ``output_dir``:

* ``checkpoint-N/``: every ``save_steps`` steps (model, optimizer, scheduler, RNG state);
  with ``resume: true`` a rerun continues from the latest one, keeping the step count;
* ``final/``: the trained model and tokenizer (``save_pretrained``; LoRA adapters are merged
  into the weights first, so it is a plain model for ``kind: transformers``), with
  ``stillroom_train.json``: the config, the number of data rows used, the steps, the first and
  final logged training loss, the loss curve (``losses``: [[step, loss], ...]), the training
  seconds and the checkpoint it resumed from; for ``messages`` rows with tools, ``tools``
  (how many rows, ``native`` or ``plain`` rendering), and ``separate_turns`` (turns trained
  in a sequence of their own, see :mod:`stillroom.train.sft_turns`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from stillroom.data.rows import Row, answer_text, is_conversation, prompt_messages, row_answer
from stillroom.errors import ConfigError, InputError
from stillroom.llm.reasoning import THINK_END, THINK_START, split_think_tags
from stillroom.train.common import (
    TRAIN_FILE,
    Format,
    RunConfig,
    latest_checkpoint,
    load_run_config,
    load_student,
    loss_curve,
    parse_run_config,
    peft_config,
    render_prompt,
    run_training,
    save_final,
    trainer_arguments,
)
from stillroom.train.sft_turns import (
    ToolFormat,
    TrainTurns,
    TurnsExample,
    conversation_example,
    row_tools,
    tokenize_turns,
    tool_rendering,
    uses_tools,
)

ReasoningMode = Literal["auto", "tags", "template", "drop"]

# The assistant message fields chat templates read a trace from: Qwen3 and most vLLM-served
# reasoning models use `reasoning_content`; other templates `thinking` or `reasoning`.
THINKING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class SFTRunConfig(RunConfig):
    """The SFT config file: the common keys (see train.common.RunConfig), ``format`` and the
    reasoning-trace keys (see the module)."""

    format: Format = "auto"
    output_dir: str = "out/student-sft"
    reasoning: ReasoningMode = "auto"
    reasoning_column: str = Field(default="reasoning", min_length=1)
    think_start: str = Field(default=THINK_START, min_length=1)
    think_end: str = Field(default=THINK_END, min_length=1)
    mask_reasoning: bool = False
    train_turns: TrainTurns = "all"
    tool_format: ToolFormat = "auto"

    @model_validator(mode="after")
    def _mask_needs_a_trace(self) -> SFTRunConfig:
        if self.mask_reasoning and self.reasoning == "drop":
            raise ValueError("mask_reasoning: true masks the trace, but reasoning: drop leaves it "
                             "out of the text; use one or the other")
        return self


def parse_sft_config(text: str, path: str = "<sft config>", base_dir: Path | None = None) -> SFTRunConfig:
    """Validate a config's YAML text; errors are ConfigError naming ``file:line`` and the key."""
    return parse_run_config(text, SFTRunConfig, path, base_dir)


def load_sft_config(path: str | Path) -> SFTRunConfig:
    return load_run_config(path, SFTRunConfig)


# -- data ----------------------------------------------------------------------------------------


def detect_format(rows: list[Row], wanted: str = "auto") -> str:
    if wanted != "auto":
        return wanted
    first = rows[0]
    # A Parquet output has every column in every row, null where a row has no value. A row with
    # a `prompt` is prompt + completion, as TRL's SFTTrainer reads it, even beside `messages`.
    if first.get("prompt") is not None and first.get("completion") is not None:
        return "prompt_completion"
    if first.get("messages") is not None:
        return "messages"
    raise ConfigError(
        f"cannot tell the data format from columns {sorted(first)}: need `prompt` and "
        "`completion`, or `messages`", key="format",
    )


@dataclass(frozen=True, slots=True)
class TraceFormat:
    """How a trace enters the assistant turn: ``tags``, ``template`` (with the template's
    ``field``) or ``drop``; ``column`` is where rows keep it."""

    mode: str = "drop"
    column: str = "reasoning"
    field: str | None = None
    start: str = THINK_START
    end: str = THINK_END


@dataclass(frozen=True, slots=True)
class Example:
    """One training example as text: ``completion[:trace_chars]`` is the trace block."""

    prompt: str
    completion: str
    trace_chars: int = 0


def template_thinking_field(tokenizer: Any) -> str | None:
    """The assistant-message field the chat template writes a trace from, or None: each of
    :data:`THINKING_FIELDS` is tried with marker texts, and kept only when the marker trace
    comes out before the marker answer, after the prompt rendered alone (the generation prompt
    must be the start of the rendered conversation, or the prompt/completion split is wrong)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    question = [{"role": "user", "content": "Q-marker"}]
    try:
        prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render a plain question: no thinking field
        return None
    for field in THINKING_FIELDS:
        turn = {"role": "assistant", "content": "A-marker", field: "T-marker"}
        try:
            text = tokenizer.apply_chat_template([*question, turn], tokenize=False)
        except Exception:  # the template refuses the field: try the next one
            continue
        if text.startswith(prompt) and -1 < text.find("T-marker", len(prompt)) < text.find("A-marker"):
            return field
    return None


def trace_format(config: SFTRunConfig, tokenizer: Any) -> TraceFormat:
    """The configured ``reasoning`` mode, with ``auto`` decided from the tokenizer."""
    field = None
    mode = config.reasoning
    if mode in ("auto", "template"):
        field = template_thinking_field(tokenizer)
        if field is None and mode == "template":
            raise ConfigError(
                "the student's chat template has no thinking field (tried "
                f"{', '.join(THINKING_FIELDS)} on the assistant message): use reasoning: tags",
                key="reasoning")
        mode = "template" if field else "tags"
    return TraceFormat(mode=mode, column=config.reasoning_column, field=field,
                       start=config.think_start, end=config.think_end)


def row_trace(row: Row, column: str, index: int) -> str | None:
    """The row's trace (None when it has none, or an empty one)."""
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"row {index}: `{column}` must be text (the trace of the row's one "
                         f"answer), not {type(value).__name__}")
    return value.strip() or None


def answer_and_trace(
    row: Row, answer: str, traces: TraceFormat, index: int
) -> tuple[str | None, str]:
    """(the trace to train on, or None; the answer) of one row: the trace column, else a trace
    inline in the answer; None in ``drop`` mode, which still cuts an inline trace off."""
    if row.get(f"{traces.column}_truncated") is True:
        # `complete` with `truncated_reasoning: flag` keeps such rows, answerless.
        raise InputError(f"row {index}: `{traces.column}_truncated` is true: its trace was cut "
                         "before it ended and it has no answer; leave flagged rows out of "
                         "training (e.g. a filter stage)")
    if traces.mode == "drop":  # the column is left out; an inline trace is still cut off
        return None, inline_trace(answer, traces, index)[1]
    trace = row_trace(row, traces.column, index)
    if trace is None:
        trace, answer = inline_trace(answer, traces, index)
    elif begins_with_trace(answer, traces):
        raise InputError(f"row {index}: a trace in `{traces.column}` and another inline in "
                         f"the answer ({traces.start}...): two traces for one answer; keep "
                         "one of them")
    if begins_with_trace(answer, traces):  # e.g. <think>a</think><think>b</think> 4
        raise InputError(f"row {index}: the answer begins with a second {traces.start} trace "
                         "after the first; keep one trace per answer")
    if trace is not None and traces.end in trace:
        # Written into the turn, the trace's own closing tag would end it early, and the rest
        # of the trace would read back (eval, a reasoning parser) as the answer.
        raise InputError(f"row {index}: the trace holds the closing tag {traces.end}, which "
                         "would end it early in the training text; remove it from the trace")
    return trace, answer


def begins_with_trace(text: str, traces: TraceFormat) -> bool:
    """Whether ``text`` opens an inline trace: only a text that begins (after white space)
    with the start tag does, the rule of :func:`stillroom.llm.reasoning.final_answer`; a tag
    further in is quoted text (an answer about the tags, code that parses them)."""
    return text.lstrip().startswith(traces.start)


def inline_trace(text: str, traces: TraceFormat, index: int) -> tuple[str | None, str]:
    """(the trace, the answer) of an answer text that holds its trace inline (a teacher served
    without a reasoning parser), so that every mode treats it as a trace in the column; (None,
    the text) when it holds none (it does not begin with the start tag, see
    :func:`begins_with_trace`). An empty trace block (a model asked not to think) is dropped."""
    if not begins_with_trace(text, traces):
        return None, text
    split = split_think_tags(text, traces.start, traces.end)
    if not split.ended:
        raise InputError(f"row {index}: the answer holds a {traces.start} trace that never "
                         f"ended (no {traces.end}): it has no answer; leave such rows out")
    return split.reasoning or None, split.answer


def with_trace(
    index: int, turns: list[dict[str, str]], prompt: str, answer: str, trace: str,
    traces: TraceFormat, tokenizer: Any,
) -> Example:
    """The completion holding ``trace`` before ``answer``, as ``traces`` says."""
    if not answer.strip():
        raise InputError(f"row {index}: a trace with an empty answer (a trace that never "
                         "ended?): nothing to learn as the answer; leave such rows out")
    if traces.mode == "tags":
        completion = f"{traces.start}\n{trace}\n{traces.end}\n\n{answer}"
        return Example(prompt, completion, len(completion) - len(answer))
    turn = {"role": "assistant", "content": answer, str(traces.field): trace}
    full: str = tokenizer.apply_chat_template([*turns, turn], tokenize=False)
    if not full.startswith(prompt):
        raise InputError(f"row {index}: the chat template renders this conversation with a "
                         "different start than its prompt alone; use reasoning: tags")
    tail = full[len(prompt):]
    # The template may strip the answer's white space; the completion ends with the answer
    # (TRL appends EOS as for any completion), not the template's end-of-turn text.
    shown = answer.strip()
    at = tail.rfind(shown)
    if at < 0 or trace.strip() not in tail[:at]:
        raise InputError(f"row {index}: the chat template dropped the trace from its "
                         f"`{traces.field}` field (or the answer); use reasoning: tags")
    return Example(prompt, tail[: at + len(shown)], at)


def sft_examples(
    rows: list[Row], fmt: str, tokenizer: Any, traces: TraceFormat | None = None,
    where: Sequence[str] | None = None,
) -> list[Example]:
    """The rows as text examples: the chat template applied to the prompt turns, the answer
    text as the completion (read through :mod:`stillroom.data.rows`), a row's trace written
    before it as ``traces`` says (None or ``drop``: the answer only). ``where``: each row's
    place in the data (``file:line``, as :func:`stillroom.data.readers.iter_rows` gives it),
    named by a row's InputError."""
    out = []
    for index, row in enumerate(rows):
        try:
            out.append(row_example(index, row, fmt, tokenizer, traces))
        except InputError as error:
            if where is None or error.path is not None:
                raise
            raise InputError(error.reason, path=where[index]) from None
    return out


def row_example(index: int, row: Row, fmt: str, tokenizer: Any, traces: TraceFormat | None) -> Example:
    """One row of :func:`sft_examples`."""
    if fmt == "messages" and is_conversation(row.get("messages")) and (
        uses_tools(row["messages"], row_tools(row, index))
    ):
        return tool_row_example(index, row, tokenizer, traces)
    if fmt == "messages":
        if not is_conversation(row.get("messages")):
            raise InputError(f"row {index}: `messages` must be a non-empty list of "
                             "{role, content} messages")
        # The final assistant turn, or (as older stillroom versions wrote a `messages` row)
        # a text `completion` beside the conversation.
        completion = row_answer(row)
        if completion is None:
            raise InputError(f"row {index}: `messages` must end with an assistant turn")
        turns = prompt_messages(row)
        if not turns:
            raise InputError(f"row {index}: `messages` holds no turn before the answer")
    else:
        prompt, answer = row.get("prompt"), answer_text(row.get("completion"))
        if isinstance(prompt, str):
            turns = [{"role": "user", "content": prompt}]
        elif is_conversation(prompt):  # TRL's conversational prompt
            turns = list(prompt)
        else:
            raise InputError(f"row {index}: `prompt` must be text or a list of messages")
        if answer is None:
            raise InputError(f"row {index}: `completion` must be text or a list holding "
                             "the assistant's message")
        completion = answer
    turns = [{"role": m["role"], "content": m["content"]} for m in turns]
    rendered = render_prompt(turns, tokenizer)
    if traces is None:
        return Example(rendered, completion)
    trace, completion = answer_and_trace(row, completion, traces, index)
    if trace is None:
        return Example(rendered, completion)
    return with_trace(index, turns, rendered, completion, trace, traces, tokenizer)


def tool_row_example(index: int, row: Row, tokenizer: Any, traces: TraceFormat | None) -> Example:
    """A ``messages`` row with tools as a prompt (the conversation before its final turn, tool
    calls and results as the template or :mod:`stillroom.train.sft_turns` renders them) and
    the final turn as the completion: dropping the calls to keep ``{role, content}`` would
    leave the answer without the results it answers from."""
    [turns] = conversation_example(index, row, tokenizer, tool_rendering(tokenizer), traces,
                                   "last")
    start, end = turns.trained[-1]
    completion = turns.text[start:end]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and completion.endswith(eos):  # appended again by TRL (and KD) to every completion
        completion = completion[: -len(eos)]
    trace_chars = turns.trace[1] - start if turns.trace else 0
    return Example(turns.text[:start], completion, trace_chars)


def to_prompt_completion(
    rows: list[Row], fmt: str, tokenizer: Any, traces: TraceFormat | None = None
) -> list[dict[str, str]]:
    """Plain-text ``{prompt, completion}`` pairs (:func:`sft_examples`); KD reads these too,
    without traces."""
    return [{"prompt": e.prompt, "completion": e.completion}
            for e in sft_examples(rows, fmt, tokenizer, traces)]


def conversation_examples(
    rows: list[Row], tokenizer: Any, traces: TraceFormat | None, config: SFTRunConfig,
    where: Sequence[str] | None = None,
) -> list[list[TurnsExample]]:
    """``messages`` rows as whole conversations with their assistant turns trained, each row's
    sequences in a list (:func:`stillroom.train.sft_turns.conversation_example`); a row's
    InputError names its ``file:line``."""
    rendering = tool_rendering(tokenizer, config.tool_format)
    out = []
    for index, row in enumerate(rows):
        try:
            out.append(conversation_example(index, row, tokenizer, rendering, traces,
                                            config.train_turns))
        except InputError as error:
            if where is None or error.path is not None:
                raise
            raise InputError(error.reason, path=where[index]) from None
    return out


def tokenize_masked(examples: list[Example], tokenizer: Any) -> list[dict[str, list[int]]]:
    """``input_ids`` and a ``completion_mask`` that leaves the trace out of the loss.

    Tokenized as TRL tokenizes text prompt/completion pairs (EOS appended to the completion;
    the completion starts where the prompt's tokens and the whole's part), because TRL's own
    mask covers the whole completion and has no way to leave a span inside it out. The answer
    starts where the tokens of prompt + trace block and of the whole part, so a token that
    straddles the seam (white space) is trained rather than lost."""
    from trl.data_utils import common_prefix_length

    eos = tokenizer.eos_token
    out = []
    for example in examples:
        completion = example.completion if example.completion.endswith(eos) else example.completion + eos
        ids = list(tokenizer(text=example.prompt + completion)["input_ids"])
        prompt_ids = list(tokenizer(text=example.prompt)["input_ids"])
        start = common_prefix_length(prompt_ids, ids)
        if example.trace_chars:
            block = list(tokenizer(text=example.prompt + completion[: example.trace_chars])["input_ids"])
            start = max(start, common_prefix_length(block, ids))
        out.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return out


# -- training ------------------------------------------------------------------------------------


def read_located_rows(config: SFTRunConfig) -> tuple[list[Row], list[str]]:
    """The data rows (as :func:`stillroom.train.common.read_rows` reads them) and where each
    one is (``file:line``), so that a row's error names its file, not only its number."""
    from stillroom.data.readers import iter_rows

    source = config.path(config.data)
    if source.is_dir() and (source / "data").is_dir():
        source = source / "data"
    located = list(iter_rows(source))
    if not located:
        raise InputError("no rows to train on", path=str(source))
    return [row for _, row in located], [where for where, _ in located]


def build_trainer(config: SFTRunConfig) -> tuple[Any, dict[str, Any]]:
    """The TRL ``SFTTrainer`` for ``config`` and facts for the record (rows, format)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows, where = read_located_rows(config)
    fmt = detect_format(rows, config.format)
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    traces = trace_format(config, tokenizer)
    facts: dict[str, Any] = {"rows": len(rows), "format": fmt}
    if fmt == "messages":
        rendering = tool_rendering(tokenizer, config.tool_format)
        per_row = conversation_examples(rows, tokenizer, traces, config, where)
        turns = [sequence for sequences in per_row for sequence in sequences]
        with_traces = sum(1 for t in turns if t.trace is not None)
        with_tools = sum(1 for sequences in per_row if sequences[0].has_tools)
        # Only when there are some: a set without tools records what it always did.
        if with_tools:
            facts["tools"] = {"rows_with_tools": with_tools,
                              "rendering": "native" if rendering.native else "plain"}
        if len(turns) > len(rows):  # turns the template renders differently in context
            facts["separate_turns"] = len(turns) - len(rows)
        dataset = Dataset.from_list([tokenize_turns(t, tokenizer, config.mask_reasoning)
                                     for t in turns])
    else:
        examples = sft_examples(rows, fmt, tokenizer, traces, where)
        with_traces = sum(1 for e in examples if e.trace_chars)
        if config.mask_reasoning:
            dataset = Dataset.from_list(tokenize_masked(examples, tokenizer))
        else:
            dataset = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion}
                                         for e in examples])
    args = SFTConfig(
        **trainer_arguments(config),
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        # TRL defaults to activation checkpointing; a small student needs none.
        gradient_checkpointing=None,  # type: ignore[arg-type]  # deprecated alias, TRL's default True
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config(config))
    if with_traces:  # only then: a dataset without traces records what it always did
        facts["reasoning"] = {"mode": traces.mode, "field": traces.field,
                              "rows_with_trace": with_traces, "masked": config.mask_reasoning}
    return trainer, facts


def train_sft(config: SFTRunConfig) -> Path:
    """Train the student on the data; save ``output_dir/final`` and return its path."""
    output_dir = config.path(config.output_dir)
    trainer, facts = build_trainer(config)
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    started = time.perf_counter()
    run_training(trainer, checkpoint)
    seconds = time.perf_counter() - started
    losses = loss_curve(trainer)
    record = {
        "recipe": "sft",
        "config": config.model_dump(mode="json"),
        "format": facts["format"],
        "rows": facts["rows"],
        "reasoning": facts.get("reasoning"),
        "tools": facts.get("tools"),
        "separate_turns": facts.get("separate_turns"),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "losses": losses,
        "train_seconds": round(seconds, 3),
    }
    return save_final(trainer, output_dir / "final", record)


__all__ = [
    "TRAIN_FILE",
    "THINKING_FIELDS",
    "Example",
    "SFTRunConfig",
    "TraceFormat",
    "build_trainer",
    "detect_format",
    "latest_checkpoint",
    "load_sft_config",
    "parse_sft_config",
    "sft_examples",
    "template_thinking_field",
    "to_prompt_completion",
    "tokenize_masked",
    "trace_format",
    "train_sft",
]
