#!/usr/bin/env python
"""IFD scoring: stillroom's scorer (through the backend) against a plain batch-1 loop, same model.

How to run (from the repository root, with the repo's .venv):

    python bench/ifd_throughput.py [--n 200] [--chunk 50] [--batch-size 16]
                                   [--batch-tokens 4096] [--model PATH] [--device cpu]
                                   [--seed 0] [--out bench/results/ifd_throughput.json]

The pairs: N Alpaca-like (instruction, input, output) triples made from templates in this
script (about a third with an ``input``; answers from a few words to a few sentences), so the
lengths vary as in real data. The model: the embedded SmolLM2-135M-Instruct GGUF loaded by
transformers in float32 (or ``--model``), loaded once and shared by both ways.

Plain loop (the way the reference code, tianyi-lab/Superfiltering ``code_ifd/data_analysis.py``,
computes it): per pair, one forward pass over prompt + answer with ``labels`` = the ids with the
prompt tokens set to -100, and one over the answer alone with ``labels`` = its ids; the model's
own loss (mean over the labelled tokens) of each; IFD = exp(loss_cond) / exp(loss_alone). It is
given the token ids the backend scores (prompt read as plain text with the tokenizer's leading
special tokens, answer tokenized apart and cut to max_length; the answer alone after the leading
special tokens), so the two differ only in how the forward passes are run.

Ours: ``IFDScorer.score``, the stage's path: each pair is two ``score`` requests through an
``LLMClient`` (no request cache here, so every request reaches the model) to the transformers
backend, which pools the waiting requests, sorts them by length and runs left-padded batches of
up to --batch-size sequences and --batch-tokens padded tokens, logits only for answer positions.

The two ways take turns, --chunk pairs at a time (ours first on one chunk, the plain loop first
on the next), so a change in what else the machine is doing falls on both about equally; ours
sorts and batches within each chunk. Prints examples/s of each, the ratio, and the largest
|IFD difference| (absolute and relative), and writes them to --out. Timings are wall-clock on
whatever else the machine is doing (the load average is printed before and after): on a shared
2-core machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stillroom.curate.ifd_scoring import Example, IFDScorer  # noqa: E402

TASKS = [
    ("Give three tips for {topic}.", "", "1. {a}\n2. {b}\n3. {c}"),
    ("Explain {topic} in one sentence.", "", "{a} {b}"),
    ("Summarize the text below.", "{a} {b} {c} {a}", "{b}"),
    ("Rewrite the sentence in a formal tone.", "{a}", "{b}"),
    ("Write a short paragraph about {topic}.", "", "{a} {b} {c} {a} {c}"),
    ("Classify the sentiment of the review as positive or negative.", "{a}", "Positive."),
    ("Answer the question about {topic}.", "What matters most about {topic}?", "{c}"),
    ("List two facts about {topic}.", "", "- {a}\n- {b}"),
    ("Translate the sentence into French.", "{a}", "Voici une phrase traduite en français sur le sujet."),
    ("Give an example of {topic} and say why it fits.", "", "For example, {a} This fits because {b}"),
]
TOPICS = [
    "staying healthy", "saving money", "learning a language", "the water cycle", "remote work",
    "electric cars", "black holes", "public libraries", "time management", "honey bees",
    "recycling plastic", "the Roman empire", "sleep", "job interviews", "coral reefs",
]
SENTENCES = [
    "Regular exercise improves both mood and long-term health.",
    "A budget helps you see where your money goes each month.",
    "Practice every day, even for ten minutes, and it adds up.",
    "Water evaporates, forms clouds, and falls again as rain.",
    "Working from home saves commuting time but needs clear boundaries.",
    "Electric cars are quiet and have fewer moving parts than petrol cars.",
    "Nothing, not even light, escapes from inside a black hole's event horizon.",
    "Libraries lend books, host classes, and offer free internet access.",
    "Write down the three most important tasks before starting the day.",
    "Bees pollinate many of the crops that people eat.",
    "Only some kinds of plastic can be recycled into new products.",
    "The Roman empire built roads that connected distant provinces.",
    "Adults need about seven to nine hours of sleep a night.",
    "Prepare short stories that show what you did and what you learned.",
    "Coral reefs shelter about a quarter of all marine species.",
]


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        instruction, input_text, output = rng.choice(TASKS)
        words = {"topic": rng.choice(TOPICS), **{k: rng.choice(SENTENCES) for k in "abc"}}
        example = Example(instruction.format(**words), input_text.format(**words),
                          output.format(**words), "alpaca")
        pairs.append((example.prompt, example.answer))
    return pairs


def encode(scorer: IFDScorer, prompt: str, answer: str) -> tuple[list[int], int, list[int], int] | None:
    """(prompt + answer ids, answer tokens, answer-alone ids, tokens scored alone) as the backend
    builds them for IFD; None when the pair cannot be scored."""
    backend = scorer.client.backend
    tokenizer = backend._tokenizer
    lead = list(tokenizer("", add_special_tokens=True)["input_ids"])
    context = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    limit = min(scorer.max_length, backend._max_positions or scorer.max_length)
    kept = answer_ids[: max(0, limit - len(context))]
    alone = len(kept) if lead else len(kept) - 1
    if not answer.strip() or not kept or alone < 1:
        return None
    return context + kept, len(kept), lead + kept, alone


def plain_loop(scorer: IFDScorer, pairs: list[tuple[str, str]]) -> list[float | None]:
    """Two forward passes per pair at batch 1, the model's own loss on labelled tokens."""
    import torch

    model = scorer.client.backend._model
    device = next(model.parameters()).device
    results: list[float | None] = []
    with torch.inference_mode():
        for prompt, answer in pairs:
            encoded = encode(scorer, prompt, answer)
            if encoded is None:
                results.append(None)
                continue
            losses = []
            conditioned, answer_tokens, direct, direct_tokens = encoded
            for ids, scored in ((conditioned, answer_tokens), (direct, direct_tokens)):
                input_ids = torch.tensor([list(ids)], device=device)
                labels = input_ids.clone()
                labels[0, : len(ids) - scored] = -100
                losses.append(float(model(input_ids=input_ids, labels=labels).loss))
            results.append(math.exp(losses[0]) / math.exp(losses[1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=50, help="pairs per turn")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--model", default=None, help="a .gguf or model folder; default embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ifd_throughput.json"))
    args = parser.parse_args()

    import torch

    load_before = os.getloadavg()
    pairs = make_pairs(args.n, args.seed)
    scorer = IFDScorer(args.model, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                       device=args.device)
    started = time.perf_counter()
    scorer.load()
    load_seconds = time.perf_counter() - started
    scorer.score(pairs[:4])  # warm-up: first-call allocations are not the method's cost
    plain_loop(scorer, pairs[:2])
    calls_before = scorer.forward_calls or 0

    ours: list = []
    plain: list[float | None] = []
    ours_seconds = plain_seconds = 0.0
    for turn, start in enumerate(range(0, len(pairs), args.chunk)):
        chunk = pairs[start : start + args.chunk]
        for way in (("ours", "plain") if turn % 2 == 0 else ("plain", "ours")):
            started = time.perf_counter()
            if way == "ours":
                ours.extend(scorer.score(chunk))
                ours_seconds += time.perf_counter() - started
            else:
                plain.extend(plain_loop(scorer, chunk))
                plain_seconds += time.perf_counter() - started

    differences = [
        (abs(a.ifd - b), abs(a.ifd - b) / abs(b))
        for a, b in zip(ours, plain, strict=True)
        if a.ifd is not None and b is not None
    ]
    forward_calls = (scorer.forward_calls or 0) - calls_before
    tokens = sum(
        len(e[0]) + len(e[2]) for e in (encode(scorer, p, a) for p, a in pairs) if e is not None
    )
    result = {
        "n": args.n,
        "scored": len(differences),
        "model": scorer.name,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "chunk": args.chunk,
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "tokens_in_both_sequences": tokens,
        "load_seconds": round(load_seconds, 2),
        "ours_seconds": round(ours_seconds, 3),
        "ours_forward_calls": forward_calls,
        "plain_seconds": round(plain_seconds, 3),
        "plain_forward_calls": 2 * len(differences),
        "ours_examples_per_s": round(args.n / ours_seconds, 2),
        "plain_examples_per_s": round(args.n / plain_seconds, 2),
        "speedup": round(plain_seconds / ours_seconds, 2),
        "max_abs_ifd_difference": max((d for d, _ in differences), default=None),
        "max_rel_ifd_difference": max((r for _, r in differences), default=None),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "torch": torch.__version__,
    }
    print(f"IFD of {args.n} Alpaca-like pairs with {scorer.name} on {args.device} "
          f"({torch.get_num_threads()} torch threads; load average {result['loadavg_before']})")
    print(f"  plain batch-1 loop : {result['plain_examples_per_s']:8.2f} examples/s "
          f"({plain_seconds:.1f} s, {result['plain_forward_calls']} forward passes)")
    print(f"  batched (ours)     : {result['ours_examples_per_s']:8.2f} examples/s "
          f"({ours_seconds:.1f} s, {forward_calls} forward passes, batch_size "
          f"{args.batch_size}, batch_tokens {args.batch_tokens})")
    print(f"  speedup            : {result['speedup']:.2f}x")
    print(f"  max |IFD difference|: {result['max_abs_ifd_difference']:.3g} "
          f"(relative {result['max_rel_ifd_difference']:.3g})")
    print(f"  load average after : {result['loadavg_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
