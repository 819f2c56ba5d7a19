"""Built-in stages. Importing this module registers them under their ``type`` names."""

from stillroom.curate.decontaminate import Decontaminate
from stillroom.curate.dedup import Dedup
from stillroom.curate.echo import EchoFilter
from stillroom.curate.heuristics import HeuristicFilter
from stillroom.curate.ifd import IFDFilter
from stillroom.curate.select import Select
from stillroom.feedback.pairs import PreferencePairs
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.principle_preference import PrinciplePreference
from stillroom.feedback.reward_model import RewardModel
from stillroom.feedback.rubric import RubricJudge
from stillroom.feedback.ultrafeedback import UltraFeedbackJudge
from stillroom.stages.complete import Complete
from stillroom.stages.teacher_logprobs import TeacherLogprobs
from stillroom.verify.rejection import MajorityVote, RejectionSample
from stillroom.verify.stage import Verify

__all__ = [
    "Complete",
    "Decontaminate",
    "Dedup",
    "EchoFilter",
    "HeuristicFilter",
    "IFDFilter",
    "MajorityVote",
    "PairwiseJudge",
    "PreferencePairs",
    "PrinciplePreference",
    "RejectionSample",
    "RewardModel",
    "RubricJudge",
    "Select",
    "TeacherLogprobs",
    "UltraFeedbackJudge",
    "Verify",
]
