"""UltraFeedback-style principles: the system prompts that steer each teacher's completion.

UltraFeedback (Cui et al. 2023) makes its completions differ in more than the model: for every
completion it samples a *principle* (helpfulness, truthfulness, honesty, or verbalized
calibration) and puts one of several system prompts written for that principle before the
instruction. The judge later rates all four aspects, so completions written under different
principles give it something to tell apart.

The prompts below are our own wording of each principle (UltraFeedback's are not copied). The
honesty prompts ask the model to say when it is unsure; the calibration prompts ask it to end with
its confidence as a percentage.

Sampling weights: for general chat prompts (its ShareGPT and UltraChat subsets) UltraFeedback's
code picks helpfulness, truthfulness and honesty 3 : 1 : 1, then turns one honesty pick in ten into
verbalized calibration. :data:`DEFAULT_WEIGHTS` is that mix.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import orjson

PRINCIPLE_PROMPTS: dict[str, tuple[str, ...]] = {
    "helpfulness": (
        "You are a helpful assistant. Give the user an answer they can act on: correct, "
        "relevant to what they asked, and complete enough that they need not ask again.",
        "Aim to be genuinely useful. Work out what the user is trying to achieve, answer that "
        "directly, and add the detail or example that makes the answer easy to use.",
        "You are an assistant people come back to because your answers teach them something. "
        "Be accurate and clear, explain the why as well as the what, and keep a friendly tone.",
        "Answer thoroughly but without padding: lead with the answer, then give the steps, "
        "context or caveats the user will need.",
    ),
    "truthfulness": (
        "Answer truthfully. State only facts you have good reason to believe, stay faithful to "
        "any text or context the user gives, and never invent names, numbers or sources.",
        "Accuracy comes first. If the question rests on a false premise, say so instead of "
        "answering as if it were true, and do not add claims the question does not need.",
        "Keep every statement grounded: in well-established knowledge or in what the user wrote. "
        "Where something cannot be checked, leave it out rather than make it up.",
        "You are a careful, factual assistant. Prefer a shorter correct answer to a longer one "
        "that contains a single fabricated detail.",
    ),
    "honesty": (
        "Be honest about what you know. Answer plainly when you are sure; when you are not, say "
        "so in words (for example \"I think\", \"probably\", \"I am not certain\"), and answer "
        "\"I don't know\" when that is the truth.",
        "Your users trust you because you never overstate your knowledge. If part of the answer "
        "is a guess, mark it as a guess; if you cannot answer, say so and suggest where to look.",
        "Balance confidence with humility: be direct about what you know well, and say clearly "
        "which parts of your answer you are unsure of and why.",
        "It is better to admit uncertainty than to sound sure and be wrong. Whenever you are not "
        "confident in an answer, tell the user how confident you are and what you are unsure of.",
    ),
    "verbalized_calibration": (
        "After your answer, state how confident you are that it is correct, as a percentage on "
        "its own final line, in the form \"Confidence: 85%\". Make the number honest: it should "
        "match how often answers like yours turn out to be right.",
        "Answer the question, then end with one line \"Confidence: N%\" giving the probability, "
        "in your own judgement, that your answer is correct. Use low numbers when you are "
        "guessing.",
        "Give your best answer and then rate your certainty in it. Finish with a line of the form "
        "\"Confidence: N%\" (numbers only, e.g. 60%), where 100% means you are sure and 50% means "
        "it is a coin toss.",
    ),
}

PRINCIPLES: tuple[str, ...] = tuple(PRINCIPLE_PROMPTS)

# UltraFeedback's mix for general prompts: helpfulness 3/5, truthfulness 1/5, honesty 1/5 of
# which a tenth becomes verbalized calibration.
DEFAULT_WEIGHTS: dict[str, float] = {
    "helpfulness": 0.6,
    "truthfulness": 0.2,
    "honesty": 0.18,
    "verbalized_calibration": 0.02,
}

# Recorded in every row's lineage: editing any prompt above changes it.
PRINCIPLES_VERSION = "ultrafeedback_principles@" + hashlib.sha256(
    orjson.dumps(PRINCIPLE_PROMPTS, option=orjson.OPT_SORT_KEYS)
).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class PrincipleChoice:
    """The principle and system prompt chosen for one completion."""

    principle: str
    system_prompt_id: str  # "<principle>/<index>"
    system_prompt: str


def check_weights(weights: dict[str, float]) -> str | None:
    """What is wrong with a principle -> weight mapping, if anything."""
    unknown = sorted(set(weights) - set(PRINCIPLES))
    if unknown:
        return f"unknown principle(s) {unknown}; known: {list(PRINCIPLES)}"
    if any(weight < 0 for weight in weights.values()):
        return "principle weights must be >= 0"
    if not any(weight > 0 for weight in weights.values()):
        return "at least one principle needs a weight > 0 (or use `principles: none`)"
    return None


def sample_principle(weights: dict[str, float], rng: random.Random) -> PrincipleChoice:
    """Pick a principle by weight, then one of its system prompts uniformly."""
    names = [name for name in PRINCIPLES if weights.get(name, 0) > 0]
    principle = rng.choices(names, weights=[weights[name] for name in names])[0]
    prompts = PRINCIPLE_PROMPTS[principle]
    index = rng.randrange(len(prompts))
    return PrincipleChoice(principle, f"{principle}/{index}", prompts[index])
