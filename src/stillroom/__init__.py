"""stillroom: synthetic data and distillation for LLM post-training.

Generate prompts and answers with a teacher model, judge and verify them, curate the result and
distill it into a smaller student; from a laptop CPU (an embedded small model) to a GPU cluster
(any OpenAI-compatible server) with the same pipeline file.
"""

from stillroom import llm, stages  # noqa: E402,F401  (registers the built-in backends, declares the stages)
from stillroom.pipeline.pipeline import Pipeline, RunOptions, RunResult  # noqa: E402
from stillroom.pipeline.stage import (  # noqa: E402
    AllRowsFilter,
    AllRowsStage,
    Drop,
    Dropped,
    Failed,
    FunctionStage,
    RowDecisions,
    RowFailure,
    Rows,
    RowStage,
    Stage,
    StageContext,
    register_stage,
)
from stillroom.version import __version__  # noqa: E402

__all__ = [
    "AllRowsFilter",
    "AllRowsStage",
    "Drop",
    "Dropped",
    "Failed",
    "FunctionStage",
    "Pipeline",
    "RowDecisions",
    "RowFailure",
    "RowStage",
    "Rows",
    "RunOptions",
    "RunResult",
    "Stage",
    "StageContext",
    "__version__",
    "register_stage",
]
