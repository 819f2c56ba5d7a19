"""Built-in stages. Importing this module registers them under their ``type`` names."""

from stillroom.stages.complete import Complete

__all__ = ["Complete"]
