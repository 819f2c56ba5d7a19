"""Text to shingle hashes for MinHash: normalization, word hashing and word n-gram shingles.

Steps 1 and 2 of :mod:`stillroom.curate.minhash`:

1. **Normalize** each text (:func:`normalize_text`) and split it into words; its *shingles* are
   its word n-grams (``ngram``, default 5). A text of fewer than ``ngram`` words is one shingle.
   A batch of raw texts is normalized as one string and one byte array (:func:`_raw_bytes`): the
   same words as text by text, without a Python call per text.
2. **Hash** every word once to 64 bits (its bytes read 8 at a time as integers, mixed with
   MurmurHash3's 64-bit finalizer), and every shingle from its words' hashes (Horner's rule,
   the finalizer again; its top 32 bits): numpy over the whole batch, no Python loop per word.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_NGRAM = 5

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


# -- hashing -----------------------------------------------------------------------------------

_MIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT_33 = np.uint64(33)
_SHIFT_32 = np.uint64(32)
# Odd constants (invertible modulo 2^64): a word's length is mixed in with the first, the words
# of a shingle are combined by Horner's rule with the second; the third starts a short text.
_LENGTH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_WORD_MULTIPLIER = np.uint64(0xD1B54A32D192ED03)
_SHORT_TEXT_SEED = np.uint64(0x8CB92BA72F3D8DD7)
# The first k bytes of a little-endian uint64, for k = 0..8.
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit (a bijection)."""
    x = x ^ (x >> _SHIFT_33)
    x *= _MIX_1
    x ^= x >> _SHIFT_33
    x *= _MIX_2
    x ^= x >> _SHIFT_33
    return x


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return shifts + np.arange(total)


# Every byte gets a class with one bytes.translate (C speed; a numpy table lookup is ~5x
# slower): words are the runs of bytes whose class is below _END. Every byte of a non-ASCII
# character is >= 0x80, so it is a word byte; ASCII punctuation and digits are word bytes unless
# the punctuation rule of normalize_text removes them (the raw texts' table only).
_WORD, _PUNCT, _DIGIT, _END, _SPACE = 0, 1, 2, 4, 5


def _byte_classes(end: int, punctuation: bool) -> bytes:
    table = bytearray(256)  # _WORD
    for code in range(128):
        char = chr(code)
        if char.isspace():  # the whitespace of str.split(): \t \n \v \f \r \x1c-\x1f and space
            table[code] = _SPACE
        elif char.isdigit():
            table[code] = _DIGIT
        elif punctuation and unicodedata.category(char).startswith("P"):
            table[code] = _PUNCT
    table[end] = _END
    return bytes(table)


_RAW_CLASSES = _byte_classes(0x00, punctuation=True)  # raw texts, each ended by a NUL
_NORMAL_CLASSES = _byte_classes(0x0A, punctuation=False)  # normalized texts, ended by "\n"


def _raw_bytes(texts: list[str]) -> tuple[bytes, np.ndarray, np.ndarray] | None:
    """Raw texts as UTF-8 bytes (each ended by a NUL; one NUL before, 8 after), the class of
    each byte, and the position of each text's end: the words of :func:`normalize_text`, whose
    whitespace here only separates words. None when a text holds a NUL.

    ASCII texts (nearly all) at once: one lower() and one translate() over the batch, and
    normalize_text's punctuation rule applied with numpy to the punctuation bytes and their
    neighbours (Python's regex engine scans ~6 ns a character: more than all the rest together).
    ASCII is NFKC already and its whitespace is all ASCII; the NUL between two texts is no
    letter, digit, space or punctuation, so no step reads across it. A non-ASCII text goes
    through normalize_text itself (NFKC, the Unicode punctuation class).
    """
    joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:
        return None
    wide = None
    if joined.isascii():
        joined = joined.lower()
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
    else:
        wide = np.array([not text.isascii() for text in texts])
        texts = [normalize_text(t) if w else t.lower() for t, w in zip(texts, wide, strict=True)]
        joined = "\x00".join(texts)
        sizes = [len(t.encode("utf-8")) if w else len(t) for t, w in zip(texts, wide, strict=True)]
        lengths = np.array(sizes, dtype=np.int64) + 1
    data = b"\x00" + joined.encode("utf-8") + b"\x00" * 9
    ends = np.cumsum(lengths)
    classes = np.frombuffer(data.translate(_RAW_CLASSES), dtype=np.uint8).copy()
    # Punctuation is removed unless a number (maybe one space away) is on both sides. The
    # neighbours are looked at in the text as it was: every match of the regex is decided on it.
    at = np.flatnonzero(classes == _PUNCT)
    if len(at):
        after, before = classes[at + 1], classes[at - 1]
        gone = ~(
            ((after == _DIGIT) | ((after == _SPACE) & (classes[at + 2] == _DIGIT)))
            & ((before == _DIGIT) | ((before == _SPACE) & (classes[at - 2] == _DIGIT)))
        )
        if wide is not None:  # a non-ASCII text kept what normalize_text kept
            gone &= ~wide[np.searchsorted(ends, at)]
        classes[at[gone]] = _SPACE
    return data, classes, ends


def _normal_bytes(normalized: Sequence[str]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Normalized texts as UTF-8 bytes (each ended by "\\n"; one before, 8 after), their classes
    and ends."""
    joined = "\n".join(normalized)
    if joined.count("\n") != len(normalized) - 1:
        raise ValueError("shingle_texts takes normalized texts (no line breaks): normalize_text()")
    data = b"\n" + joined.encode("utf-8") + b"\n" * 9
    classes = np.frombuffer(data.translate(_NORMAL_CLASSES), dtype=np.uint8)
    ends = np.flatnonzero(classes == _END)[1 : len(normalized) + 1]
    return data, classes, ends


def _word_hashes(data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word ``data[start:start + length]``.

    A word's bytes are read 8 at a time as little-endian uint64 (an unaligned view with a stride
    of one byte), masked to the word, and mixed with its length by a bijection: distinct words of
    up to 8 bytes get distinct hashes. A longer word adds the mixed value of each further 8 bytes
    and their place (all of them at once, a sum per word), mixed again.
    """
    view = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    hashes = view[starts] & _BYTE_MASKS[np.minimum(lengths, 8)]
    hashes ^= lengths.astype(np.uint64) * _LENGTH_MULTIPLIER
    hashes = _fmix64(hashes)
    longer = np.flatnonzero(lengths > 8)
    if len(longer):
        pieces = (lengths[longer] - 1) // 8  # 8-byte pieces after the first
        place = _ranges(np.ones(len(longer), dtype=np.int64), pieces)  # 1, 2, ... per word
        at = np.repeat(starts[longer], pieces) + 8 * place
        left = np.repeat(lengths[longer], pieces) - 8 * place
        tail = view[at] & _BYTE_MASKS[np.minimum(left, 8)]
        tail = _fmix64(tail ^ (place.astype(np.uint64) * _WORD_MULTIPLIER))
        first = np.concatenate([[0], np.cumsum(pieces)[:-1]])
        hashes[longer] = _fmix64(hashes[longer] + np.add.reduceat(tail, first))
    return hashes


@dataclass
class Shingles:
    """The shingle hashes of a batch of texts, each text's in its order (a shingle that a text
    repeats is there as often: MinHash ignores repeats, :func:`jaccard` counts distinct ones).

    Text ``i``'s hashes are ``hashes[offsets[i]:offsets[i + 1]]``; every text has at least one.
    """

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len(texts) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def _shingles(data: bytes, classes: np.ndarray, ends: np.ndarray, ngram: int) -> Shingles:
    """The word ``ngram``-shingles of texts given as bytes, classes and ends (the helpers above).

    A shingle's hash combines its words' hashes (Horner's rule over 64-bit words, then the
    finalizer; its top 32 bits). A text with fewer than ``ngram`` words has one shingle, its
    words combined the same way from another seed (an empty text included).
    """
    count = len(ends)
    separator = classes >= _END
    edges = np.flatnonzero(separator[1:] != separator[:-1]) + 1  # data starts and ends with one
    starts, stops = edges[0::2], edges[1::2]
    words = _word_hashes(data, starts, stops - starts)
    per_text = np.diff(np.searchsorted(starts, ends), prepend=0)
    first_word = np.cumsum(per_text) - per_text
    shingles_per_text = np.maximum(per_text - ngram + 1, 1)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(shingles_per_text, out=offsets[1:])
    windows = len(words) - ngram + 1  # every run of ngram words, across texts or not
    hashes = np.empty(int(offsets[-1]), dtype=np.uint64)
    if windows > 0:
        combined = words[:windows].copy()
        for shift in range(1, ngram):
            combined *= _WORD_MULTIPLIER
            combined += words[shift : windows + shift]
        # A short text's one "window" is replaced below; clipped, it stays inside the array.
        source = np.minimum(_ranges(first_word, shingles_per_text), windows - 1)
        hashes[:] = combined[source]
    short = np.flatnonzero(per_text < ngram)
    if len(short):
        value = np.full(len(short), _SHORT_TEXT_SEED, dtype=np.uint64)
        for position in range(ngram - 1):
            has = per_text[short] > position
            value[has] = value[has] * _WORD_MULTIPLIER + words[first_word[short[has]] + position]
        hashes[offsets[short]] = value
    return Shingles((_fmix64(hashes) >> _SHIFT_32).astype(np.uint32), offsets)


def shingle_texts(normalized: Sequence[str], ngram: int = DEFAULT_NGRAM) -> Shingles:
    """Word ``ngram``-shingles of already normalized texts (see :func:`normalize_text`).

    Words are the whitespace-separated tokens of the normalized text. A text with fewer than
    ``ngram`` words has one shingle, its whole text (an empty text included).
    """
    if len(normalized) == 0:
        return Shingles(np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64))
    return _shingles(*_normal_bytes(normalized), ngram)


def shingle_raw_texts(texts: Sequence[str], ngram: int = DEFAULT_NGRAM) -> Shingles:
    """:func:`shingle_texts` of the texts normalized by :func:`normalize_text`, the same
    hashes, found without making the normalized strings (see :func:`_raw_bytes`)."""
    texts = list(texts)
    if not texts:
        return shingle_texts([], ngram)
    raw = _raw_bytes(texts)
    if raw is None:  # a NUL in a text: one by one
        return shingle_texts([normalize_text(text) for text in texts], ngram)
    return _shingles(*raw, ngram)
