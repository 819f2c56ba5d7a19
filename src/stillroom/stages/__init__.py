"""Built-in stages. Importing this package declares them under their ``type`` names; each one's
module is imported the first time it is used (a pipeline file naming it, ``stages.get``, or
``from stillroom.stages import Dedup``), so a verb that runs one stage does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

from stillroom.pipeline.stage import stages

# type name -> (module, class). tests/unit/test_structure.py checks this against what importing
# every module registers, so a new built-in stage that is not listed here fails a test.
BUILTIN_STAGES: dict[str, tuple[str, str]] = {
    "budget_forced": ("stillroom.generate.budget_forced", "BudgetForced"),
    "complete": ("stillroom.stages.complete", "Complete"),
    "completions": ("stillroom.generate.completions", "Completions"),
    "constitutional": ("stillroom.generate.constitutional", "Constitutional"),
    "conversation": ("stillroom.generate.conversation", "Conversation"),
    "decontaminate": ("stillroom.curate.decontaminate", "Decontaminate"),
    "dedup": ("stillroom.curate.dedup", "Dedup"),
    "echo_filter": ("stillroom.curate.echo", "EchoFilter"),
    "evol_instruct": ("stillroom.generate.evol_instruct", "EvolInstruct"),
    "heuristic_filter": ("stillroom.curate.heuristics", "HeuristicFilter"),
    "ifd_filter": ("stillroom.curate.ifd", "IFDFilter"),
    "magpie": ("stillroom.generate.magpie", "Magpie"),
    "majority_vote": ("stillroom.verify.rejection", "MajorityVote"),
    "pairwise_judge": ("stillroom.feedback.pairwise", "PairwiseJudge"),
    "persona_prompts": ("stillroom.generate.personas", "PersonaPrompts"),
    "preference_pairs": ("stillroom.feedback.pairs", "PreferencePairs"),
    "principle_preference": ("stillroom.feedback.principle_preference", "PrinciplePreference"),
    "rejection_sample": ("stillroom.verify.rejection", "RejectionSample"),
    "reward_model": ("stillroom.feedback.reward_model", "RewardModel"),
    "rubric_judge": ("stillroom.feedback.rubric", "RubricJudge"),
    "select": ("stillroom.curate.select", "Select"),
    "self_instruct": ("stillroom.generate.self_instruct", "SelfInstruct"),
    "self_instruct_instances": ("stillroom.generate.self_instruct_instances",
                                "SelfInstructInstances"),
    "teacher_logprobs": ("stillroom.stages.teacher_logprobs", "TeacherLogprobs"),
    "tool_check": ("stillroom.generate.tool_check", "ToolCheck"),
    "tool_queries": ("stillroom.generate.tool_queries", "ToolQueries"),
    "tool_use": ("stillroom.generate.tool_use", "ToolUse"),
    "ultrafeedback_judge": ("stillroom.feedback.ultrafeedback", "UltraFeedbackJudge"),
    "verify": ("stillroom.verify.stage", "Verify"),
}

for _name, (_module, _) in BUILTIN_STAGES.items():
    stages.declare(_name, _module)

_CLASSES = {cls: module for module, cls in BUILTIN_STAGES.values()}

__all__ = sorted(_CLASSES)


def __getattr__(name: str) -> Any:
    """``from stillroom.stages import Dedup``: the class, its module imported on first use."""
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_CLASSES])
