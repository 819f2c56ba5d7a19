"""Feedback: judges and reward models that rate completions, and preference data made from them.

* :mod:`stillroom.feedback.ultrafeedback`: the UltraFeedback judge (four aspects, 1-5);
* :mod:`stillroom.feedback.pairwise`: pairwise comparison in both orders (position bias -> tie);
* :mod:`stillroom.feedback.rubric`: single-answer grading (MT-Bench style, or a rubric file);
* :mod:`stillroom.feedback.reward_model`: a local sequence-classification reward model;
* :mod:`stillroom.feedback.principle_preference`: Constitutional AI soft preference labels;
* :mod:`stillroom.feedback.pairs`: ratings -> TRL's ``prompt``/``chosen``/``rejected``.

Judges share :mod:`stillroom.feedback.judging` (schema-constrained or lenient answers, re-asks).
torch and transformers load only when a reward model runs.
"""

from stillroom.feedback.pairs import Pair, PairsResult, PreferencePairs, binarize, score_of
from stillroom.feedback.pairwise import PairwiseJudge
from stillroom.feedback.principle_preference import PrinciplePreference
from stillroom.feedback.reward_model import RewardModel, RewardScorer
from stillroom.feedback.rubric import Rubric, RubricJudge, load_rubric
from stillroom.feedback.ultrafeedback import UltraFeedbackJudge

__all__ = [
    "Pair",
    "PairsResult",
    "PairwiseJudge",
    "PreferencePairs",
    "PrinciplePreference",
    "RewardModel",
    "RewardScorer",
    "Rubric",
    "RubricJudge",
    "UltraFeedbackJudge",
    "binarize",
    "load_rubric",
    "score_of",
]
