#!/usr/bin/env python
"""MinHash + LSH near-dedup: stillroom's vectorized index (src/stillroom/curate/minhash.py)
against rensa (Rust, RMinHash + RMinHashLSH) and datasketch's MinHashLSH, on one corpus with
planted near-duplicates.

How to run (from the repository root, with the repo's .venv; rensa and datasketch are in the dev
extra):

    python bench/minhash_dedup.py                      # 20,000 documents, all three libraries
    python bench/minhash_dedup.py --docs 1000000 --skip-datasketch --skip-rensa --cli --pipeline
    python bench/minhash_dedup.py --docs 2000 --check-truth   # ground truth vs brute force

The corpus: short documents (20-80 words; words drawn from a Zipf-distributed vocabulary of
50,000 made-up words, a fifth of the documents opening with one of 40 shared 12-word templates so
that unrelated documents share some shingles). 15% of the documents are a copy of an earlier
document (itself maybe a copy) with 0 to 6 word edits (insert, delete, replace), so true
similarities spread from ~0.5 to 1, many of them close to the threshold. Texts are already in
normalized form (lowercase words, one space), so all libraries see the same word 5-grams.

Ground truth: every pair of documents whose word-5-gram Jaccard similarity is >= the threshold,
computed exactly on Python sets with prefix filtering (Bayardo et al. 2007: with tokens ordered
rarest first, two sets with J >= t share a token among their first |x| - ceil(t|x|) + 1; an
exact filter, no pair is lost); --check-truth compares it with a brute-force sparse product over
all pairs. For the large run (more than --truth-limit documents) the ground truth is computed
within the planted families only (pairs of documents descended from one original): the smaller
run shows every true pair lies within a family (printed as "true pairs outside families").

Each library runs in its own subprocess on the same texts, with the same num_perm, threshold
and n-grams; time is wall-clock from texts in memory to clusters (shingling, hashing, LSH,
verification, union-find), peak memory is the subprocess's peak RSS (VmHWM), shown next to the
RSS it had once the texts and the libraries were loaded.

* stillroom: MinHashIndex with verification (exact Jaccard of the candidates; LSH bands chosen
  weighing misses 0.98, false candidates 0.02, its default when verifying), and without
  verification (equal weights, as datasketch). It is given the raw texts and normalizes them
  itself (NFKC, lowercase, punctuation), which the others are spared.
* rensa (https://pypi.org/project/rensa/, Rust): its batch path, documented as its fastest for
  bulk work: RMinHash.from_token_sets over each document's word 5-grams (Python strings, made as
  its own benchmark makes them, but timed here), RMinHashLSH.insert_many and query_all, then
  each candidate pair kept if its estimated Jaccard (RMinHash.jaccard) reaches the threshold, as
  its RMinHashDeduplicator does. Its LSH takes a number of bands dividing num_perm: the divisor
  of 128 that stillroom's verified weights prefer, 16 bands of 8 rows (its own benchmark uses 8
  bands of 16 rows, which finds ~69% of the pairs here). Not used: the path of its own
  benchmark, the "rho" sketch with query_duplicate_flags_matrix_one_shot (measured here ~20%
  less CPU time than this path; making the Python 5-grams is ~70% of either), which returns one
  flag per document (shares a band with some other document), not pairs: neither which copy to
  keep nor a pair precision/recall comes out of it.
* datasketch: MinHash.bulk (shared permutations, its fastest documented path) over the
  shingles encoded as UTF-8, MinHashLSH with its optimal (bands, rows) for equal weights, an
  insertion session, then a query per document; its candidate pairs are its answer (it has no
  verification step). "datasketch-weighted" is the same with stillroom's verified weights
  (0.02, 0.98), so its bands are stillroom's: it finds as many pairs, and shows what
  verification saves.

The summary gives stillroom's throughput (verified) over rensa's and datasketch's, measured in the
same run.

With --cli, `stillroom dedup` runs end to end on the corpus as a JSONL file (check, hash, write
the output folder with its card and report: streamed); with --pipeline, the same `dedup` stage
runs in a one-stage Pipeline, whose executor holds every row as a dict and checkpoints the kept
rows. Both in their own process, timed from start to end, with their peak RSS.

Metrics, against the ground truth:
* pair precision: share of the method's accepted pairs whose true J >= threshold;
* pair recall: share of true pairs whose two documents end in one cluster;
* dropped-document precision / recall: the documents dedup would drop (all but the first of each
  cluster) against those the ground truth's clusters drop.

Writes bench/results/minhash_dedup.json (or --out). Timings depend on what else the machine is
doing: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

Pair = tuple[int, int]

# -- corpus ----------------------------------------------------------------------------------------


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
    return sorted(words)


def make_corpus(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts and, for each, the index of the original document its family descends from."""
    rng = random.Random(seed)
    words = vocabulary(50_000, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    cumulative = list(np.cumsum(weights))
    templates = [" ".join(rng.choices(words, cum_weights=cumulative, k=12)) for _ in range(40)]
    texts: list[str] = []
    family: list[int] = []
    for index in range(count):
        if texts and rng.random() < 0.15:
            parent = rng.randrange(len(texts))
            tokens = texts[parent].split()
            for _ in range(rng.choices(range(7), weights=[10, 30, 25, 15, 10, 5, 5])[0]):
                position = rng.randrange(len(tokens))
                roll = rng.random()
                if roll < 0.35:
                    tokens.insert(position, rng.choices(words, cum_weights=cumulative)[0])
                elif roll < 0.7 and len(tokens) > 10:
                    tokens.pop(position)
                else:
                    tokens[position] = rng.choices(words, cum_weights=cumulative)[0]
            texts.append(" ".join(tokens))
            family.append(family[parent])
        else:
            length = rng.randint(20, 80)
            body = rng.choices(words, cum_weights=cumulative, k=length)
            if rng.random() < 0.2:
                body = rng.choice(templates).split() + body[12:]
            texts.append(" ".join(body))
            family.append(index)
    return texts, family


# -- ground truth ----------------------------------------------------------------------------------


def shingle_set(text: str, ngram: int) -> frozenset[tuple[str, ...]]:
    tokens = text.split()
    if len(tokens) < ngram:
        return frozenset([tuple(tokens)])
    return frozenset(tuple(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1))


class LazySets:
    """Shingle sets made when asked for: a million documents' sets would take gigabytes."""

    def __init__(self, texts: list[str], ngram: int):
        self.texts, self.ngram = texts, ngram

    def __getitem__(self, index: int) -> frozenset[tuple[str, ...]]:
        return shingle_set(self.texts[index], self.ngram)

    def __len__(self) -> int:
        return len(self.texts)


def jaccard(a: frozenset[Any], b: frozenset[Any]) -> float:
    return len(a & b) / len(a | b)


def truth_by_prefix_filter(sets: list[frozenset[Any]], threshold: float) -> dict[Pair, float]:
    """All pairs with Jaccard >= threshold (exact: prefix filtering loses none)."""
    frequency: dict[Any, int] = defaultdict(int)
    for shingles in sets:
        for token in shingles:
            frequency[token] += 1
    index: dict[Any, list[int]] = defaultdict(list)
    found: dict[Pair, float] = {}
    for doc, shingles in enumerate(sets):
        ordered = sorted(shingles, key=lambda token: (frequency[token], token))
        prefix = len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1
        candidates: set[int] = set()
        for token in ordered[:prefix]:
            candidates.update(index[token])
            index[token].append(doc)
        for other in candidates:
            similarity = jaccard(shingles, sets[other])
            if similarity >= threshold:
                found[(other, doc)] = similarity
    return found


def truth_within_families(sets: Any, family: list[int], threshold: float) -> dict[Pair, float]:
    members: dict[int, list[int]] = defaultdict(list)
    for doc, root in enumerate(family):
        members[root].append(doc)
    found: dict[Pair, float] = {}
    for docs in members.values():
        if len(docs) < 2:
            continue
        own = {doc: sets[doc] for doc in docs}
        for i, first in enumerate(docs):
            for second in docs[i + 1 :]:
                similarity = jaccard(own[first], own[second])
                if similarity >= threshold:
                    found[(first, second)] = similarity
    return found


def truth_by_brute_force(sets: list[frozenset[Any]], threshold: float) -> set[Pair]:
    from scipy import sparse

    ids: dict[Any, int] = {}
    rows, columns = [], []
    for doc, shingles in enumerate(sets):
        for token in shingles:
            rows.append(doc)
            columns.append(ids.setdefault(token, len(ids)))
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(sets), len(ids)))
    overlap = (matrix @ matrix.T).tocoo()
    sizes = np.array([len(s) for s in sets])
    upper = overlap.row < overlap.col
    first, second, both = overlap.row[upper], overlap.col[upper], overlap.data[upper]
    similarity = both / (sizes[first] + sizes[second] - both)
    keep = similarity >= threshold
    return set(zip(first[keep].tolist(), second[keep].tolist(), strict=True))


# -- the libraries, each in its own process --------------------------------------------------------


def memory_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB.

    Read in the worker itself: a child's ru_maxrss from wait4 starts at its parent's RSS at fork
    (Linux keeps the high-water mark across exec), which here is the ground truth's sets.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def word_ngrams(text: str, ngram: int) -> list[str]:
    """A document's word n-grams as strings (repeats kept: MinHash ignores them), or the whole
    text when it has fewer words."""
    tokens = text.split()
    grams = zip(*(tokens[i:] for i in range(ngram)), strict=False)  # stops at the shortest
    return [" ".join(gram) for gram in grams] or [text]


def rensa_bands(num_perm: int, threshold: float) -> int:
    """rensa's LSH needs bands dividing num_perm: the divisor with the least weighted error under
    stillroom's verified weights (rensa checks its candidates' estimated Jaccard)."""
    from stillroom.curate.lsh_bands import (
        VERIFIED_FALSE_NEGATIVE_WEIGHT,
        false_negative_area,
        false_positive_area,
    )

    weight = VERIFIED_FALSE_NEGATIVE_WEIGHT

    def error(bands: int) -> float:
        rows = num_perm // bands
        return (1 - weight) * false_positive_area(threshold, bands, rows) + weight * (
            false_negative_area(threshold, bands, rows)
        )

    return min((b for b in range(1, num_perm + 1) if num_perm % b == 0), key=error)


def worker(kind: str, corpus: Path, result: Path, settings: dict[str, Any]) -> None:
    # Every library is imported before the clock starts, whichever one this process times.
    from datasketch import MinHash, MinHashLSH

    from stillroom.curate.lsh_bands import VERIFIED_FALSE_NEGATIVE_WEIGHT
    from stillroom.curate.minhash import MinHashIndex, connected_components

    try:
        from rensa import RMinHash, RMinHashLSH
    except ImportError:
        if kind == "rensa":
            raise

    if kind in ("cli", "pipeline"):  # end to end, in this process so VmHWM is its own
        from stillroom import Pipeline
        from stillroom.cli.main import app
        from stillroom.curate.dedup import Dedup

        started = time.perf_counter()
        out = str(result.with_suffix(".out"))
        if kind == "cli":  # streamed: `stillroom dedup`
            app(["dedup", str(corpus), "-o", out, "--no-progress", "--overwrite"],
                standalone_mode=False)
        else:  # the same stage run by the pipeline executor, every row in memory
            Pipeline([Dedup()], input=str(corpus)).run(
                out, progress=False, overwrite=True, diversity_embeddings=False
            )
        result.write_text(json.dumps({"seconds": time.perf_counter() - started,
                                      "peak_kib": memory_kib("VmHWM")}))
        return
    texts = [json.loads(line)["text"] for line in corpus.open()]
    loaded = memory_kib("VmRSS")
    threshold, num_perm, ngram = settings["threshold"], settings["num_perm"], settings["ngram"]
    started = time.perf_counter()
    if kind.startswith("stillroom"):
        verify = kind == "stillroom"
        index = MinHashIndex(threshold=threshold, num_perm=num_perm, ngram=ngram, verify=verify)
        for start in range(0, len(texts), 10_000):
            index.add(texts[start : start + 10_000])
        pairs, _ = index.pairs()
        labels = connected_components(len(texts), pairs)
        extra = {"bands": index.bands, "rows": index.rows, "candidate_pairs": index.candidates}
    elif kind == "rensa":
        bands = settings["rensa_bands"]
        minhashes = RMinHash.from_token_sets(
            [word_ngrams(text, ngram) for text in texts], num_perm, 0
        )
        lsh = RMinHashLSH(threshold, num_perm, bands)
        lsh.insert_many(minhashes)
        found_pairs, candidates = [], 0
        for key, others in enumerate(lsh.query_all(minhashes)):
            for other in others:
                if other > key:
                    candidates += 1
                    if minhashes[key].jaccard(minhashes[other]) >= threshold:
                        found_pairs.append((key, other))
        pairs = np.array(found_pairs, dtype=np.int64).reshape(-1, 2)
        labels = union_find(len(texts), pairs)
        extra = {"bands": bands, "rows": num_perm // bands, "candidate_pairs": candidates}
    else:
        shingles = []
        for text in texts:
            tokens = text.split()
            grams = {" ".join(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1)}
            shingles.append([gram.encode() for gram in grams] or [text.encode()])
        hashes = MinHash.bulk(shingles, num_perm=num_perm)
        # "datasketch-weighted": the LSH weights stillroom uses with verification.
        verified = (1 - VERIFIED_FALSE_NEGATIVE_WEIGHT, VERIFIED_FALSE_NEGATIVE_WEIGHT)
        weights = verified if kind == "datasketch-weighted" else (0.5, 0.5)
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
        with lsh.insertion_session() as session:
            for key, minhash in enumerate(hashes):
                session.insert(key, minhash)
        found = set()
        for key, minhash in enumerate(hashes):
            for other in lsh.query(minhash):
                if other != key:
                    found.add((min(key, other), max(key, other)))
        pairs = np.array(sorted(found), dtype=np.int64).reshape(-1, 2)
        labels = union_find(len(texts), pairs)
        extra = {"bands": lsh.b, "rows": lsh.r, "candidate_pairs": len(pairs)}
    seconds = time.perf_counter() - started
    np.save(result.with_suffix(".pairs.npy"), pairs)
    np.save(result.with_suffix(".labels.npy"), labels)
    result.write_text(json.dumps({"seconds": seconds, "loaded_kib": loaded,
                                  "peak_kib": memory_kib("VmHWM"), **extra}))


def union_find(count: int, pairs: np.ndarray) -> np.ndarray:
    """Plain union-find (for datasketch's pairs): each item's smallest cluster member."""
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for first, second in pairs.tolist():
        a, b = root(first), root(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(item) for item in range(count)], dtype=np.int64)


def run_worker(kind: str, corpus: Path, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    result = folder / f"{kind}.json"
    command = [sys.executable, __file__, "--worker", kind, "--corpus", str(corpus),
               "--result", str(result), "--settings", json.dumps(settings)]
    wall = time.perf_counter()
    finished = subprocess.run(command, stdout=subprocess.DEVNULL if kind == "cli" else None)
    if finished.returncode != 0:
        raise SystemExit(f"{kind} worker failed with exit code {finished.returncode}")
    out = json.loads(result.read_text())
    out["process_seconds"] = time.perf_counter() - wall
    out["peak_rss_mib"] = out.pop("peak_kib") / 1024
    if kind not in ("cli", "pipeline"):
        out["loaded_rss_mib"] = out.pop("loaded_kib") / 1024
        out["pairs"] = np.load(result.with_suffix(".pairs.npy"))
        out["labels"] = np.load(result.with_suffix(".labels.npy"))
    return out


# -- scoring ---------------------------------------------------------------------------------------


def cluster_drops(labels: np.ndarray) -> set[int]:
    """Documents that are not the first of their cluster."""
    return set(np.flatnonzero(labels != np.arange(len(labels))).tolist())


def truth_labels(count: int, truth: dict[Pair, float]) -> np.ndarray:
    pairs = np.array(sorted(truth), dtype=np.int64).reshape(-1, 2)
    return union_find(count, pairs)


def score(
    pairs: np.ndarray, labels: np.ndarray, truth: dict[Pair, float], true_drops: set[int],
    sets: Any, threshold: float,
) -> dict[str, float]:
    accepted = [tuple(pair) for pair in pairs.tolist()]
    correct = 0
    for first, second in accepted:
        if (first, second) in truth or jaccard(sets[first], sets[second]) >= threshold:
            correct += 1
    together = sum(1 for first, second in truth if labels[first] == labels[second])
    drops = cluster_drops(labels)
    right_drops = len(drops & true_drops)
    return {
        "pair_precision": correct / len(accepted) if accepted else 1.0,
        "pair_recall": together / len(truth) if truth else 1.0,
        "drop_precision": right_drops / len(drops) if drops else 1.0,
        "drop_recall": right_drops / len(true_drops) if true_drops else 1.0,
        "dropped": len(drops),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("numpy", "rensa", "datasketch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


# -- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-datasketch", action="store_true")
    parser.add_argument("--skip-rensa", action="store_true")
    parser.add_argument("--cli", action="store_true", help="also time `stillroom dedup` end to end")
    parser.add_argument("--pipeline", action="store_true",
                        help="also time the dedup stage run by the pipeline executor")
    parser.add_argument("--check-truth", action="store_true",
                        help="compare the ground truth with brute force (small --docs only)")
    parser.add_argument("--truth-limit", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "minhash_dedup.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.corpus), Path(args.result), json.loads(args.settings))
        return

    settings = {"threshold": args.threshold, "num_perm": args.num_perm, "ngram": args.ngram}
    if not args.skip_rensa:
        settings["rensa_bands"] = rensa_bands(args.num_perm, args.threshold)
    load_start = os.getloadavg()[0]
    print(f"MinHash near-dedup, {args.docs:,} documents, word {args.ngram}-grams, "
          f"{args.num_perm} permutations, Jaccard >= {args.threshold}")
    print(f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs; "
          f"load average at start {load_start:.2f}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in versions().items()))
    made = time.perf_counter()
    texts, family = make_corpus(args.docs, args.seed)
    print(f"corpus made in {time.perf_counter() - made:.1f} s; "
          f"{sum(len(t.split()) for t in texts) / len(texts):.1f} words per document on average")
    exact_truth = args.docs <= args.truth_limit
    sets: Any = (
        [shingle_set(text, args.ngram) for text in texts] if exact_truth
        else LazySets(texts, args.ngram)
    )
    started = time.perf_counter()
    if exact_truth:
        truth = truth_by_prefix_filter(sets, args.threshold)
        outside = sum(1 for first, second in truth if family[first] != family[second])
        truth_kind = "all pairs (prefix filtering)"
    else:
        truth = truth_within_families(sets, family, args.threshold)
        outside = None
        truth_kind = "pairs within planted families"
    print(f"ground truth ({truth_kind}): {len(truth):,} pairs with J >= {args.threshold} in "
          f"{time.perf_counter() - started:.1f} s"
          + ("" if outside is None else f"; true pairs outside families: {outside}"))
    truth_check = None
    if args.check_truth:
        brute = truth_by_brute_force(sets, args.threshold)
        truth_check = brute == set(truth)
        print(f"ground truth equals brute force over all pairs: {truth_check}")
    true_drops = cluster_drops(truth_labels(len(texts), truth))

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        with corpus.open("w") as handle:
            for index, text in enumerate(texts):
                handle.write(json.dumps({"id": f"d{index}", "text": text}) + "\n")
        kinds = ["stillroom", "stillroom-unverified"]
        if not args.skip_rensa:
            kinds += ["rensa"]
        if not args.skip_datasketch:
            kinds += ["datasketch", "datasketch-weighted"]
        for kind in kinds:
            run = run_worker(kind, corpus, settings, folder)
            metrics = score(run.pop("pairs"), run.pop("labels"), truth, true_drops, sets,
                            args.threshold)
            run.update(metrics)
            run["docs_per_second"] = args.docs / run["seconds"]
            results[kind] = run
            print(f"{kind:>21}: {run['seconds']:7.2f} s, {run['docs_per_second']:9,.0f} docs/s, "
                  f"peak RSS {run['peak_rss_mib']:7.1f} MiB ({run['loaded_rss_mib']:.1f} with "
                  f"texts loaded), bands x rows {run['bands']} x {run['rows']}, "
                  f"{run['candidate_pairs']:,} candidate pairs")
            print(f"{'':>21}  pairs: precision {run['pair_precision']:.4f} recall "
                  f"{run['pair_recall']:.4f}; dropped docs ({run['dropped']:,}): precision "
                  f"{run['drop_precision']:.4f} recall {run['drop_recall']:.4f}")
        cli = run_worker("cli", corpus, settings, folder) if args.cli else None
        pipeline = run_worker("pipeline", corpus, settings, folder) if args.pipeline else None
    if cli:
        print(f"{'stillroom dedup (CLI)':>21}: {cli['seconds']:7.2f} s end to end (JSONL in, "
              f"output folder out, streamed), peak RSS {cli['peak_rss_mib']:.1f} MiB")
    if pipeline:
        print(f"{'dedup stage, pipeline':>21}: {pipeline['seconds']:7.2f} s end to end (every "
              f"row in memory), peak RSS {pipeline['peak_rss_mib']:.1f} MiB")
    for other in ("rensa", "datasketch"):
        if other in results:
            ours, theirs = results["stillroom"], results[other]
            speedup = ours["docs_per_second"] / theirs["docs_per_second"]
            print(f"throughput stillroom / {other}: {speedup:.2f}x; peak RSS "
                  f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x")
    load_end = os.getloadavg()[0]
    print(f"load average at end {load_end:.2f} (timings are noisy on a shared machine)")
    report = {
        "docs": args.docs,
        "settings": settings,
        "seed": args.seed,
        "ground_truth": {"kind": truth_kind, "pairs": len(truth), "outside_families": outside,
                         "equals_brute_force": truth_check, "dropped_docs": len(true_drops)},
        "results": results,
        "cli": cli,
        "pipeline": pipeline,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "load_start": load_start, "load_end": load_end},
        "versions": versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[str(args.docs)] = report  # one entry per corpus size, so the 1M run keeps the 20k one
    out.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
