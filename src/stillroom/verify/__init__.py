"""Verifiers: checks of answers that need no model (math answers, code run in a sandbox,
formats). Importing this package registers them."""

from stillroom.verify import code, formats, math  # noqa: F401  (importing registers them)
from stillroom.verify.base import Verdict, Verifier, VerifierInputError, verifiers

__all__ = ["Verdict", "Verifier", "VerifierInputError", "verifiers"]
