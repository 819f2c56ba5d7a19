"""Built-in stages. Importing this module registers them under their ``type`` names."""

from stillroom.stages.complete import Complete
from stillroom.verify.stage import Verify

__all__ = ["Complete", "Verify"]
