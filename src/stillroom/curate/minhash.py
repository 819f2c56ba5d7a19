"""MinHash + LSH near-duplicate search, vectorized with numpy: text to signatures to clusters.

The method (Broder 1997, "On the resemblance and containment of documents"; banding as in
Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3):

1. **Normalize** each text (:func:`normalize_text`) and split it into words; its *shingles* are
   its word n-grams (``ngram``, default 5). A text of fewer than ``ngram`` words is one shingle.
2. **Hash** every shingle once to 32 bits: a polynomial hash of its UTF-8 bytes, computed for a
   whole batch of texts at once from prefix sums (so no Python loop runs per shingle), then
   mixed with MurmurHash3's 64-bit finalizer.
3. **Signatures**: ``num_perm`` (default 128) hash functions ``h_k(x) = (a_k·x + b_k) mod p``
   with the Mersenne prime ``p = 2^31 − 1`` and random ``a_k, b_k`` (seeded; Carter & Wegman's
   universal family); a text's signature is the minimum of each ``h_k`` over its shingles, all
   computed as numpy arrays, a block of texts × permutations at a time. Two texts agree on one
   component with probability equal to their Jaccard similarity ``J = |A ∩ B| / |A ∪ B|``.
4. **LSH banding**: the signature is cut into ``bands`` bands of ``rows`` components; texts whose
   band matches in at least one band become *candidate pairs*. A pair of similarity ``s`` becomes a
   candidate with probability ``1 − (1 − s^rows)^bands`` (the S-curve). ``bands`` and ``rows`` are
   chosen by :func:`lsh_parameters` to minimize the weighted area under the S-curve below the
   threshold (false positives) plus the area above it left out (false negatives): the criterion
   of datasketch's ``MinHashLSH`` (Zhu et al.), computed here on our own. Its weights are equal
   without verification; with verification (step 5) a false positive costs only a check, so
   misses weigh 0.9 and false positives 0.1 (see :data:`VERIFIED_FALSE_NEGATIVE_WEIGHT`).
   Matching bands are found by sorting each band's 64-bit hashes (numpy), not with dicts; a
   bucket of up to 32 texts gives all its pairs, a bigger one (copies of one text) a star and a
   chain, so the pairs stay linear in the texts.
5. **Verification** (optional, on by default): each candidate pair's exact Jaccard similarity is
   computed on the shingle hashes it keeps per text, and pairs below the threshold are discarded,
   so LSH's false positives cost a little time, never a wrong drop.
6. **Clusters**: the connected components of the accepted pairs (:func:`connected_components`,
   union-find over int arrays by hooking roots and pointer jumping).

Memory per text: ``8 · bands`` bytes of band hashes (112 with the 14 bands chosen for 0.8), plus
its sorted shingle hashes when verifying (4 bytes a shingle and 8 for their count), or its
signature when not (``4 · num_perm`` bytes). Signatures are built a block at a time and only
their band hashes stay: a million ~50-word texts keep ~300 MB (measured peak, with the gathering
of the batches' arrays: ~600 MB over the texts themselves).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_NGRAM = 5
DEFAULT_NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8

MERSENNE_31 = np.uint64((1 << 31) - 1)
_LOW_32 = np.uint64(0xFFFFFFFF)
# Buckets up to this size give every pair inside them for verification; a bigger bucket (many
# copies of one text) is linked as a star from its first member plus a chain, which keeps the
# work linear while its members, nearly identical, still end in one cluster.
FULL_PAIRS_MAX_BUCKET = 32
# Shingles hashed against all permutations at once: the (num_perm × chunk) uint64 block stays
# within the CPU caches (measured: 4096 was 3x faster than 32768 on this machine).
_PERMUTATION_CHUNK = 4096
# Characters of text shingled at once (the prefix sums and power tables are 8 bytes a byte).
_HASH_BYTES = 1 << 20
# Elements sorted at once when intersecting the shingle sets of candidate pairs.
_JACCARD_CHUNK = 1 << 22

# -- text normalization ------------------------------------------------------------------------


@functools.cache
def _punctuation_class(ascii_only: bool) -> str:
    """A regex character class of the Unicode punctuation characters (categories P*)."""
    last = 127 if ascii_only else sys.maxunicode
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for code in range(last + 2):
        is_punct = code <= last and unicodedata.category(chr(code)).startswith("P")
        if is_punct and start is None:
            start = code
        elif not is_punct and start is not None:
            ranges.append((start, code - 1))
            start = None
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )


@functools.cache
def _punctuation_pattern(ascii_only: bool) -> re.Pattern[str]:
    """Punctuation except between two numbers (``17*23``, ``3.14``, ``17 - 23`` stay).

    ASCII text (nearly all of it) gets a 23-character class: the full Unicode class is ~15x slower
    for Python's regex engine, which scans its ranges for every character.
    """
    p = _punctuation_class(ascii_only)
    # A punctuation character is kept only with a digit (maybe one space away) on both sides.
    return re.compile(rf"[{p}](?!\s?\d)|[{p}](?<!\d[{p}])(?<!\d\s[{p}])")


def normalize_text(text: str) -> str:
    """The form texts are compared in: exact dedup compares it whole, MinHash shingles its words.

    1. Unicode NFKC (full-width letters, ligatures and compatibility forms become plain ones);
    2. lowercase;
    3. every punctuation character (Unicode categories P*: ``. , ; : ! ? ' " - ( ) …``) becomes a
       space, **except** between two numbers, so ``17*23``, ``17 - 23``, ``3.14`` and ``1,000``
       stay as they are and arithmetic questions that differ only in the operator stay distinct
       (``*``, ``-`` and ``/`` are punctuation to Unicode). Symbols (``+ = < > $ %``...) are kept;
    4. runs of whitespace become one space; leading and trailing space is removed.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _punctuation_pattern(text.isascii()).sub(" ", text)
    return " ".join(text.split())


# -- LSH parameters ----------------------------------------------------------------------------


def collision_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """The S-curve: probability that a pair of this Jaccard similarity shares a band."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(64)


def _integrate(bands: np.ndarray, rows: np.ndarray, low: float, high: float, miss: bool) -> np.ndarray:
    """∫ S-curve (or 1 − S-curve when ``miss``) over [low, high], for many (bands, rows) at once.

    64-point Gauss-Legendre on 8 equal pieces: the integrands are polynomials of degree up to
    ``num_perm``, smooth on the interval; this agrees with adaptive quadrature to ~1e-12.
    """
    edges = np.linspace(low, high, 9)
    total = np.zeros(len(bands))
    for left, right in zip(edges[:-1], edges[1:], strict=True):
        half = (right - left) / 2
        s = left + half * (_GAUSS_NODES + 1)  # nodes mapped to [left, right]
        curve = 1.0 - (1.0 - s[None, :] ** rows[:, None]) ** bands[:, None]
        values = 1.0 - curve if miss else curve
        total += half * (values @ _GAUSS_WEIGHTS)
    return total


def false_positive_area(threshold: float, bands: int, rows: int) -> float:
    """∫₀ᵗ P(candidate | s) ds: how much of the S-curve lies below the threshold."""
    return float(_integrate(np.array([bands]), np.array([rows]), 0.0, threshold, miss=False)[0])


def false_negative_area(threshold: float, bands: int, rows: int) -> float:
    """∫ₜ¹ P(not a candidate | s) ds: how much similar-enough pairs the S-curve misses."""
    return float(_integrate(np.array([bands]), np.array([rows]), threshold, 1.0, miss=True)[0])


@functools.cache
def lsh_parameters(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands · rows <= num_perm`` minimizing the weighted sum of the
    false positive and false negative areas (see the module docstring).

    Every admissible pair is scored; ties go to the first in (bands, rows) order.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, got {num_perm}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], dtype=np.float64)
    rows = np.array([r for _, r in pairs], dtype=np.float64)
    error = false_positive_weight * _integrate(bands, rows, 0.0, threshold, miss=False)
    if threshold < 1.0:
        error += false_negative_weight * _integrate(bands, rows, threshold, 1.0, miss=True)
    best = int(np.argmin(error))
    return pairs[best]


# Weight of missed pairs against false candidates when choosing (bands, rows). Without
# verification every candidate is a drop, so both errors count alike (datasketch's default).
# With verification a false candidate costs one exact Jaccard (microseconds) and a missed pair a
# duplicate left in the data, so misses weigh 9 times more. Measured with bench/minhash_dedup.py
# (20,000 documents, 128 permutations, threshold 0.8): equal weights give (9, 13) and find 81% of
# the true pairs; 0.9 gives (14, 9), 99% of them, for 1.7x the candidates and no more time.
UNVERIFIED_FALSE_NEGATIVE_WEIGHT = 0.5
VERIFIED_FALSE_NEGATIVE_WEIGHT = 0.9


def default_false_negative_weight(verify: bool) -> float:
    return VERIFIED_FALSE_NEGATIVE_WEIGHT if verify else UNVERIFIED_FALSE_NEGATIVE_WEIGHT


# -- hashing -----------------------------------------------------------------------------------

_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2^64
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_MIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT_33 = np.uint64(33)
_SHIFT_32 = np.uint64(32)
_SHIFT_31 = np.uint64(31)
_SHIFT_1 = np.uint64(1)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit."""
    x = x ^ (x >> _SHIFT_33)
    x *= _MIX_1
    x ^= x >> _SHIFT_33
    x *= _MIX_2
    x ^= x >> _SHIFT_33
    return x


def _power_table(base: int, size: int) -> np.ndarray:
    """``base^k`` modulo 2^64 for k = 0..size-1 (uint64 products wrap modulo 2^64)."""
    table: np.ndarray = np.empty(size, dtype=np.uint64)
    table[0] = 1
    np.cumprod(np.full(size - 1, base, dtype=np.uint64), out=table[1:])
    return table


class _Powers:
    """``B^k`` and ``B^-k`` modulo 2^64 for k = 0..n, grown on demand and shared."""

    def __init__(self) -> None:
        self.forward: np.ndarray = np.ones(1, dtype=np.uint64)
        self.inverse: np.ndarray = np.ones(1, dtype=np.uint64)

    def upto(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.forward) <= length:
            size = max(length + 1, 2 * len(self.forward))
            self.forward = _power_table(_BASE, size)
            self.inverse = _power_table(_BASE_INVERSE, size)
        return self.forward, self.inverse


_POWERS = _Powers()


@dataclass
class Shingles:
    """The distinct shingle hashes of a batch of texts, sorted within each text.

    Text ``i``'s hashes are ``hashes[offsets[i]:offsets[i + 1]]``; every text has at least one.
    """

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len(texts) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def _span_hashes(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit hashes of the byte spans ``buffer[start:end]``, all at once.

    hash = Σ byte_k · B^(k − start) mod 2^64, from prefix sums of byte_k · B^k (then scaled by
    B^−start), followed by a mixing finalizer. Equal spans get equal hashes wherever they are.
    """
    forward, inverse = _POWERS.upto(len(buffer))
    prefix = np.zeros(len(buffer) + 1, dtype=np.uint64)
    np.cumsum(buffer.astype(np.uint64) * forward[: len(buffer)], out=prefix[1:])
    return _fmix64((prefix[ends] - prefix[starts]) * inverse[starts])


def shingle_texts(normalized: Sequence[str], ngram: int = DEFAULT_NGRAM) -> Shingles:
    """Word ``ngram``-shingles of already normalized texts (see :func:`normalize_text`).

    Words are the space-separated tokens of the normalized text. A text with fewer than
    ``ngram`` words has one shingle, its whole text (an empty text included).
    """
    count = len(normalized)
    if count == 0:
        return Shingles(np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64))
    data = ("\n".join(normalized) + "\n").encode("utf-8")
    buffer = np.frombuffer(data, dtype=np.uint8)
    newline = buffer == 0x0A
    if np.count_nonzero(newline) != count:
        raise ValueError("shingle_texts takes normalized texts (no line breaks): normalize_text()")
    separator = newline | (buffer == 0x20)
    previous = np.concatenate([[True], separator[:-1]])
    following = np.concatenate([separator[1:], [True]])
    word_starts = np.flatnonzero(~separator & previous)
    word_ends = np.flatnonzero(~separator & following) + 1
    text_ends = np.flatnonzero(newline)
    text_starts = np.concatenate([[0], text_ends[:-1] + 1])
    word_text = np.searchsorted(text_ends, word_starts)
    words_per_text = np.bincount(word_text, minlength=count)

    # N-grams that stay within one text: word j's n-gram ends at word j + ngram - 1.
    last = np.arange(len(word_starts) - ngram + 1) + ngram - 1
    inside = word_text[last] == word_text[last - ngram + 1] if len(last) else last.astype(bool)
    first_word = np.flatnonzero(inside)
    span_starts = word_starts[first_word]
    span_ends = word_ends[first_word + ngram - 1]
    span_text = word_text[first_word]
    # Texts too short for one n-gram: their whole text is their one shingle.
    short = np.flatnonzero(words_per_text < ngram)
    span_starts = np.concatenate([span_starts, text_starts[short]])
    span_ends = np.concatenate([span_ends, text_ends[short]])
    span_text = np.concatenate([span_text, short])

    hashes = _span_hashes(buffer, span_starts, span_ends) >> _SHIFT_32
    # Sorting (text, hash) keys groups each text's shingles, sorts them, and exposes repeats.
    keys = np.sort((span_text.astype(np.uint64) << _SHIFT_32) | hashes)
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # np.unique hashes: slower
    texts = (keys >> _SHIFT_32).astype(np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(texts, minlength=count), out=offsets[1:])
    return Shingles((keys & _LOW_32).astype(np.uint32), offsets)


class MinHasher:
    """``num_perm`` hash functions ``h(x) = (a·x + b) mod p`` and the signatures they give.

    ``p = 2^31 − 1`` (a Mersenne prime), ``a`` in [1, p) and ``b`` in [0, p) drawn from
    ``seed``: the universal family of Carter & Wegman, as MinHash uses it. A shingle's 32-bit
    hash is cut to 31 bits, so ``a·x + b < 2^62`` is exact in uint64, and ``mod p`` is two
    shift-and-add folds (2^31 ≡ 1 mod p) instead of a division. (Restricting ``a`` to small values
    so a 61-bit prime fits was tried and rejected: ``a·x`` then wraps at most a few times and the
    minima of different functions fall on the same shingles, which made the Jaccard estimate's
    spread 4-5 times the binomial one.)
    """

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, seed: int = 0):
        generator = np.random.default_rng(seed)
        prime = int(MERSENNE_31)
        self.num_perm = num_perm
        self.a = generator.integers(1, prime, num_perm, dtype=np.uint64)[:, None]
        self.b = generator.integers(0, prime, num_perm, dtype=np.uint64)[:, None]

    def signatures(self, shingles: Shingles) -> np.ndarray:
        """(num_perm, texts) uint32 minima, each below 2^31 − 1."""
        hashes = shingles.hashes.astype(np.uint64) >> _SHIFT_1
        offsets = shingles.offsets
        count = len(shingles)
        out = np.empty((self.num_perm, count), dtype=np.uint32)
        # Two scratch buffers reused by every chunk: in-place ufuncs, no temporaries. Each chunk
        # views them as a contiguous (num_perm, shingles) block (a column slice of a wider
        # block would be strided, and measured 3x slower).
        values = np.empty(self.num_perm * _PERMUTATION_CHUNK, dtype=np.uint64)
        folded = np.empty_like(values)
        done = 0
        while done < count:
            # A chunk of whole texts holding at most _PERMUTATION_CHUNK shingles (or one text).
            stop = int(np.searchsorted(offsets, offsets[done] + _PERMUTATION_CHUNK, "right")) - 1
            stop = min(max(stop, done + 1), count)
            first, last = int(offsets[done]), int(offsets[stop])
            size = self.num_perm * (last - first)
            if size > len(values):  # one text longer than a chunk
                values, folded = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)
            v = values[:size].reshape(self.num_perm, last - first)
            f = folded[:size].reshape(self.num_perm, last - first)
            np.multiply(self.a, hashes[first:last], out=v)
            v += self.b
            for _ in range(2):  # v mod p = (v & p) + (v >> 31), twice: then v <= p
                np.right_shift(v, _SHIFT_31, out=f)
                v &= MERSENNE_31
                v += f
            np.subtract(v, MERSENNE_31, out=f)  # p itself means 0: wraps to huge, min keeps v
            np.minimum(v, f, out=v)
            out[:, done:stop] = np.minimum.reduceat(v, offsets[done:stop] - first, axis=1)
            done = stop
        return out


_BAND_MULTIPLIER = np.uint64(0xD6E8FEB86659FD93)


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, texts) uint64: one hash of each band's ``rows`` signature components."""
    out = np.empty((bands, signatures.shape[1]), dtype=np.uint64)
    for band in range(bands):
        value = np.zeros(signatures.shape[1], dtype=np.uint64)
        for row in signatures[band * rows : (band + 1) * rows]:
            value *= _BAND_MULTIPLIER
            value += row
        out[band] = _fmix64(value)
    return out


# -- candidate pairs, similarity, clusters -----------------------------------------------------


def _unique_pairs(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    """(m, 2) int64 pairs with first < second, each once, sorted."""
    low = np.minimum(first, second).astype(np.int64)
    high = np.maximum(first, second).astype(np.int64)
    keys = np.unique(low * count + high)
    return np.stack([keys // count, keys % count], axis=1) if len(keys) else np.zeros((0, 2), np.int64)


def bucket_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions whose ``keys`` are equal (one band), found by sorting.

    Buckets of up to :data:`FULL_PAIRS_MAX_BUCKET` give all their pairs; a bigger one gives a star
    from its first member and a chain through its members.
    """
    order = np.argsort(keys, kind="stable")  # stable: members stay in input order
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(keys)]]))
    # Only buckets with two or more members matter; most texts are alone in theirs.
    shared = sizes >= 2
    starts, sizes = starts[shared], sizes[shared]
    members = order[_ranges(starts, sizes)]
    bucket = np.repeat(np.arange(len(sizes)), sizes)
    size_of = sizes[bucket]
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for distance in range(1, min(int(sizes.max(initial=1)), FULL_PAIRS_MAX_BUCKET)):
        left = np.arange(len(members) - distance)
        right = left + distance
        same = bucket[left] == bucket[right]
        if distance > 1:
            same &= size_of[left] <= FULL_PAIRS_MAX_BUCKET
        firsts.append(members[left[same]])
        seconds.append(members[right[same]])
    big = size_of > FULL_PAIRS_MAX_BUCKET
    if big.any():
        heads = np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        spoke = big & (np.arange(len(members)) != heads)
        firsts.append(members[heads[spoke]])
        seconds.append(members[spoke])
    return np.concatenate(firsts), np.concatenate(seconds)


def candidate_pairs(bands: Sequence[np.ndarray]) -> np.ndarray:
    """(m, 2) int64 pairs ``i < j`` of texts that share at least one band.

    ``bands`` holds one (bands, texts) array per batch of texts, as from :func:`band_hashes`;
    each band is gathered across the batches only while it is searched.
    """
    if not bands:
        return np.zeros((0, 2), np.int64)
    count = sum(batch.shape[1] for batch in bands)
    firsts, seconds = [], []
    for band in range(bands[0].shape[0]):
        first, second = bucket_pairs(np.concatenate([batch[band] for batch in bands]))
        firsts.append(first)
        seconds.append(second)
    return _unique_pairs(np.concatenate(firsts), np.concatenate(seconds), count)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return shifts + np.arange(total)


def jaccard(shingles: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair (float64, one per pair).

    Both sets' hashes are tagged with the pair's number and sorted together; since each set has
    no repeats, a value seen twice is in both, and counting those gives the intersections.
    """
    result = np.empty(len(pairs), dtype=np.float64)
    sizes = shingles.sizes()
    cumulative = np.cumsum(sizes[pairs[:, 0]] + sizes[pairs[:, 1]])
    start = 0
    while start < len(pairs):
        # Enough pairs to fill one sort of about _JACCARD_CHUNK elements (at least one pair).
        before = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, before + _JACCARD_CHUNK, "right"))
        stop = max(stop, start + 1)
        chunk = pairs[start:stop]
        tags, values = [], []
        for side in (0, 1):
            lengths = sizes[chunk[:, side]]
            tags.append(np.repeat(np.arange(len(chunk), dtype=np.uint64), lengths))
            values.append(shingles.hashes[_ranges(shingles.offsets[chunk[:, side]], lengths)])
        keys = np.sort((np.concatenate(tags) << _SHIFT_32) | np.concatenate(values).astype(np.uint64))
        repeated = keys[1:] == keys[:-1]
        both = np.bincount((keys[1:][repeated] >> _SHIFT_32).astype(np.int64), minlength=len(chunk))
        union = sizes[chunk[:, 0]] + sizes[chunk[:, 1]] - both
        result[start:stop] = both / union
        start = stop
    return result


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Share of equal signature components per pair; ``signatures`` is (texts, num_perm)."""
    result = np.empty(len(pairs), dtype=np.float64)
    for start in range(0, len(pairs), 65536):
        chunk = pairs[start : start + 65536]
        result[start : start + len(chunk)] = np.mean(
            signatures[chunk[:, 0]] == signatures[chunk[:, 1]], axis=1
        )
    return result


def connected_components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over int arrays: for each of ``count`` items, the smallest item of its
    component (so an item with no pair is its own root).

    Each round hooks every root to the smallest root it is paired with, then pointer jumping
    flattens the trees; it ends when every pair has one root (a few rounds in practice).
    """
    parent = np.arange(count, dtype=np.int64)
    if len(pairs) == 0:
        return parent
    first, second = pairs[:, 0], pairs[:, 1]
    while True:
        root_first, root_second = parent[first], parent[second]
        differ = root_first != root_second
        if not differ.any():
            return parent
        low = np.minimum(root_first[differ], root_second[differ])
        high = np.maximum(root_first[differ], root_second[differ])
        # Roots only ever point to smaller roots, so no cycle can form.
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


# -- an index over a stream of texts -----------------------------------------------------------


@dataclass
class Sketch:
    """What a batch of texts leaves in the index: its band hashes, and its sorted shingle hashes
    (to verify pairs) or its signatures (to estimate their similarity)."""

    bands: np.ndarray  # (bands, texts) uint64
    count: int
    hashes: np.ndarray | None = None
    sizes: np.ndarray | None = None
    signatures: np.ndarray | None = None  # (texts, num_perm)


class Sketcher:
    """Raw texts to :class:`Sketch` es: the costly part of MinHash, and the part that needs no
    other text. A small object (the hash functions' parameters), so it pickles cheaply and the
    batches of one corpus can be sketched in parallel, anywhere (the Ray executor's workers), and
    added to one index in order: the result is the same as sketching them here."""

    def __init__(self, *, num_perm: int, ngram: int, bands: int, rows: int, verify: bool, seed: int):
        self.hasher = MinHasher(num_perm, seed)
        self.ngram = ngram
        self.bands = bands
        self.rows = rows
        self.verify = verify

    def __call__(self, texts: Iterable[str]) -> list[Sketch]:
        normalized = [normalize_text(text) for text in texts]
        # Hashing holds ~50 bytes per byte of text at once: a megabyte of text at a time.
        lengths = np.cumsum([len(text) + 1 for text in normalized])
        sketches = []
        start = 0
        while start < len(normalized):
            before = lengths[start - 1] if start else 0
            stop = max(int(np.searchsorted(lengths, before + _HASH_BYTES, "right")), start + 1)
            sketches.append(self._sketch(normalized[start:stop]))
            start = stop
        return sketches

    def _sketch(self, normalized: list[str]) -> Sketch:
        shingles = shingle_texts(normalized, self.ngram)
        signatures = self.hasher.signatures(shingles)
        bands = band_hashes(signatures, self.bands, self.rows)
        if self.verify:
            return Sketch(bands, len(shingles), hashes=shingles.hashes, sizes=shingles.sizes())
        return Sketch(bands, len(shingles), signatures=signatures.T.copy())


class MinHashIndex:
    """Texts added batch by batch; near-duplicate pairs of all of them at the end.

    Keeps per text its band hashes and either its sorted shingle hashes (``verify=True``, for
    exact Jaccard) or its signature (``verify=False``, for the estimated Jaccard of the pairs
    LSH finds). Texts go in with :meth:`add`, or already sketched (elsewhere, in parallel, by
    :attr:`sketcher`) with :meth:`add_sketches`; the buckets and pairs are always found over all
    texts at once, so a pair is found whichever batches its two texts came in.
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        num_perm: int = DEFAULT_NUM_PERM,
        ngram: int = DEFAULT_NGRAM,
        bands: int | None = None,
        rows: int | None = None,
        verify: bool = True,
        false_negative_weight: float | None = None,
        seed: int = 0,
    ):
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        if bands is None or rows is None:
            weight = default_false_negative_weight(verify) if false_negative_weight is None else (
                false_negative_weight
            )
            bands, rows = lsh_parameters(threshold, num_perm, 1.0 - weight, weight)
        if bands * rows > num_perm:
            raise ValueError(f"bands × rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.threshold = threshold
        self.ngram = ngram
        self.bands = bands
        self.rows = rows
        self.verify = verify
        self.sketcher = Sketcher(num_perm=num_perm, ngram=ngram, bands=bands, rows=rows,
                                 verify=verify, seed=seed)
        self._bands: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._signatures: list[np.ndarray] = []
        self._gathered: Shingles | None = None
        self.count = 0
        self.candidates = 0

    def add(self, texts: Iterable[str]) -> None:
        """Add raw texts (they are normalized here); all of them before asking for pairs."""
        self.add_sketches(self.sketcher(texts))

    def add_sketches(self, sketches: Iterable[Sketch]) -> None:
        """Add texts sketched by :attr:`sketcher` (or a copy of it), in their order."""
        if self._gathered is not None:
            raise RuntimeError("texts were added after their pairs were asked for")
        for sketch in sketches:
            self._bands.append(sketch.bands)
            if self.verify:
                assert sketch.hashes is not None and sketch.sizes is not None
                self._hashes.append(sketch.hashes)
                self._sizes.append(sketch.sizes)
            else:
                assert sketch.signatures is not None
                self._signatures.append(sketch.signatures)
            self.count += sketch.count

    def shingles(self) -> Shingles:
        """Every text's shingle hashes (only with ``verify``), gathered into one array once."""
        if self._gathered is None:
            hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint32)
            sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)
            self._hashes, self._sizes = [], []  # the pieces are freed
            offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            self._gathered = Shingles(hashes, offsets)
        return self._gathered

    def similarity(self, pairs: np.ndarray) -> np.ndarray:
        """Jaccard similarity of each pair: exact with ``verify``, else estimated."""
        if self.verify:
            return jaccard(self.shingles(), pairs)
        if len(self._signatures) != 1:
            self._signatures = [
                np.concatenate(self._signatures) if self._signatures else np.zeros((0, 0))
            ]
        return estimated_jaccard(self._signatures[0], pairs)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs, similarity)``: LSH candidate pairs, and with ``verify`` only those whose
        exact Jaccard similarity reaches the threshold."""
        if self.count == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0)
        candidates = candidate_pairs(self._bands)
        self._bands = []  # not needed again: their memory goes back before the shingles gather
        self.candidates = len(candidates)
        similarity = self.similarity(candidates)
        if self.verify:
            keep = similarity >= self.threshold
            return candidates[keep], similarity[keep]
        return candidates, similarity
