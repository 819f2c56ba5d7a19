"""Synthetic prompts and responses: Self-Instruct, Evol-Instruct, Magpie, personas, completions
from several teachers, Constitutional AI; and the diversity measures every generation stage reports.

Each method is a library class (usable from Python) and a pipeline stage (``type:`` in YAML).
Importing this package registers the stages.
"""

from stillroom.data.rows import PromptTemplate, derived_id, with_lineage
from stillroom.generate.completions import Completions
from stillroom.generate.constitutional import Constitutional
from stillroom.generate.evol_instruct import EvolInstruct
from stillroom.generate.magpie import Magpie
from stillroom.generate.personas import PersonaPrompts
from stillroom.generate.self_instruct import SelfInstruct
from stillroom.generate.self_instruct_instances import SelfInstructInstances

__all__ = [
    "Completions",
    "Constitutional",
    "EvolInstruct",
    "Magpie",
    "PersonaPrompts",
    "PromptTemplate",
    "SelfInstruct",
    "SelfInstructInstances",
    "derived_id",
    "with_lineage",
]
