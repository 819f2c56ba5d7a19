"""MinHash + LSH near-duplicate search, vectorized with numpy: text to signatures to clusters.

The method (Broder 1997, "On the resemblance and containment of documents"; banding as in
Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3):

Steps 1 and 2 live in :mod:`stillroom.curate.shingling`, the choice of bands and rows in step 4
in :mod:`stillroom.curate.lsh_bands`.

1. **Normalize** each text (:func:`~stillroom.curate.shingling.normalize_text`) and split it
   into words; its *shingles* are its word n-grams (``ngram``, default 5). A text of fewer than
   ``ngram`` words is one shingle. A batch of raw texts is normalized as one string and one byte
   array: the same words as text by text, without a Python call per text.
2. **Hash** every word once to 64 bits (its bytes read 8 at a time as integers, mixed with
   MurmurHash3's 64-bit finalizer), and every shingle from its words' hashes (Horner's rule,
   the finalizer again; its top 32 bits): numpy over the whole batch, no Python loop per word.
3. **Signatures**: ``num_perm`` (default 128) hash functions ``h_k(x) = (a_k·x + b_k) mod 2^32``
   with random odd ``a_k`` and random ``b_k`` (seeded; see :class:`MinHasher`); a text's
   signature is the minimum of each ``h_k`` over its shingles, computed in uint32 as numpy
   arrays, a block of texts × permutations at a time. Two texts agree on one component with
   probability equal to their Jaccard similarity ``J = |A ∩ B| / |A ∪ B|``.
4. **LSH banding**: the signature is cut into ``bands`` bands of ``rows`` components; texts whose
   band matches in at least one band become *candidate pairs*. A pair of similarity ``s`` becomes a
   candidate with probability ``1 − (1 − s^rows)^bands`` (the S-curve). ``bands`` and ``rows`` are
   chosen by :func:`~stillroom.curate.lsh_bands.lsh_parameters` to minimize the weighted area under
   the S-curve below the threshold (false positives) plus the area above it left out (false
   negatives): the criterion of datasketch's ``MinHashLSH`` (Zhu et al.), computed here on our
   own. Its weights are equal without verification; with verification (step 5) a false positive
   costs only a check, so misses weigh 0.98 and false positives 0.02 (see
   :data:`~stillroom.curate.lsh_bands.VERIFIED_FALSE_NEGATIVE_WEIGHT`), and only the ``bands · rows``
   banded components of the signature are computed.
   Matching bands are found by sorting each band's 64-bit hashes (numpy), not with dicts; a
   bucket of up to 32 texts gives all its pairs, a bigger one (copies of one text) a star and a
   chain, so the pairs stay linear in the texts.
5. **Verification** (optional, on by default): each candidate pair's exact Jaccard similarity is
   computed on the shingle hashes it keeps per text (distinct ones counted), and pairs below the
   threshold are discarded, so LSH's false positives cost a little time, never a wrong drop.
6. **Clusters**: the connected components of the accepted pairs (:func:`connected_components`,
   union-find over int arrays by hooking roots and pointer jumping).

Memory per text: ``8 · bands`` bytes of band hashes (136 with the 17 bands chosen for 0.8), plus
its shingle hashes when verifying (4 bytes a shingle, in text order, and 8 for their count), or
its signature when not (``4 · num_perm`` bytes). Batches are hashed a few million characters at
a time (~12 bytes of numpy arrays per character at the peak) and only their band hashes (and
shingle hashes) stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stillroom.curate.lsh_bands import default_false_negative_weight, lsh_parameters
from stillroom.curate.shingling import (
    _SHIFT_32,
    DEFAULT_NGRAM,
    Shingles,
    _fmix64,
    _ranges,
    shingle_raw_texts,
)

DEFAULT_NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8

# Buckets up to this size give every pair inside them for verification; a bigger bucket (many
# copies of one text) is linked as a star from its first member plus a chain, which keeps the
# work linear while its members, nearly identical, still end in one cluster.
FULL_PAIRS_MAX_BUCKET = 32
# Shingles hashed against all permutations at once: the (num_perm × chunk) uint32 block stays
# within the CPU caches (measured: 8192 a little faster than 4096 or 16384, 3x faster than 32768).
_PERMUTATION_CHUNK = 8192
# Characters of raw text hashed at once (~12 bytes of arrays per character at the peak: ~50 MB;
# 4M measured ~10% faster than 1M).
_HASH_BYTES = 1 << 22
# Elements sorted at once when intersecting the shingle sets of candidate pairs.
_JACCARD_CHUNK = 1 << 22


class MinHasher:
    """``num_perm`` hash functions ``h(x) = (a·x + b) mod 2^32`` and the signatures they give.

    ``a`` odd (so ``h`` is a permutation of the 32-bit values) and ``b`` drawn from ``seed``.
    The shingle hashes ``x`` are already uniformly mixed (64-bit finalizer), so this cheap
    family behaves as random permutations: measured on 3,000 pairs of sets at each of six
    (size, Jaccard) points, the share of equal components has the binomial variance (ratio
    0.96-1.04) and the 14 × 9 band collision rates match the S-curve within their sampling
    error, as with the earlier ``(a·x + b) mod (2^31 − 1)`` (which did worse on arithmetic
    progressions: 3-15 times the binomial variance, against 1.1-1.35 here). uint32 arithmetic
    wraps by itself: a multiply, an add and a ``minimum.reduceat`` over 4-byte values, where the
    Mersenne reduction took ten passes over 8-byte ones; ~4x faster.
    """

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, seed: int = 0):
        generator = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = (generator.integers(0, 1 << 32, num_perm, dtype=np.uint64) | 1).astype(np.uint32)[:, None]
        self.b = generator.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)[:, None]

    def signatures(self, shingles: Shingles, permutations: int | None = None) -> np.ndarray:
        """(permutations, texts) uint32 minima of the first ``permutations`` functions (all by
        default: the others do not change, so a prefix of the full signature)."""
        perms = self.num_perm if permutations is None else min(permutations, self.num_perm)
        a, b = self.a[:perms], self.b[:perms]
        hashes = shingles.hashes
        offsets = shingles.offsets
        count = len(shingles)
        out = np.empty((perms, count), dtype=np.uint32)
        # One scratch buffer reused by every chunk (in-place ufuncs, no temporaries), viewed as a
        # contiguous (num_perm, shingles) block: a column slice of a wider block would be strided.
        values = np.empty(perms * _PERMUTATION_CHUNK, dtype=np.uint32)
        done = 0
        while done < count:
            # A chunk of whole texts holding at most _PERMUTATION_CHUNK shingles (or one text).
            stop = int(np.searchsorted(offsets, offsets[done] + _PERMUTATION_CHUNK, "right")) - 1
            stop = min(max(stop, done + 1), count)
            first, last = int(offsets[done]), int(offsets[stop])
            size = perms * (last - first)
            if size > len(values):  # one text longer than a chunk
                values = np.empty(size, dtype=np.uint32)
            v = values[:size].reshape(perms, last - first)
            np.multiply(a, hashes[first:last], out=v)
            v += b
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
    keys = np.sort(low * count + high)
    # Sorted and made distinct by hand: np.unique's first call imports numpy.ma (~15 ms).
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])[: len(keys)]]
    return np.stack([keys // count, keys % count], axis=1)


def bucket_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions whose ``keys`` are equal (one band), found by sorting.

    Buckets of up to :data:`FULL_PAIRS_MAX_BUCKET` give all their pairs; a bigger one gives a star
    from its first member and a chain through its members.
    """
    # Most texts are alone in their bucket. The keys are well mixed, so their top bits are a
    # hash table of 2-4 slots per key: only keys that share a slot with another can share a
    # bucket, and only those (a fifth to a third) are sorted. The same result as sorting all.
    maybe = np.arange(len(keys))
    if len(keys) >= 1024:
        bits = len(keys).bit_length() + 1
        slot = (keys >> np.uint64(64 - bits)).astype(np.intp)
        maybe = np.flatnonzero(np.bincount(slot, minlength=1 << bits)[slot] > 1)
    order = maybe[np.argsort(keys[maybe], kind="stable")]  # stable: members stay in input order
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))[: len(order)]
    sizes = np.diff(np.concatenate([starts, [len(order)]]))
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


def _distinct_tagged(shingles: Shingles, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ``(k << 32) | hash`` over the shingles of ``texts[k]``, and each one's count."""
    lengths = shingles.sizes()[texts]
    tags = np.repeat(np.arange(len(texts), dtype=np.uint64), lengths)
    keys = np.sort((tags << _SHIFT_32) | shingles.hashes[_ranges(shingles.offsets[texts], lengths)])
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return keys, np.bincount((keys >> _SHIFT_32).astype(np.int64), minlength=len(texts))


def jaccard(shingles: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair (float64, one per pair).

    Each side's hashes are tagged with the pair's number, sorted and made distinct; then both
    sides are sorted together: a value seen twice is in both, and counting those gives the
    intersections (a stable sort merges the two sorted runs).
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
        first, first_sizes = _distinct_tagged(shingles, chunk[:, 0])
        second, second_sizes = _distinct_tagged(shingles, chunk[:, 1])
        keys = np.sort(np.concatenate([first, second]), kind="stable")
        repeated = keys[1:] == keys[:-1]
        both = np.bincount((keys[1:][repeated] >> _SHIFT_32).astype(np.int64), minlength=len(chunk))
        result[start:stop] = both / (first_sizes + second_sizes - both)
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
    """What a batch of texts leaves in the index: its band hashes, and its shingle hashes
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
        texts = list(texts)
        # Hashing holds ~12 bytes per character of text at once: a few megabytes at a time.
        lengths = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1)
        sketches = []
        start = 0
        while start < len(texts):
            before = lengths[start - 1] if start else 0
            stop = max(int(np.searchsorted(lengths, before + _HASH_BYTES, "right")), start + 1)
            sketches.append(self._sketch(texts[start:stop]))
            start = stop
        return sketches

    def _sketch(self, texts: list[str]) -> Sketch:
        shingles = shingle_raw_texts(texts, self.ngram)
        # Verified, only the banded components are used: the last num_perm - bands·rows are not
        # computed. Without verification the whole signature estimates the similarity.
        signatures = self.hasher.signatures(shingles, self.bands * self.rows if self.verify else None)
        bands = band_hashes(signatures, self.bands, self.rows)
        if self.verify:
            return Sketch(bands, len(shingles), hashes=shingles.hashes, sizes=shingles.sizes())
        return Sketch(bands, len(shingles), signatures=signatures.T.copy())


class MinHashIndex:
    """Texts added batch by batch; near-duplicate pairs of all of them at the end.

    Keeps per text its band hashes and either its shingle hashes (``verify=True``, for
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
