"""The library verbs: what the CLI runs, callable from Python.

Every verb is the same two steps: build a stage from keyword options with :func:`build_stage`
(the one place options are validated and a bad one becomes a ConfigError naming it), then run it
on an input into an output folder with :func:`run_stage`. A new verb is a new stage and those two
calls; what the stage measured is in ``result.summary["stage_results"][stage name]`` (its
:meth:`~stillroom.pipeline.stage.Stage.summarize`).
"""

from stillroom.api.options import backend_config, build_stage, config_error
from stillroom.api.runs import inspect_output, run_pipeline, run_stage
from stillroom.api.verbs import (
    complete,
    decontaminate,
    dedup,
    heuristic_filter,
    ifd_filter,
    mix,
    select,
    verify,
)

__all__ = [
    "backend_config",
    "build_stage",
    "complete",
    "config_error",
    "decontaminate",
    "dedup",
    "heuristic_filter",
    "ifd_filter",
    "inspect_output",
    "mix",
    "run_pipeline",
    "run_stage",
    "select",
    "verify",
]
