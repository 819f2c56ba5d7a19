"""``self_instruct_instances``: the second Self-Instruct stage (Wang et al. 2022), which writes
instances (input, output) for each generated instruction.

Row by row: (a) asks the model, few-shot, whether the task "can be regarded as a classification
task with finite output labels"; (b) generates instances output-first for classification tasks (a
class label, then an input for it) and input-first for the others, few-shot from the seed tasks'
own instances, greedily; (c) filters instances: input == output, empty output, input or output
ending with ":", a task whose identical inputs have different outputs is dropped whole, at most 5
instances per task. Each surviving instance is a row with ``instruction``, ``input``, ``output``,
``is_classification`` and TRL's ``prompt`` / ``completion``; every instance or task a filter
removes is a ``dropped/`` row with its reason.

The method as a whole, and where we differ from the reference code, is described in
:mod:`stillroom.generate.self_instruct` (the first stage, which bootstraps the instructions); the
prompt texts and the answer parsing are in :mod:`stillroom.generate.self_instruct_prompts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr

from stillroom.data.rows import PromptTemplate, Row, derived_id, row_id, with_lineage
from stillroom.errors import ConfigError, InputError
from stillroom.generate.self_instruct_prompts import (
    CLASS_LABEL,
    CLASSIFICATION_QUESTION,
    INPUT_FIRST_HEADER,
    METHOD,
    OUTPUT_FIRST_HEADER,
    check_prompt_format,
    parse_input_first,
    parse_output_first,
    prompt_line,
)
from stillroom.llm.types import Completion, GenerationParams, Request
from stillroom.pipeline.stage import Dropped, RowStage, StageContext, register_stage

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig


def _seed_example_fits(task: Row, max_chars: int) -> bool:
    instances = task.get("instances") or []
    if not instances or not str(task.get("instruction", "")).strip():
        return False
    first = instances[0]
    return len(first.get("input", "")) + len(first.get("output", "")) <= max_chars


@register_stage
class SelfInstructInstances(RowStage):
    """Instances for each instruction row: classification or not, then output-first or
    input-first generation, then the paper's instance filters. One row per kept instance."""

    type: Literal["self_instruct_instances"] = "self_instruct_instances"
    backend: str = Field(default="default", description="Backend name; default = embedded model.")
    seed_tasks: str = Field(
        default="builtin:self_instruct_seed_tasks",
        description="Tasks with instances and is_classification, the few-shot examples.",
    )
    classification_examples: int = Field(
        default=30, ge=2, description="Few-shot tasks for the classification question (paper: 31)."
    )
    output_first_examples: int = Field(
        default=16, ge=1, description="Few-shot classification tasks (paper: 16)."
    )
    input_first_examples: int = Field(
        default=12, ge=1, description="Few-shot other tasks (paper: 12)."
    )
    max_example_chars: int = Field(
        default=400, ge=1, description="Skip seed tasks whose instance is longer than this."
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

    def _load_seed_tasks(self) -> list[Row]:
        from stillroom.data.readers import iter_rows, resolve_input_path

        try:
            path = resolve_input_path(self.seed_tasks)
            return [row for _, row in iter_rows(Path(path))]
        except InputError as error:
            raise ConfigError(f"seed_tasks: {error}", key="seed_tasks") from error

    def templates(self) -> dict[str, PromptTemplate]:
        """The three few-shot templates, built once from the seed tasks (in file order, so the
        prompt prefix is the same for every row and a backend can reuse its evaluation)."""
        key = (
            self.seed_tasks,
            self.classification_examples,
            self.output_first_examples,
            self.input_first_examples,
            self.max_example_chars,
        )
        if self._templates is not None and self._templates_key == key:
            return self._templates
        tasks = [
            t for t in self._load_seed_tasks() if _seed_example_fits(t, self.max_example_chars)
        ]
        labelled = [t for t in tasks if isinstance(t.get("is_classification"), bool)]
        yes = [t for t in labelled if t["is_classification"]]
        no = [t for t in labelled if not t["is_classification"]]
        if not yes or not no:
            raise ConfigError(
                f"seed_tasks {self.seed_tasks!r} needs classification and other tasks with an "
                f"instance of at most {self.max_example_chars} characters",
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

        output_first = OUTPUT_FIRST_HEADER + "\n\n"
        for task in yes[: self.output_first_examples]:
            instance = task["instances"][0]
            output_first += f"Task: {prompt_line(task['instruction'])}\n"
            output_first += f"{CLASS_LABEL} {instance['output'].strip()}\n"
            if instance.get("input", "").strip():
                output_first += f"Input: {instance['input'].strip()}\n"
            output_first += "\n"

        input_first = INPUT_FIRST_HEADER + "\n\n"
        for task in no[: self.input_first_examples]:
            instance = task["instances"][0]
            input_first += f"Task: {prompt_line(task['instruction'])}\n"
            if instance.get("input", "").strip():
                input_first += f"Example 1\nInput: {instance['input'].strip()}\n"
            input_first += f"Output: {instance['output'].strip()}\n\n"

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
