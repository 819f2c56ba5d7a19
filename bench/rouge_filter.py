#!/usr/bin/env python
"""Self-Instruct's ROUGE-L novelty filter: the reference code's plain loop against
stillroom's pruned pool (src/stillroom/generate/rouge_pool.py), on the same stream.

How to run (from the repository root, with the repo's .venv):

    python bench/rouge_filter.py [--sizes 1000,10000] [--sample 200] [--full-limit 2000]
                                 [--seed 0] [--out bench/results/rouge_filter.txt]

The stream: N instructions made from templates (an opener, a task, an object, a setting and a
constraint, each drawn from lists of a dozen to seventy phrasings, so most are novel) with planted
near-duplicates (15% are an earlier instruction with a word or two inserted, removed or swapped,
5% an exact repeat). The pool starts with the 175 Self-Instruct seed tasks, as in the paper;
each candidate is checked against the pool and added when no entry has ROUGE-L F1 > 0.7.

Plain loop: what bootstrap_instructions.py does for each candidate, single-process:
``rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(candidate, entry)`` for every
pool entry (tokenizing both texts each time), then max > 0.7. (The reference spreads each
candidate's loop over a multiprocessing Pool(4); that divides its wall time by at most the number
of cores and spends 4x the CPU, and it is left out here.)

Ours: ``RougePool.most_similar_above`` then ``add``: each text tokenized once, upper bounds from
an inverted index, an exact LCS only for entries whose bound exceeds 0.7.

Both run on the same stream and every decision (keep or drop, and for a drop the most similar
entry and its score) is compared. For N above --full-limit the plain loop would take too long
(its cost grows with N^2), so it runs on a random sample of --sample candidates, each against
the pool exactly as it stood when that candidate came (the pool only grows, so it is a prefix of
the final pool); its total time is extrapolated as the measured time per comparison times the
number of comparisons the whole stream needs, and the output says so.

Prints a table and writes the same text to --out. Timings are wall-clock seconds on whatever the
machine is doing; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rouge_score import rouge_scorer  # noqa: E402

from stillroom.generate.rouge_pool import RougePool  # noqa: E402

OPENERS = [
    "", "Please", "Can you", "I would like you to", "Your task is to", "In this task, you",
    "Quickly", "Carefully", "For a school project,", "As a helpful assistant,",
    "Using simple words,",
]  # fmt: skip
TASKS = [
    "write a short poem about", "explain the main causes of", "list three facts about",
    "summarize a news story on", "give practical tips for dealing with", "describe the history of",
    "compare two opinions on", "suggest a catchy title for an essay on",
    "generate five interview questions about", "classify the sentiment of a tweet about",
    "translate into French a sentence about", "write a product review mentioning",
    "create a multiple-choice question on", "draft a polite email asking about",
    "outline a lesson plan on", "identify the logical fallacy in an argument about",
    "rewrite in formal English a paragraph about", "propose a weekend schedule around",
    "estimate the cost of", "name common misconceptions about", "write a limerick about",
    "argue for and against", "explain to a child", "give a step-by-step guide to",
]  # fmt: skip
OBJECTS = [
    "climate change", "the French revolution", "learning to play the violin", "remote work",
    "quantum computing", "healthy breakfast options", "the stock market", "urban gardening",
    "electric cars", "the water cycle", "medieval castles", "social media addiction",
    "public libraries", "volcanoes", "saving money as a student", "the Olympic games",
    "machine translation", "honey bees", "renting an apartment", "black holes",
    "job interviews", "the Roman empire", "recycling plastic", "time management",
    "marathon training", "the human immune system", "board games", "coral reefs",
    "online privacy", "jazz music", "vaccines", "the printing press", "cryptocurrency",
    "a rainy afternoon", "moving to a new city", "the Amazon rainforest", "sleep hygiene",
    "the first moon landing", "street food in Asia", "bilingual education", "chess openings",
    "wind turbines", "the Silk Road", "home composting", "electric guitars", "tidal energy",
    "antibiotic resistance", "the Great Depression", "minimalist living", "deep sea creatures",
    "podcast production", "bread baking", "the Renaissance", "mountain hiking", "3D printing",
    "sign language", "desert ecosystems", "public transport", "ancient Greek theatre",
    "video game design", "urban legends", "solar eclipses", "fast fashion", "beekeeping",
]  # fmt: skip
SETTINGS = [
    "", "", "", "in ancient Rome", "for complete beginners", "in small rural towns",
    "during a cold winter", "on a tight budget", "for retired people", "in developing countries",
    "after midnight", "in the year 2050", "for a local newspaper", "in a science museum",
    "on a desert island", "for visually impaired readers", "in a busy hospital",
    "at a summer camp", "for a startup company", "in post-war Europe", "under heavy rain",
    "for first-year university students", "in a tiny apartment", "during a power outage",
]  # fmt: skip
CONSTRAINTS = [
    "", "in one sentence", "for a ten-year-old", "using bullet points", "in under fifty words",
    "with a humorous tone", "citing at least one statistic", "without using the letter e",
    "as a dialogue between two friends", "from the point of view of a historian",
    "and end with a question", "in the style of a tabloid headline", "with three examples",
    "for a busy manager", "and explain your reasoning",
]  # fmt: skip
FILLERS = ["really", "also", "briefly", "clearly", "some", "very", "then", "again"]


def instruction(rng: random.Random) -> str:
    parts = [rng.choice(OPENERS), rng.choice(TASKS), rng.choice(OBJECTS), rng.choice(SETTINGS),
             rng.choice(CONSTRAINTS)]
    text = " ".join(part for part in parts if part).strip() + "."
    return text[0].upper() + text[1:]


def near_duplicate(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 2)):
        op = rng.random()
        position = rng.randrange(len(words))
        if op < 0.4:
            words.insert(position, rng.choice(FILLERS))
        elif op < 0.7 and len(words) > 4:
            words.pop(position)
        else:
            other = rng.randrange(len(words))
            words[position], words[other] = words[other], words[position]
    return " ".join(words)


def make_stream(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(size):
        roll = rng.random()
        if out and roll < 0.15:
            out.append(near_duplicate(rng.choice(out), rng))
        elif out and roll < 0.20:
            out.append(rng.choice(out))
        else:
            out.append(instruction(rng))
    return out


def seed_instructions() -> list[str]:
    path = ROOT / "src" / "stillroom" / "resources" / "self_instruct_seed_tasks.jsonl"
    with path.open() as file:
        return [json.loads(line)["instruction"] for line in file]


Decision = tuple[int, float] | None  # (pool index of the most similar entry, its F1) or None


def run_ours(seeds: list[str], stream: list[str]) -> tuple[float, list[Decision], list[int], int]:
    """Seconds, decisions, pool size before each candidate, exact LCS computations."""
    started = time.perf_counter()
    pool = RougePool(0.7)
    for text in seeds:
        pool.add(text)
    decisions: list[Decision] = []
    sizes: list[int] = []
    for text in stream:
        sizes.append(len(pool))
        match = pool.most_similar_above(text)
        if match is None:
            pool.add(text)
            decisions.append(None)
        else:
            decisions.append((match.index, match.score))
    return time.perf_counter() - started, decisions, sizes, pool.exact_comparisons


def plain_decision(scorer: rouge_scorer.RougeScorer, text: str, pool: list[str]) -> Decision:
    """The reference loop: score against every entry, drop when the max exceeds 0.7."""
    scores = [scorer.score(text, entry)["rougeL"].fmeasure for entry in pool]
    if not scores:
        return None
    best = max(scores)
    return (scores.index(best), best) if best > 0.7 else None


def run_plain_full(seeds: list[str], stream: list[str]) -> tuple[float, list[Decision]]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    started = time.perf_counter()
    pool = list(seeds)
    decisions: list[Decision] = []
    for text in stream:
        decision = plain_decision(scorer, text, pool)
        if decision is None:
            pool.append(text)
        decisions.append(decision)
    return time.perf_counter() - started, decisions


def run_plain_sampled(
    seeds: list[str], stream: list[str], ours: list[Decision], sizes: list[int], sample: int,
    seed: int,
) -> tuple[float, int, int]:
    """Time the plain loop on ``sample`` candidates against the pool as it stood for each;
    returns (extrapolated total seconds, candidates compared, how many decisions differ)."""
    final_pool = list(seeds) + [text for text, d in zip(stream, ours, strict=True) if d is None]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    chosen = sorted(random.Random(seed).sample(range(len(stream)), min(sample, len(stream))))
    seconds = 0.0
    comparisons = 0
    differ = 0
    for position in chosen:
        pool = final_pool[: sizes[position]]
        started = time.perf_counter()
        decision = plain_decision(scorer, stream[position], pool)
        seconds += time.perf_counter() - started
        comparisons += len(pool)
        differ += decision != ours[position]
    per_comparison = seconds / max(comparisons, 1)
    return per_comparison * sum(sizes), len(chosen), differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--full-limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rouge_filter.txt"))
    args = parser.parse_args()

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    seeds = seed_instructions()
    say("ROUGE-L novelty filter (threshold 0.7): reference plain loop vs stillroom RougePool")
    say(f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs; "
        f"load average at start {os.getloadavg()[0]:.2f}")
    say(f"pool starts with the {len(seeds)} seed tasks; stream seed {args.seed}")
    say()
    header = (f"{'N':>6} {'kept':>6} {'dropped':>7} {'ours s':>8} {'plain s':>9} {'ratio':>7} "
              f"{'LCS ours':>9} {'LCS plain':>11}  decisions")
    say(header)
    notes = []
    for size in (int(part) for part in args.sizes.split(",")):
        stream = make_stream(size, args.seed)
        ours_s, ours, sizes, exact = run_ours(seeds, stream)
        kept = sum(d is None for d in ours)
        plain_pairs = sum(sizes)
        if size <= args.full_limit:
            plain_s, plain = run_plain_full(seeds, stream)
            differ = sum(a != b for a, b in zip(ours, plain, strict=True))
            verdict = f"identical on all {size}" if differ == 0 else f"{differ} DIFFER of {size}"
            plain_text = f"{plain_s:9.1f}"
        else:
            plain_s, compared, differ = run_plain_sampled(
                seeds, stream, ours, sizes, args.sample, args.seed
            )
            verdict = (f"identical on {compared} sampled" if differ == 0
                       else f"{differ} DIFFER of {compared} sampled")
            plain_text = f"~{plain_s:8.0f}"
            notes.append(
                f"N={size}: the plain loop ran on {compared} randomly sampled candidates (each "
                f"against the pool as it stood then); its total is extrapolated from the time per "
                f"comparison x {plain_pairs:,} comparisons (marked ~)."
            )
        say(f"{size:>6} {kept:>6} {size - kept:>7} {ours_s:8.2f} {plain_text} "
            f"{plain_s / ours_s:6.0f}x {exact:>9,} {plain_pairs:>11,}  {verdict}")
    say()
    for note in notes:
        say(note)
    say("LCS ours: exact LCS computations after pruning; LCS plain: rouge-score calls (each "
        "tokenizes both texts and fills an LCS table).")
    say(f"load average at end {os.getloadavg()[0]:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
