"""``self_instruct_instances``: the second Self-Instruct stage (Wang et al. 2022), which writes
instances (input, output) for each generated instruction.

Row by row: (a) asks the model, few-shot, whether the task "can be regarded as a classification
task with finite output labels"; (b) generates instances output-first for classification tasks (a
class label, then an input for it) and input-first for the others, greedily; (c) filters
instances: input == output, empty output, input or output ending with ":", a task whose identical
inputs have different outputs is dropped whole, at most 5 instances per task. Each surviving
instance is a row with ``instruction``, ``input``, ``output``, ``is_classification`` and TRL's
``prompt`` / ``completion``; every instance or task a filter removes is a ``dropped/`` row with
its reason.

The few-shot demos of (b) show several instances per task, as the reference template
(``templates/instance_gen_template.py``) does: each classification task with every one of its
labels, each followed by an input for it ("Class label: Positive" / "Sentence: ..." / "Class
label: Negative" / ...), and the other tasks with "Example 1", "Example 2", ... By default
(``instance_demos: builtin:self_instruct_instance_demos``) they are the reference template's own
16 classification and 11 other tasks, kept as data; the 175 seed tasks cannot serve, as each
carries one instance (in the released ``data/seed_tasks.jsonl`` too). ``instance_demos`` takes
your own file of tasks in the seed-task layout (``instruction``, ``is_classification``,
``instances``; a relative path is read from the pipeline file's folder), or ``null`` for the
``seed_tasks`` file. ``max_example_chars`` leaves out long demo instances (none by default).

Where we differ from the reference code, on purpose:

* the headers of the two instance prompts are our wording of the reference's instructions; the
  demos below them are the reference's, word for word, laid out alike (a multi-line output
  starts on its own line, as four of the reference's five do; instructions and labels lose
  stray spaces).
* the classification question's demos are the seed tasks (the first ``classification_examples``,
  "Yes" and "No" alternating), not the reference's hand-picked list of 31.
* a demo input without a field name of its own (a seed task's "2+2") is shown as "Input: 2+2",
  and a leading "Input:" is removed from a generated classification input; the reference keeps
  field names as written (its demos always have one, "Sentence: ...", and so do our inputs then).
* an instance a filter removes, a duplicate and one over ``max_instances`` are kept in
  ``dropped/`` with the reason, in their answer's order (the reference deduplicates with a set).

The method as a whole, and where the first stage differs from the reference code, is described
in :mod:`stillroom.generate.self_instruct` (the first stage, which bootstraps the instructions);
the prompt texts and the answer parsing are in :mod:`stillroom.generate.self_instruct_prompts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, with_lineage
from stillroom.errors import ConfigError, InputError
from stillroom.generate.self_instruct_prompts import (
    CLASSIFICATION_QUESTION,
    INPUT_FIRST_HEADER,
    METHOD,
    OUTPUT_FIRST_HEADER,
    check_prompt_format,
    input_first_demo,
    output_first_demo,
    parse_input_first,
    parse_output_first,
    prompt_line,
)
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import (
    Dropped,
    RowStage,
    StageContext,
    pipeline_dir,
    register_stage,
)

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig


def _labelled(task: Row) -> bool:
    """A task the classification question can show: an instruction and a boolean label."""
    return bool(str(task.get("instruction") or "").strip()) and isinstance(
        task.get("is_classification"), bool
    )


def demo_instances(task: Row, max_chars: int | None) -> list[tuple[str, str]]:
    """The (input, output) instances a demo shows for ``task``: every instance with an output, in
    file order. An instance longer than ``max_chars`` (input + output) is left out; for a
    classification task that would hide one of its labels, so the task gets none (and is not
    shown)."""
    pairs = []
    for instance in task.get("instances") or []:
        if not isinstance(instance, dict):
            continue
        given = str(instance.get("input") or "").strip()
        output = str(instance.get("output") or "").strip()
        if output:
            pairs.append((given, output))
    if max_chars is None:
        return pairs
    fitting = [(given, output) for given, output in pairs if len(given) + len(output) <= max_chars]
    if task.get("is_classification") and len(fitting) < len(pairs):
        return []
    return fitting


@register_stage
class SelfInstructInstances(RowStage):
    """Instances for each instruction row: classification or not, then output-first or
    input-first generation, then the paper's instance filters. One row per kept instance."""

    type: Literal["self_instruct_instances"] = "self_instruct_instances"
    path_options: ClassVar[tuple[str, ...]] = ("seed_tasks", "instance_demos")
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    seed_tasks: str = Field(
        default="builtin:self_instruct_seed_tasks",
        description="Tasks with is_classification: the few-shot examples of the classification "
        "question (and of instance generation when instance_demos is null).",
    )
    instance_demos: str | None = Field(
        default="builtin:self_instruct_instance_demos",
        description="Tasks with several instances each (instruction, is_classification, "
        "instances), the few-shot demos of instance generation; default: the reference "
        "code's demos. null: the seed_tasks file's.",
    )
    classification_examples: int = Field(
        default=30, ge=2, description="Few-shot tasks for the classification question (paper: 31)."
    )
    output_first_examples: int = Field(
        default=16, ge=1, description="Few-shot classification tasks (reference template: 16)."
    )
    input_first_examples: int = Field(
        default=12, ge=1, description="Few-shot other tasks (reference template: 11)."
    )
    max_example_chars: int | None = Field(
        default=None,
        ge=1,
        description="Leave out demo instances longer than this (input + output characters); "
        "a classification task is then left out whole. None: all (the reference).",
    )
    trust_row_label: bool = Field(
        default=True,
        description="A row that already has a boolean is_classification (a seed task) keeps it.",
    )
    prompt_format: Literal["raw", "chat"] = "raw"
    temperature: float = Field(default=0.0, ge=0, le=2, description="Paper: greedy.")
    presence_penalty: float | None = Field(
        default=1.5, ge=-2, le=2, description="The reference code's 1.5 for instance generation."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="None: the reference's 300 (output-first) / 350."
    )
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    max_instances: int = Field(default=5, ge=1, description="Instances kept per task (paper: 5).")
    drop_input_equals_output: bool = True
    drop_empty_output: bool = True
    drop_colon_ending: bool = Field(
        default=True, description="Drop an instance whose input or output ends with ':'."
    )
    drop_conflicting_outputs: bool = Field(
        default=True, description="Drop a task whose identical inputs have different outputs."
    )

    # Built from the seed tasks on first use; rebuilt when a field they depend on changes.
    _templates: dict[str, PromptTemplate] | None = PrivateAttr(default=None)
    _templates_key: tuple[Any, ...] = PrivateAttr(default=())
    # A relative seed_tasks / instance_demos path is read from the pipeline file's folder.
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _remember_pipeline_dir(self, info: ValidationInfo) -> SelfInstructInstances:
        self._base_dir = pipeline_dir(info) or self._base_dir
        return self

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        # The task as a student sees it (instruction + generated input). Not `output`: a
        # classification task's outputs are its few labels, repeated by design, and would read
        # as a collapsed set.
        return ["prompt"]

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        check_prompt_format(self.backend, self.prompt_format, configs)
        self.templates()  # a missing or unusable seed_tasks file fails before any request

    def check_row(self, row: Row) -> str | None:
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            return f"the row needs a non-empty `instruction`; it has {sorted(row)}"
        return None

    # -- templates ----------------------------------------------------------------------------

    def _load_tasks(self, spec: str, key: str) -> list[Row]:
        from stillroom.data.readers import iter_rows, resolve_input_path

        try:
            path = resolve_input_path(spec, self._base_dir)
            return [row for _, row in iter_rows(Path(path))]
        except InputError as error:
            raise ConfigError(str(error), key=key) from error

    def templates(self) -> dict[str, PromptTemplate]:
        """The three few-shot templates, built once from the seed tasks and the instance demos
        (in file order, so the prompt prefix is the same for every row and a backend can reuse
        its evaluation)."""
        key = (
            self.seed_tasks,
            self.instance_demos,
            self.classification_examples,
            self.output_first_examples,
            self.input_first_examples,
            self.max_example_chars,
        )
        if self._templates is not None and self._templates_key == key:
            return self._templates
        seeds = self._load_tasks(self.seed_tasks, "seed_tasks")
        labelled = [t for t in seeds if _labelled(t)]
        yes = [t for t in labelled if t["is_classification"]]
        no = [t for t in labelled if not t["is_classification"]]
        if not yes or not no:
            raise ConfigError(
                f"seed_tasks {self.seed_tasks!r} needs tasks with an instruction and "
                "is_classification true, and others with false",
                key="seed_tasks",
            )
        # Alternate the answers so neither "Yes" nor "No" dominates the end of the prompt.
        shown: list[Row] = []
        for pair in zip(yes, no, strict=False):
            shown.extend(pair)
        clf_prefix = CLASSIFICATION_QUESTION + "\n\n"
        for task in shown[: self.classification_examples]:
            answer = "Yes" if task["is_classification"] else "No"
            clf_prefix += (
                f"Task: {prompt_line(task['instruction'])}\nIs it classification? {answer}\n\n"
            )

        # Several instances per demo task, as the reference template shows them: every label of
        # a classification task with an input for each, several examples of the others.
        if self.instance_demos is None:
            demo_key, demo_tasks = "seed_tasks", seeds
        else:
            demo_key = "instance_demos"
            demo_tasks = self._load_tasks(self.instance_demos, demo_key)
        demos: dict[bool, list[tuple[str, list[tuple[str, str]]]]] = {True: [], False: []}
        for task in filter(_labelled, demo_tasks):
            instances = demo_instances(task, self.max_example_chars)
            if instances:
                demos[task["is_classification"]].append((task["instruction"], instances))
        if not demos[True] or not demos[False]:
            limit = ""
            if self.max_example_chars is not None:
                limit = f" of at most {self.max_example_chars} characters"
            raise ConfigError(
                f"{demo_key} {getattr(self, demo_key)!r} needs classification and other tasks "
                f"(is_classification true and false) with instances{limit}",
                key=demo_key,
            )
        output_first = OUTPUT_FIRST_HEADER + "\n\n"
        for demo in demos[True][: self.output_first_examples]:
            output_first += output_first_demo(*demo)
        input_first = INPUT_FIRST_HEADER + "\n\n"
        for demo in demos[False][: self.input_first_examples]:
            input_first += input_first_demo(*demo)

        def template(name: str, prefix: str, question: str) -> PromptTemplate:
            # Braces in the seed texts are literal, not placeholders.
            escaped = prefix.replace("{", "{{").replace("}", "}}")
            return PromptTemplate(f"{METHOD}.{name}", escaped + question)

        self._templates_key = key
        self._templates = {
            "classification": template(
                "classification", clf_prefix, "Task: {instruction}\nIs it classification?"
            ),
            "output_first": template("output_first", output_first, "Task: {instruction}\n"),
            "input_first": template("input_first", input_first, "Task: {instruction}\n"),
        }
        return self._templates

    # -- requests -----------------------------------------------------------------------------

    def _request(self, prompt: str, params: GenerationParams) -> Request:
        if self.prompt_format == "raw":
            return Request(prompt=prompt, params=params)
        return Request(messages=[{"role": "user", "content": prompt}], params=params)

    def _seed(self, ctx: StageContext) -> int:
        return self.seed if self.seed is not None else ctx.seed

    async def classify(self, instruction: str, ctx: StageContext) -> tuple[bool, str, str]:
        """(is_classification, the model's raw answer, model name)."""
        template = self.templates()["classification"]
        prompt = template.format(instruction=prompt_line(instruction))
        params = GenerationParams(
            temperature=self.temperature, max_tokens=3, stop=("\n", "Task"), seed=self._seed(ctx)
        )
        completion = await ctx.client(self.backend).generate(self._request(prompt, params))
        # The reference reads exactly "Yes" (any case form it lists) as yes, anything else as no.
        return completion.text.strip() in ("Yes", "yes", "YES"), completion.text, completion.model

    async def generate_instances(
        self, instruction: str, is_classification: bool, ctx: StageContext
    ) -> tuple[Completion, PromptTemplate]:
        name = "output_first" if is_classification else "input_first"
        template = self.templates()[name]
        max_tokens = self.max_tokens or (300 if is_classification else 350)
        params = GenerationParams(
            temperature=self.temperature,
            max_tokens=max_tokens,
            stop=(f"Example {self.max_instances + 1}", "Task:"),
            seed=self._seed(ctx),
            presence_penalty=self.presence_penalty,
        )
        prompt = template.format(instruction=prompt_line(instruction))
        return await ctx.client(self.backend).generate(self._request(prompt, params)), template

    # -- filters ------------------------------------------------------------------------------

    def invalid_reason(self, given: str, output: str) -> str | None:
        """Why one instance is unusable (the reference's filter_invalid_instances), or None."""
        if self.drop_input_equals_output and given == output:
            return "instance: input equals output"
        if self.drop_empty_output and output == "":
            return "instance: empty output"
        if self.drop_colon_ending:
            if given.strip().endswith(":"):
                return "instance: input ends with ':'"
            if output.strip().endswith(":"):
                return "instance: output ends with ':'"
        return None

    @staticmethod
    def has_conflicting_outputs(pairs: list[tuple[str, str]]) -> bool:
        """Two instances with the same non-empty input and different outputs."""
        outputs: dict[str, str] = {}
        for given, output in pairs:
            if given == "":
                continue
            if outputs.setdefault(given, output) != output:
                return True
        return False

    # -- the row --------------------------------------------------------------------------------

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        instruction = row["instruction"].strip()
        parent_id = row_id(row) or derived_id("si-task", instruction)
        label = row.get("is_classification")
        classification: dict[str, Any]
        if self.trust_row_label and isinstance(label, bool):
            is_classification = label
            classification = {"source": "row"}
        else:
            is_classification, answer, clf_model = await self.classify(instruction, ctx)
            classification = {
                "source": "model",
                "answer": answer,
                "model": clf_model,
                "template": self.templates()["classification"].version,
            }
        completion, template = await self.generate_instances(instruction, is_classification, ctx)
        mode = "output_first" if is_classification else "input_first"
        parser = parse_output_first if is_classification else parse_input_first
        pairs = parser(completion.text)

        seed_id = _seed_id_for(row, parent_id)

        def lineage(out: Row, **extra: Any) -> Row:
            return with_lineage(
                out,
                ctx.stage_name,
                method=METHOD,
                step="instances",
                parent_id=parent_id,
                seed_id=seed_id,
                model=completion.model,
                template=template,
                generation=mode,
                classification=classification,
                finish_reason=completion.finish_reason,
                **extra,
            )

        base = {key: value for key, value in row.items() if key not in ("id", "metadata")}
        base["metadata"] = row.get("metadata")
        base["instruction"] = instruction
        base["is_classification"] = is_classification

        def instance_row(position: int, given: str, output: str) -> Row:
            out = {
                **base,
                "id": derived_id("si-instance", parent_id, position, given, output),
                "input": given,
                "output": output,
                "prompt": f"{instruction}\n\n{given}" if given else instruction,
                "completion": output,
            }
            return lineage(out, position=position)

        def task_dropped(reason: str) -> Dropped:
            out = {**base, "id": derived_id("si-task", parent_id), "raw_instances": completion.text}
            return Dropped(lineage(out), f"task: {reason}")

        out: list[Row | Dropped] = []
        if not pairs:
            return [task_dropped("no instance in the response")]
        candidates = list(enumerate(pairs))
        if completion.finish_reason == "length":  # the last one may be unfinished
            position, (given, output) = candidates.pop()
            out.append(
                Dropped(instance_row(position, given, output), "instance: cut at max_tokens")
            )
        valid = []
        for position, (given, output) in candidates:
            reason = self.invalid_reason(given, output)
            if reason is None:
                valid.append((position, (given, output)))
            else:
                out.append(Dropped(instance_row(position, given, output), reason))
        if self.drop_conflicting_outputs and self.has_conflicting_outputs([p for _, p in valid]):
            for position, (given, output) in valid:
                out.append(
                    Dropped(instance_row(position, given, output), "instance: task has conflicts")
                )
            out.append(task_dropped("the same input with different outputs"))
            return out
        unique = []
        seen: set[tuple[str, str]] = set()
        for position, pair in valid:
            if pair in seen:
                out.append(Dropped(instance_row(position, *pair), "instance: duplicate"))
            else:
                seen.add(pair)
                unique.append((position, pair))
        if len(unique) > self.max_instances:
            rng = ctx.rng(parent_id, "instances")
            chosen = set(rng.sample(range(len(unique)), self.max_instances))
            for rank, (position, pair) in enumerate(unique):
                if rank not in chosen:
                    out.append(
                        Dropped(instance_row(position, *pair), "instance: over max_instances")
                    )
            unique = [item for rank, item in enumerate(unique) if rank in chosen]
        if not unique:
            out.append(task_dropped("no instance survived the filters"))
            return out
        out.extend(instance_row(position, *pair) for position, pair in unique)
        return out


def _seed_id_for(row: Row, own_id: str) -> str | None:
    """The root seed of an instruction row: ``None`` for a machine-written instruction (its
    Self-Instruct lineage says so), the row itself for a task with no such lineage (a seed)."""
    for entry in (row.get("metadata") or {}).values():
        if isinstance(entry, dict) and entry.get("method") == METHOD:
            value = entry.get("seed_id")
            return None if value is None else str(value)
    return own_id
