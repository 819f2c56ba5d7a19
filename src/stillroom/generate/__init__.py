"""Synthetic prompts and responses: Self-Instruct, Evol-Instruct, Magpie, personas, completions
from several teachers, Constitutional AI; and the diversity measures every generation stage reports.

Each method is a library class (usable from Python) and a pipeline stage (``type:`` in YAML).
Importing this package registers the stages.
"""

from stillroom.generate import (  # noqa: F401  (importing registers the stages)
    completions,
    constitutional,
    evol_instruct,
    magpie,
    personas,
    self_instruct,
)
from stillroom.generate.lineage import PromptTemplate, derived_id, with_lineage

__all__ = ["PromptTemplate", "derived_id", "with_lineage"]
