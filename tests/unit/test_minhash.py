"""MinHash + LSH: normalization, LSH parameters, signatures, candidate pairs, union-find."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from stillroom.curate import minhash
from stillroom.curate.lsh_bands import (
    collision_probability,
    false_negative_area,
    false_positive_area,
    lsh_parameters,
)
from stillroom.curate.minhash import (
    MinHasher,
    MinHashIndex,
    bucket_pairs,
    candidate_pairs,
    connected_components,
    jaccard,
)
from stillroom.curate.shingling import Shingles, normalize_text, shingle_raw_texts, shingle_texts

# -- normalization -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Hello,   World!", "hello world"),
        ("  tabs\tand\nnew lines  ", "tabs and new lines"),
        ("It's (really) done…", "it s really done"),
        ("Ｆｕｌｌ－ｗｉｄｔｈ ﬁne", "full width fine"),  # NFKC: full-width letters, ligature
        ("ÉTÉ à Paris", "été à paris"),  # accents are letters, not punctuation
        ("price: $5 + tax < 7", "price $5 + tax < 7"),  # symbols are not punctuation
        ("«quoted» — ¿qué?", "quoted qué"),  # non-ASCII punctuation goes too
    ],
)
def test_normalization(text: str, normal: str) -> None:
    assert normalize_text(text) == normal


def test_punctuation_between_numbers_is_kept() -> None:
    # Arithmetic questions that differ only in the operator must not become duplicates.
    forms = ["What is 17*23?", "What is 17-23?", "What is 17/23?", "What is 17 - 23?"]
    assert len({normalize_text(text) for text in forms}) == len(forms)
    assert normalize_text("Pi is 3.14, about.") == "pi is 3.14 about"
    assert normalize_text("1,000 items") == "1,000 items"


# -- LSH parameters --------------------------------------------------------------------------


def reference_parameters(
    threshold: float, num_perm: int, fp_weight: float, fn_weight: float
) -> tuple[int, int]:
    """An independent search: midpoint rule with 20,000 steps, every (b, r) with b*r <= n."""
    steps = 20_000
    best, choice = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            low = (np.arange(steps) + 0.5) / steps * threshold
            high = threshold + (np.arange(steps) + 0.5) / steps * (1 - threshold)
            fp = np.mean(1 - (1 - low**rows) ** bands) * threshold
            fn = np.mean((1 - high**rows) ** bands) * (1 - threshold)
            error = fp_weight * fp + fn_weight * fn
            if error < best - 1e-12:
                best, choice = error, (bands, rows)
    return choice


@pytest.mark.parametrize(
    ("threshold", "num_perm", "fn_weight"),
    [(0.8, 128, 0.5), (0.7, 128, 0.5), (0.8, 128, 0.9), (0.9, 64, 0.5), (0.5, 32, 0.7)],
)
def test_lsh_parameters_match_an_independent_integration(
    threshold: float, num_perm: int, fn_weight: float
) -> None:
    chosen = lsh_parameters(threshold, num_perm, 1 - fn_weight, fn_weight)
    assert chosen == reference_parameters(threshold, num_perm, 1 - fn_weight, fn_weight)
    assert chosen[0] * chosen[1] <= num_perm


def test_false_positive_and_negative_areas() -> None:
    # For b = r = 1 the S-curve is s itself: areas t^2/2 below t and (1-t)^2/2 above it.
    assert false_positive_area(0.8, 1, 1) == pytest.approx(0.32, abs=1e-12)
    assert false_negative_area(0.8, 1, 1) == pytest.approx(0.02, abs=1e-12)
    grid = (np.arange(100_000) + 0.5) / 100_000 * 0.8
    midpoint = float(np.mean(collision_probability(grid, 9, 13)) * 0.8)
    assert false_positive_area(0.8, 9, 13) == pytest.approx(midpoint, rel=1e-6)


def test_lsh_parameters_agree_with_datasketch() -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold, num_perm in [(0.8, 128), (0.7, 256), (0.85, 128)]:
        assert lsh_parameters(threshold, num_perm) == lsh._optimal_param(
            threshold, num_perm, 0.5, 0.5
        )


def test_bad_lsh_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        lsh_parameters(0.0, 128)
    with pytest.raises(ValueError, match="bands and rows"):
        MinHashIndex(bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashIndex(bands=20, rows=10, num_perm=128)


# -- shingles, signatures, Jaccard -------------------------------------------------------------


def word_grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{index}" for index in range(60)]
    return [" ".join(rng.choices(vocabulary, k=rng.randint(0, 30))) for _ in range(count)]


def test_shingles_are_the_word_ngrams() -> None:
    texts = random_texts(300) + ["one two", "", "a b c d e", "a b c d e", "a b a b a b a b"]
    shingles = shingle_texts(texts, 5)
    distinct = [len(set(shingles.hashes[a:b].tolist())) for a, b in zip(shingles.offsets[:-1], shingles.offsets[1:], strict=True)]
    assert distinct == [len(word_grams(t)) for t in texts]
    # In text order, a repeated shingle as often as it comes ("a b a b a" twice, "b a b a b" twice).
    assert shingles.sizes().tolist()[-1] == 4 and distinct[-1] == 2
    assert list(shingles.hashes[shingles.offsets[-2] : shingles.offsets[-1]][:2]) == list(
        shingles.hashes[shingles.offsets[-2] + 2 : shingles.offsets[-2] + 4]
    )
    same = shingles.offsets[-3:-1]
    assert list(shingles.hashes[shingles.offsets[-4] : same[0]]) == list(shingles.hashes[same[0] : same[1]])
    with pytest.raises(ValueError, match="normalized"):
        shingle_texts(["two\nlines"], 5)


def test_words_and_shingles_of_any_length_are_told_apart() -> None:
    # Words are hashed 8 bytes at a time: words sharing 8 or 16 bytes, or differing by a byte
    # past them, or by a NUL, must not collide; nor texts whose words are split differently.
    words = ["abcdefgh", "abcdefghi", "abcdefghij", "abcdefgh" * 2, "abcdefgh" * 2 + "x",
             "abcdefgh" * 3, "abcdefgh" * 3 + "y", "a", "a\x00", "\x00a", "é", "e", "ab", "ba"]
    assert len(set(shingle_texts(words, 1).hashes.tolist())) == len(words)
    one = shingle_texts(["ab cd", "abc d", "a bcd", "abcd"], 1)
    assert len(set(one.hashes.tolist())) == 7  # ab, cd, abc, d, a, bcd, abcd
    whole = shingle_texts(["ab cd", "abc d", "a bcd", "abcd", ""], 5)  # short texts: one shingle
    assert whole.sizes().tolist() == [1] * 5 and len(set(whole.hashes.tolist())) == 5


UNICODE_PIECES = list(
    "abc XYZ 0123456789 .,;:!?-*/'\"()…—«»¿\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u2029\u1680\u3000"
    "ΣσςİéÉﬁＦｕ\u0301\u0308¨⑴٣$+<=>_@#%&[]{}"
) + [" 5", "5 ", "3.14", "1,000", "17 - 23", "K", "٣.٣", "abcdefghijklmnopqrstuvwxyz", "ééééé",
     "a b c d e f g", "5 . 5", "5 ,5", "x.5", "5.x", "\x00"]


@pytest.mark.parametrize("seed", range(4))
def test_raw_texts_are_shingled_as_their_normalized_forms(seed: int) -> None:
    # shingle_raw_texts normalizes a batch at once (one string, numpy for the punctuation rule):
    # it must give exactly the shingles of normalize_text's output, text by text.
    rng = random.Random(seed)
    for _ in range(300):
        texts = ["".join(rng.choice(UNICODE_PIECES) for _ in range(rng.randint(0, 30)))
                 for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.8:  # a NUL in a text takes the text-by-text path
            texts = [text.replace("\x00", "") for text in texts]
        if rng.random() < 0.4:  # ASCII only: the batched path with numpy punctuation
            texts = ["".join(c for c in text if c.isascii() and c != "\x00") for text in texts]
        ngram = rng.choice([1, 2, 5])
        raw = shingle_raw_texts(texts, ngram)
        normal = shingle_texts([normalize_text(text) for text in texts], ngram)
        assert raw.hashes.tolist() == normal.hashes.tolist(), texts
        assert raw.offsets.tolist() == normal.offsets.tolist(), texts


def test_raw_texts_of_an_empty_batch() -> None:
    assert len(shingle_raw_texts([], 5)) == 0
    assert MinHashIndex().sketcher([]) == []


def test_exact_jaccard_matches_python_sets() -> None:
    texts = random_texts(200, seed=1)
    # Near-copies: drop a word, so some pairs share most of their shingles.
    texts += [" ".join(text.split()[1:]) for text in texts[:50]]
    # Repeated shingles count once: "x y x y x y" has the 2 shingles "x y x" and "y x y".
    texts += ["x y x y x y", "x y x y", "y x y"]
    shingles = shingle_texts(texts, 3)
    pairs = np.array([(i, 200 + i) for i in range(50)] + [(i, i + 1) for i in range(199)]
                     + [(250, 251), (250, 252), (251, 252), (250, 250)])
    expected = [
        len(word_grams(texts[a], 3) & word_grams(texts[b], 3)) / len(word_grams(texts[a], 3) | word_grams(texts[b], 3))
        for a, b in pairs
    ]
    assert jaccard(shingles, pairs) == pytest.approx(expected)
    assert jaccard(shingles, pairs)[-4:].tolist() == [1.0, 0.5, 0.5, 1.0]


def test_signature_estimate_is_close_to_true_jaccard() -> None:
    rng = np.random.default_rng(7)
    errors = []
    for trial in range(60):
        size = int(rng.integers(20, 300))
        shared = int(rng.integers(0, size))
        common = rng.integers(0, 2**32, shared, dtype=np.uint64)
        a = np.unique(np.concatenate([common, rng.integers(0, 2**32, size - shared, dtype=np.uint64)]))
        b = np.unique(np.concatenate([common, rng.integers(0, 2**32, size - shared, dtype=np.uint64)]))
        sets = Shingles(np.concatenate([a, b]).astype(np.uint32), np.array([0, len(a), len(a) + len(b)]))
        true = jaccard(sets, np.array([[0, 1]]))[0]
        signatures = MinHasher(128, seed=trial).signatures(sets)
        errors.append(float(np.mean(signatures[:, 0] == signatures[:, 1])) - true)
    errors_array = np.abs(np.array(errors))
    # One component matches with probability J: the standard error is at most 0.5/sqrt(128).
    assert errors_array.mean() < 0.035
    assert errors_array.max() < 0.15


def test_signatures_follow_the_formula() -> None:
    hasher = MinHasher(6, seed=3)
    values = np.array([5, 2**32 - 1, 123456789, 5], dtype=np.uint32)  # a repeat changes nothing
    shingles = Shingles(values, np.array([0, 4]))
    assert (hasher.a % 2 == 1).all()
    expected = [
        min((int(hasher.a[k, 0]) * int(v) + int(hasher.b[k, 0])) % 2**32 for v in values)
        for k in range(6)
    ]
    assert hasher.signatures(shingles)[:, 0].tolist() == expected
    # The first k functions are the same whatever else is computed.
    assert hasher.signatures(shingles, 4)[:, 0].tolist() == expected[:4]


def test_signatures_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    texts = random_texts(50, seed=5)
    first = MinHashIndex(seed=7).sketcher(texts)[0]
    again = MinHashIndex(seed=7).sketcher(texts)[0]
    other = MinHashIndex(seed=8).sketcher(texts)[0]
    assert np.array_equal(first.bands, again.bands) and np.array_equal(first.hashes, again.hashes)
    assert not np.array_equal(first.bands, other.bands)
    assert np.array_equal(first.hashes, other.hashes)  # shingles do not depend on the seed


# -- candidate pairs and clusters ----------------------------------------------------------------


def test_bucket_pairs_all_pairs_in_small_buckets_and_star_in_big_ones() -> None:
    keys = np.array([7, 3, 7, 9, 7] + [1] * 40, dtype=np.uint64)
    first, second = bucket_pairs(keys)
    pairs = {(int(a), int(b)) for a, b in zip(first, second, strict=True)}
    assert {(0, 2), (0, 4), (2, 4)} <= pairs  # the small bucket: every pair
    big = list(range(5, 45))
    # The big bucket: linked as one component with a linear number of pairs.
    big_pairs = {pair for pair in pairs if pair[0] in big}
    assert len(big_pairs) < 2 * len(big)
    labels = connected_components(45, np.array(sorted(big_pairs)))
    assert set(labels[big].tolist()) == {5}
    assert not any(3 in pair or 1 in pair for pair in pairs)


def test_bucket_pairs_of_many_keys_are_those_of_grouping_them() -> None:
    # From 1,024 keys on, only keys sharing a slot of their top bits are sorted: the pairs must
    # still be every bucket's (a star and a chain past FULL_PAIRS_MAX_BUCKET members).
    rng = np.random.default_rng(11)
    for count in (1023, 1024, 5000):
        keys = rng.integers(0, 2**64, count, dtype=np.uint64)
        for size in [2] * 60 + [3] * 20 + [5] * 5 + [40]:
            keys[rng.choice(count, size, replace=False)] = keys[rng.integers(count)]
        groups: dict[int, list[int]] = {}
        for position, key in enumerate(keys.tolist()):
            groups.setdefault(key, []).append(position)
        expected = set()
        for members in groups.values():
            if len(members) <= minhash.FULL_PAIRS_MAX_BUCKET:
                expected |= {(a, b) for i, a in enumerate(members) for b in members[i + 1 :]}
            else:
                expected |= {(members[0], b) for b in members[1:]}
                expected |= set(zip(members[:-1], members[1:], strict=True))
        first, second = bucket_pairs(keys)
        assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected


def test_union_find_clusters_are_transitive() -> None:
    pairs = np.array([[0, 1], [1, 2], [5, 4], [7, 6], [6, 5], [9, 9]])
    labels = connected_components(10, pairs)
    assert labels.tolist() == [0, 0, 0, 3, 4, 4, 4, 4, 8, 9]


def plain_union_find(count: int, pairs: np.ndarray) -> list[int]:
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            item = parent[item]
        return item

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(count)]


def test_union_find_matches_a_plain_one_on_random_graphs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        count = int(rng.integers(2, 300))
        pairs = rng.integers(0, count, (int(rng.integers(0, 400)), 2))
        assert connected_components(count, pairs).tolist() == plain_union_find(count, pairs)


def test_planted_near_duplicates_are_found_and_distinct_texts_kept() -> None:
    rng = random.Random(3)
    vocabulary = [f"word{index}" for index in range(5000)]
    originals = [" ".join(rng.choices(vocabulary, k=60)) for _ in range(300)]
    copies = []
    for text in originals[:100]:
        words = text.split()
        words[rng.randrange(2)] = "changed"  # near the start: 1-2 of 56 shingles differ
        copies.append(" ".join(words))
    texts = originals + copies
    index = MinHashIndex(threshold=0.8)
    index.add(texts[:250])
    index.add(texts[250:])
    pairs, similarity = index.pairs()
    found = {(int(a), int(b)) for a, b in pairs}
    assert found == {(i, 300 + i) for i in range(100)}
    assert (similarity >= 0.8).all()
    assert candidate_pairs([np.zeros((2, 0), dtype=np.uint64)]).shape == (0, 2)
    assert candidate_pairs([]).shape == (0, 2)


def test_without_verification_the_similarity_is_estimated() -> None:
    texts = ["a b c d e f g h i j k l", "a b c d e f g h i j k m", "z y x w v u t s r q"]
    index = MinHashIndex(threshold=0.5, verify=False)
    index.add(texts)
    pairs, similarity = index.pairs()
    assert [tuple(p) for p in pairs.tolist()] == [(0, 1)]
    assert similarity[0] == pytest.approx(7 / 9, abs=0.15)  # 7 of 9 shingles shared


def near_copies(count: int, seed: int) -> list[str]:
    """Texts of 80 words and, for each, a copy with 1-3 words replaced (Jaccard ~0.65-0.9)."""
    rng = random.Random(seed)
    vocabulary = [f"w{index}" for index in range(3000)]
    texts = []
    for _ in range(count):
        words = rng.choices(vocabulary, k=80)
        copy = list(words)
        for _ in range(rng.randint(1, 3)):
            copy[rng.randrange(len(copy))] = rng.choice(vocabulary)
        texts += [" ".join(words).capitalize() + ".", " ".join(copy) + "!"]
    return texts


def test_index_finds_pairs_by_exact_jaccard_whatever_the_batches() -> None:
    texts = near_copies(150, seed=4)
    whole = MinHashIndex()
    whole.add(texts)
    pairs, similarity = whole.pairs()
    # Every pair found is right, and nearly every true pair is found.
    exact = shingle_texts([normalize_text(text) for text in texts], 5)
    truth = {(2 * i, 2 * i + 1) for i in range(150)
             if jaccard(exact, np.array([[2 * i, 2 * i + 1]]))[0] >= 0.8}
    found = {(int(a), int(b)) for a, b in pairs}
    assert found <= truth and len(found) >= 0.95 * len(truth) > 40
    assert (similarity >= 0.8).all()
    # Texts split in other batches, sketched elsewhere (pickled sketcher, pickled sketches).
    split = MinHashIndex()
    sketcher = pickle.loads(pickle.dumps(split.sketcher))
    for start, stop in [(0, 1), (1, 77), (77, 78), (78, 300)]:
        split.add_sketches(pickle.loads(pickle.dumps(sketcher(texts[start:stop]))))
    again, again_similarity = split.pairs()
    assert np.array_equal(again, pairs) and np.array_equal(again_similarity, similarity)
    assert split.count == whole.count == 300 and split.candidates == whole.candidates
    assert np.array_equal(split.similarity(pairs), similarity)


def test_default_bands_and_the_permutations_they_use() -> None:
    index = MinHashIndex()
    assert (index.bands, index.rows) == lsh_parameters(0.8, 128, 0.02, 0.98) == (17, 7)
    assert (MinHashIndex(verify=False).bands, MinHashIndex(verify=False).rows) == (9, 13)
    # Verified, only the banded components are computed; the bands are the same either way.
    texts = random_texts(20, seed=9)
    verified = MinHashIndex(bands=4, rows=5).sketcher(texts)[0]
    unverified = MinHashIndex(bands=4, rows=5, verify=False).sketcher(texts)[0]
    assert np.array_equal(verified.bands, unverified.bands)
    assert unverified.signatures is not None and unverified.signatures.shape == (20, 128)
