"""The quickstart: the built-in end-to-end recipe on the embedded model.

For now: the Self-Instruct seed tasks (shipped with the package) become prompts, and the embedded
SmolLM2-135M-Instruct answers them, into an output folder with a card and a report. Later stages
of the loop (feedback, verification, curation, a trained student) join it as they are built.
"""

from __future__ import annotations

import os
from typing import Any

from stillroom.pipeline.pipeline import Pipeline, RunResult
from stillroom.pipeline.stage import FunctionStage, Row
from stillroom.stages.complete import Complete

SEED_TASKS = "builtin:self_instruct_seed_tasks"


def seed_task_to_prompt(task: Row) -> Row:
    """A seed task's instruction and its first instance's input, as one prompt."""
    instances = task.get("instances") or [{}]
    first = instances[0]
    prompt = task["instruction"].strip()
    if first.get("input", "").strip():
        prompt += "\n\n" + first["input"].strip()
    return {
        "id": task["id"],
        "task_name": task.get("name"),
        "prompt": prompt,
        "reference": first.get("output", ""),
        "is_classification": bool(task.get("is_classification")),
    }


def quickstart_pipeline(limit: int | None = 40, max_tokens: int = 160) -> Pipeline:
    from stillroom.pipeline.config import InputConfig

    return Pipeline(
        [
            FunctionStage.wrap(seed_task_to_prompt, name="seed_prompts"),
            Complete(name="teacher_answers", temperature=0.0, max_tokens=max_tokens),
        ],
        input=InputConfig(path=SEED_TASKS, limit=limit),
        name="stillroom quickstart",
        description=(
            "Self-Instruct seed tasks (Wang et al. 2022, Apache-2.0) answered by the embedded "
            "SmolLM2-135M-Instruct."
        ),
    )


def quickstart(
    out: str | os.PathLike[str] = "quickstart-out",
    *,
    limit: int | None = 40,
    max_tokens: int = 160,
    **run_options: Any,
) -> RunResult:
    return quickstart_pipeline(limit, max_tokens).run(out, **run_options)
