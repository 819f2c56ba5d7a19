"""Built-in stages. Importing this module registers them under their ``type`` names."""

from stillroom.feedback.pairs import PreferencePairs
from stillroom.stages.complete import Complete
from stillroom.verify.rejection import MajorityVote, RejectionSample
from stillroom.verify.stage import Verify

__all__ = ["Complete", "MajorityVote", "PreferencePairs", "RejectionSample", "Verify"]
