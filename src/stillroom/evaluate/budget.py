"""Budget forcing (s1: Muennighoff et al. 2025, "s1: Simple test-time scaling"): control how long a
reasoning model thinks, at inference, with no training.

    budget_forcing:
      think_start: "<think>"        # appended after the rendered prompt ("" if the template opens it)
      think_end: "</think>"         # the end-of-thinking delimiter
      answer_prefix: "Final Answer:"
      max_thinking_tokens: 512      # cap: stop thinking here and make the model answer
      max_waits: 2                  # ignore the end of thinking this many times (s1's num_ignore)
      min_thinking_tokens: 0        # floor: also ignore it while fewer tokens were spent
      wait: "Wait"
      max_answer_tokens: null       # default: generation.max_new_tokens

The method, per prompt (all prompts of a round are decoded as one batch):

1. The model continues ``prompt + think_start`` with ``think_end`` as a stop string, for at most
   the tokens left of ``max_thinking_tokens`` (``generation.max_new_tokens`` when no cap is set).
2. It stops by itself (it wrote ``think_end``, which is cut off, or its EOS). The end is
   ignored (the delimiter is never written into the text, ``wait`` is appended and the model
   continues from there: step 1 again) when either

   * fewer than ``max_waits`` waits were appended so far: the first ``max_waits`` ends are
     ignored whatever the length, as s1's ``thinking_n_ignore`` does; or
   * fewer than ``min_thinking_tokens`` were spent (and the last round wrote at least one
     token): the floor goes on extending after ``max_waits`` is used up.

   Otherwise thinking ends. The defaults (``max_waits: 0``, ``min_thinking_tokens: 0``) append
   nothing; s1's "Wait" runs are ``max_waits: 1, 2, 4, 6``.
3. The budget runs out: thinking is cut there (s1's "forcefully end the thinking process").
   The cap always wins: no wait is appended once it is reached, so neither knob can loop
   forever.
4. Answer: ``think_end``, a newline and ``answer_prefix`` are appended, and the model writes the
   answer (up to ``max_answer_tokens``, until EOS).

The answer, ``answer_prefix`` included, is what a verifier checks; the thinking is kept
beside it. Token counts are the generator's (tokens generated, so a re-tokenized continuation
may differ by a token or two at each seam). s1 suppresses the end-of-thinking token inside the
sampler; stopping at the delimiter and continuing the text is the same thing for a model that
takes raw text, and works with any backend that accepts raw prompts. Differences from s1's code:
``wait`` goes after a newline unless the thinking ends in white space (s1 appends it right after
the text), and each round may use only what is left of the cap (s1 lets each round run to the
cap and cuts the total afterwards). s1's separate ``min_tokens_thinking`` (suppress the end token
inside the sampler, no wait string) is not offered; ``min_thinking_tokens`` appends ``wait``.

The steps per prompt (:func:`start`, :func:`think_step`, :func:`answer_step`) are shared with
the ``budget_forced`` pipeline stage (:mod:`stillroom.generate.budget_forced`), which runs them
one row at a time to generate data; :func:`budget_force` runs them over batches here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stillroom.evaluate.config import BudgetForcing
from stillroom.evaluate.generation import Generation, Generator


@dataclass(slots=True)
class Forced:
    """One budget-forced answer."""

    prompt: str
    answer: str = ""  # answer_prefix + the model's answer: what is verified
    thinking: str = ""
    thinking_tokens: int = 0
    answer_tokens: int = 0
    waits: int = 0
    capped: bool = False  # thinking was cut at max_thinking_tokens
    finish_reason: str = "stop"
    errors: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens

    def record(self) -> dict[str, Any]:
        return {"thinking": self.thinking, "thinking_tokens": self.thinking_tokens,
                "answer_tokens": self.answer_tokens, "waits": self.waits, "capped": self.capped}


def _append_wait(thinking: str, wait: str) -> str:
    if not thinking or thinking[-1].isspace() or wait[:1].isspace():
        return thinking + wait
    return thinking + "\n" + wait


def _ignore_end(state: Forced, options: BudgetForcing, *, wrote: int) -> bool:
    """Whether the model's end of thinking is ignored (the cap is checked before this)."""
    if state.waits < options.max_waits:
        return True
    # The floor is bounded by the cap only if every round spends a token: a model that ends at
    # once after the wait would otherwise be asked again for ever.
    return state.thinking_tokens < options.min_thinking_tokens and wrote > 0


# -- the per-prompt steps: the batched loop below and the ``budget_forced`` pipeline stage
# (stillroom.generate.budget_forced, one row at a time over an async client) both run these, so
# the two cannot drift apart.


def thinking_cap(options: BudgetForcing, max_new_tokens: int) -> int:
    """The most tokens thinking may spend in all (``max_new_tokens`` when no cap is set)."""
    return options.max_thinking_tokens or max_new_tokens


def answer_budget(options: BudgetForcing, max_new_tokens: int) -> int:
    return options.max_answer_tokens or max_new_tokens


def answer_tail(options: BudgetForcing) -> str:
    """What is written after the thinking to make the model answer (step 4)."""
    return f"{options.think_end}\n{options.answer_prefix}"


def start(prompt: str, options: BudgetForcing) -> Forced:
    """A prompt's state before its first thinking round (``prompt``: the text before the
    assistant's thinking; the state's ``prompt`` then ends with ``think_start``)."""
    return Forced(prompt=prompt + options.think_start)


def think_step(state: Forced, out: Generation, options: BudgetForcing, cap: int) -> bool:
    """Take one thinking round's generation into ``state`` (steps 2 and 3); True when the model
    is to think again (a wait was appended), False when thinking is over (ended, capped, or
    the request failed: see ``state.errors``)."""
    text = out.text
    if options.think_end and options.think_end in text:
        # The end of thinking is a stop string, so the text should hold none; a server that
        # ignored `stop` wrote past it (an answer, even). What follows is not thinking: cut it,
        # and take the round as ended there.
        text = text[:text.index(options.think_end)]
    state.thinking += text
    state.thinking_tokens += out.tokens
    if out.finish_reason == "error":
        state.errors.append(out.error or "request failed")
    elif out.finish_reason == "length" or state.thinking_tokens >= cap:
        state.capped = True
    elif _ignore_end(state, options, wrote=out.tokens):
        state.thinking = _append_wait(state.thinking, options.wait)
        state.waits += 1
        return True
    return False


def answer_step(state: Forced, out: Generation, options: BudgetForcing) -> None:
    """Take the answer's generation into ``state`` (step 4)."""
    state.answer = options.answer_prefix + out.text
    state.answer_tokens = out.tokens
    state.finish_reason = out.finish_reason
    if out.finish_reason == "error":
        state.errors.append(out.error or "request failed")


def budget_force(
    generator: Generator,
    prompts: Sequence[str],
    options: BudgetForcing,
    *,
    max_new_tokens: int,
) -> list[Forced]:
    """Budget-forced answers to raw ``prompts`` (already rendered, assistant turn open).

    ``max_new_tokens`` bounds thinking when no ``max_thinking_tokens`` is set, and the answer
    when no ``max_answer_tokens`` is.
    """
    cap = thinking_cap(options, max_new_tokens)
    states = [start(prompt, options) for prompt in prompts]
    active = list(range(len(states)))
    while active:
        left = [cap - states[i].thinking_tokens for i in active]
        outs = generator.generate([states[i].prompt + states[i].thinking for i in active], left,
                                  stop=(options.think_end,))
        active = [i for i, out in zip(active, outs, strict=True)
                  if think_step(states[i], out, options, cap)]
    tail = answer_tail(options)
    ready = [i for i, state in enumerate(states) if not state.errors]
    outs = generator.generate([states[i].prompt + states[i].thinking + tail for i in ready],
                              answer_budget(options, max_new_tokens))
    for i, out in zip(ready, outs, strict=True):
        answer_step(states[i], out, options)
    for state in states:
        if state.errors:
            state.finish_reason = "error"
    return states


__all__ = ["Forced", "answer_budget", "answer_step", "answer_tail", "budget_force", "start",
           "think_step", "thinking_cap"]
