"""Feedback: from rated completions to preference data.

:mod:`stillroom.feedback.pairs` turns a row of ``completions`` and their aligned ``ratings`` (a
number, or an aspect -> number dict, per completion) into a preference pair in the format TRL's
``DPOTrainer`` reads: ``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``.
"""

from stillroom.feedback.pairs import Pair, PairsResult, PreferencePairs, binarize, score_of

__all__ = ["Pair", "PairsResult", "PreferencePairs", "binarize", "score_of"]
