"""The quickstart's task: two-digit addition answered as one equation, ``40 + 85 = 125``.

Why this task. The loop has to show, on a 135M model and 2 CPU cores in minutes, whether
distillation helped, and "helped" must be measured honestly: every answer has one right form that
a strict checker (the ``exact`` verifier) accepts or rejects, with no judge in the way. The
embedded model alone rarely writes the right equation when simply asked (its first guesses ramble
or miscount); shown three worked examples first, it does so for about a third of its samples
(measured here: 66 of 192 samples at T=0.8, 15 of 24 prompts had at least one). That is the
teacher: the same model with the seed examples in its context. The student is asked the bare
question, with no examples, and has to learn both the form and the sums from the teacher's
verified answers (context distillation plus rejection sampling, in the spirit of STaR).

Seeds and prompts. A seed task is a template, the form of its answer and three worked examples.
Synthetic prompts are instances of a seed drawn with a seeded random generator: written by
program rather than by the model, because a prompt the model invents has no reference answer to
verify against. The held-out prompts are drawn first and the training prompts never repeat one
(the ``decontaminate`` stage checks that again on the data).
"""

from __future__ import annotations

import random

from stillroom.data.rows import Row

SEED_TASK: Row = {
    "id": "addition",
    "family": "two-digit addition",
    "template": "What is {a} + {b}? Reply with just the equation and its result.",
    "question": "What is {a} + {b}?",
    "answer": "{a} + {b} = {total}",
    # Worked examples: shown to the teacher only, and never drawn as prompts.
    "examples": [[12, 30], [47, 25], [63, 18]],
    "low": 10,
    "high": 99,
}


def instance(seed: Row, a: int, b: int) -> Row:
    """One prompt of ``seed`` for the numbers ``a`` and ``b``, with its reference answer and the
    teacher's conversation (the worked examples, then the question)."""
    fields = {"a": a, "b": b, "total": a + b}
    prompt = seed["template"].format(**fields)
    messages: list[dict[str, str]] = []
    for x, y in seed["examples"]:
        example = {"a": x, "b": y, "total": x + y}
        messages.append({"role": "user", "content": seed["template"].format(**example)})
        messages.append({"role": "assistant", "content": seed["answer"].format(**example)})
    messages.append({"role": "user", "content": prompt})
    return {
        "id": f"{seed['id']}-{a}-{b}",
        "seed_id": seed["id"],
        "question": seed["question"].format(**fields),
        "prompt": prompt,
        "answer": seed["answer"].format(**fields),
        "teacher_messages": messages,
    }


def draw_pairs(seed: Row, count: int, rng: random.Random, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``count`` distinct number pairs, none in ``exclude`` nor a worked example."""
    taken = set(exclude) | {tuple(example) for example in seed["examples"]}
    span = seed["high"] - seed["low"] + 1
    if count > span * span - len(taken):
        raise ValueError(f"cannot draw {count} distinct pairs from {seed['family']}")
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        pair = (rng.randint(seed["low"], seed["high"]), rng.randint(seed["low"], seed["high"]))
        if pair not in taken:
            taken.add(pair)
            pairs.append(pair)
    return pairs


def split_prompts(seed: Row, train: int, heldout: int, rng_seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Training and held-out prompts, disjoint: held-out drawn first, training from the rest."""
    rng = random.Random(rng_seed)
    held = draw_pairs(seed, heldout, rng, set())
    trained = draw_pairs(seed, train, rng, set(held))
    return [instance(seed, a, b) for a, b in trained], [instance(seed, a, b) for a, b in held]
