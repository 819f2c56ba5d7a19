"""The pruned ROUGE-L pool decides exactly as the plain loop over rouge-score does."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer, tokenizers

from stillroom.generate.rouge_pool import RougePool, lcs_length, plain_most_similar, rouge_l_f1


class _MemoTokenizer(tokenizers.Tokenizer):
    """rouge-score's own tokenizer, memoized: the plain loop scores the same texts many times,
    and tokenizing is most of its cost. The scores are rouge-score's, unchanged."""

    def __init__(self) -> None:
        self._inner = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._memo: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        tokens = self._memo.get(text)
        if tokens is None:
            tokens = self._memo[text] = self._inner.tokenize(text)
        return tokens


def plain_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_MemoTokenizer())


WORDS = [
    "give", "explain", "list", "write", "describe", "classify", "the", "a", "of", "to", "for",
    "and", "in", "is", "why", "how", "what", "three", "tips", "healthy", "sentence", "story",
    "poem", "email", "numbers", "given", "following", "text", "data", "user", "best",
]  # fmt: skip
ODD = ["", "!!!", "?", "é", "日本語", "--", "C++", "e-mail", "3.14", "x2", "İstanbul", "ÀÉÎ"]


def mutate(text: str, rng: random.Random) -> str:
    """A near-duplicate: a few words inserted, removed, swapped or re-cased."""
    words = text.split()
    for _ in range(rng.randint(0, 3)):
        op = rng.random()
        position = rng.randrange(len(words) + 1)
        if op < 0.35:
            words.insert(position, rng.choice(WORDS + ODD))
        elif op < 0.6 and words:
            words.pop(min(position, len(words) - 1))
        elif op < 0.8 and len(words) > 1:
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        elif words:
            words[min(position, len(words) - 1)] = words[min(position, len(words) - 1)].upper()
    return " ".join(words)


def stream(rng: random.Random, size: int) -> list[str]:
    """Random instructions, near-duplicates of earlier ones, repeated tokens and texts with no
    rouge token at all (punctuation, non-ASCII)."""
    out: list[str] = []
    for _ in range(size):
        roll = rng.random()
        if out and roll < 0.4:
            out.append(mutate(rng.choice(out), rng))
        elif roll < 0.5:
            word = rng.choice(WORDS)
            out.append(" ".join([word] * rng.randint(1, 8) + rng.sample(WORDS, rng.randint(0, 3))))
        elif roll < 0.55:
            out.append(" ".join(rng.choice(ODD) for _ in range(rng.randint(0, 3))))
        else:
            vocabulary = WORDS[: rng.randint(4, len(WORDS))]  # small vocabularies: more overlap
            out.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 16))))
    return out


def run_both(texts: list[str], seeds: list[str], threshold: float) -> int:
    """Feed the same stream to the pool and to the plain loop; assert every decision, most
    similar entry and score agree. Returns how many were dropped."""
    scorer = plain_scorer()
    pool = RougePool(threshold)
    plain: list[str] = []
    for seed in seeds:
        pool.add(seed)
        plain.append(seed)
    dropped = 0
    for text in texts:
        expected = plain_most_similar(text, plain, threshold, scorer)
        match = pool.most_similar_above(text)
        got = None if match is None else (match.index, match.score)
        assert got == expected, (text, got, expected)
        if expected is None:
            pool.add(text)
            plain.append(text)
        else:
            dropped += 1
            assert match is not None and match.text == plain[expected[0]]
    assert pool.texts == plain
    return dropped


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.9])
def test_same_decisions_as_the_plain_loop_on_random_streams(threshold: float) -> None:
    rng = random.Random(threshold)
    dropped = total = 0
    for _ in range(12):  # 12 streams of 100 per threshold: 3,600 candidates in all
        seeds = stream(rng, 10)
        texts = stream(rng, 100)
        dropped += run_both(texts, seeds, threshold)
        total += len(texts)
    # The streams exercise both outcomes (a test that can fail in either direction).
    assert 0.1 * total < dropped < 0.9 * total


def test_same_decisions_on_realistic_instructions_with_planted_near_duplicates() -> None:
    from stillroom.data.readers import iter_rows, resolve_input_path

    seeds = [
        row["instruction"]
        for _, row in iter_rows(resolve_input_path("builtin:self_instruct_seed_tasks"))
    ]
    rng = random.Random(7)
    texts = []
    for _ in range(300):
        base = rng.choice(seeds)
        texts.append(mutate(base, rng) if rng.random() < 0.7 else base[::-1])
    dropped = run_both(texts, seeds[:100], 0.7)
    assert 0 < dropped < len(texts)


def test_crafted_edge_cases() -> None:
    seeds = [
        "one two three four five six seven eight nine ten",  # F = 0.7 exactly, in real numbers
        "Give three tips for staying healthy.",
        "Give three tips for staying healthy.",  # identical entries: the first one is reported
        "the the the the the",
        "!!! ???",  # no rouge tokens at all
    ]
    texts = [
        "one two three four five six seven x y z",  # lcs 7 of 10 and 10: 2*7/20
        "one two three four five six seven eight x y z",
        "Give three tips for staying healthy!",
        "GIVE three tips, for staying... healthy",
        "the the the",  # repeated tokens: lcs 3, F = 6/8
        "the",
        "the the the the the the the the the the the the",
        "",
        "...",
        "日本語のテキスト",
        "healthy staying for tips three give",  # same bag, reversed: lcs 1
    ]
    run_both(texts, seeds, 0.7)
    # the boundary case is decided by the float rouge-score computes, whichever side it falls
    exact = rouge_scorer.RougeScorer(["rougeL"]).score(texts[0], seeds[0])["rougeL"].fmeasure
    assert abs(exact - 0.7) < 1e-12


def test_empty_pool_and_texts_without_tokens_are_never_dropped() -> None:
    pool = RougePool()
    assert pool.most_similar_above("anything at all") is None
    pool.add("...")
    pool.add("")
    assert pool.most_similar_above("...") is None  # rouge-score: no tokens -> F1 0
    assert pool.most_similar_above("") is None


def test_bit_parallel_lcs_matches_rouge_scores_table() -> None:
    rng = random.Random(3)
    for _ in range(3000):
        a = [rng.randrange(6) for _ in range(rng.randint(0, 70))]
        b = [rng.randrange(6) for _ in range(rng.randint(0, 70))]
        masks: dict[int, int] = {}
        for position, token in enumerate(a):
            masks[token] = masks.get(token, 0) | (1 << position)
        expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
        assert lcs_length(masks, len(a), b) == expected


def test_f1_is_computed_as_rouge_score_computes_it() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    target, prediction = "a b c d e f g h i j k", "a b x c d e y"
    lcs = rouge_scorer._lcs_table(target.split(), prediction.split())[-1][-1]
    assert rouge_l_f1(lcs, 11, 7) == scorer.score(target, prediction)["rougeL"].fmeasure


def test_tokens_are_rouge_scores_own() -> None:
    pool = RougePool()
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    for text in ["İstanbul's C++ e-mail, 3.14!", "ÀÉÎ plain", "Running runs ran"]:
        assert pool.tokenize(text) == tokenizer.tokenize(text)


def test_pruning_skips_most_exact_comparisons() -> None:
    rng = random.Random(11)
    pool = RougePool()
    for text in stream(rng, 600):
        pool.add_if_novel(text)
    # Without pruning every candidate would be compared with every entry.
    assert pool.exact_comparisons < 600 * len(pool) / 20
