"""The dedup stage and `stillroom.api.dedup`: exact and MinHash methods, keep_by, reasons, columns,
options."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.api import dedup
from stillroom.curate.dedup import Dedup, as_text, choose_keepers
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.errors import ConfigError, InputError

Row = dict[str, Any]


def run(stage: Dedup, rows: list[Row], out: Path) -> Any:
    return Pipeline([stage], input=rows).run(out, progress=False, max_failure_rate=1.0)


def kept_ids(out: Path) -> list[str]:
    return [row["id"] for row in OutputFolder(out).read_rows("data")]


def dropped(out: Path) -> dict[str, Row]:
    return {row["id"]: row for row in OutputFolder(out).read_rows("dropped")}


def write_jsonl(path: Path, rows: list[Row]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def long_text(seed: int, words: int = 40) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(10_000)}" for _ in range(words))


# -- exact -----------------------------------------------------------------------------------


def test_exact_duplicates_after_normalization(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "text": "Hello, World!"},
        {"id": "b", "text": "hello   world"},
        {"id": "c", "text": "HELLO WORLD."},
        {"id": "d", "text": "Hello, Word!"},
        {"id": "e", "text": "What is 17*23?"},
        {"id": "f", "text": "What is 17-23?"},
    ]
    result = run(Dedup(method="exact"), rows, tmp_path / "out")
    assert kept_ids(tmp_path / "out") == ["a", "d", "e", "f"]
    gone = dropped(tmp_path / "out")
    assert {key: row["drop_reason"] for key, row in gone.items()} == {
        "b": "exact duplicate of a",
        "c": "exact duplicate of a",
    }
    assert gone["b"]["stage"] == "dedup"
    assert result.summary["stage_results"]["dedup"] == {
        "method": "exact", "rows": 6, "kept": 4, "duplicates_dropped": 2,
        "clusters_with_duplicates": 1, "largest_cluster": 3,
    }


def test_lineage_on_kept_and_dropped_rows(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "same"}, {"id": "b", "text": "Same!"}, {"id": "c", "text": "other"}]
    run(Dedup(method="exact", name="exact_dedup"), rows, tmp_path / "out")
    kept = {row["id"]: row for row in OutputFolder(tmp_path / "out").read_rows("data")}
    entry = kept["a"]["metadata"]["exact_dedup"]
    assert set(LINEAGE_KEYS) <= set(entry)
    assert entry["method"] == "dedup" and entry["step"] == "exact"
    assert entry["cluster_size"] == 2 and entry["duplicate_of"] is None
    assert kept["c"]["metadata"]["exact_dedup"]["cluster_size"] == 1
    gone = dropped(tmp_path / "out")["b"]
    assert gone["metadata"]["exact_dedup"]["duplicate_of"] == "a"
    assert gone["metadata"]["exact_dedup"]["similarity"] == 1.0
    assert gone["drop_reason"] == "exact duplicate of a" and gone["stage"] == "exact_dedup"


def test_rows_without_id_are_named_by_position(tmp_path: Path) -> None:
    rows = [{"text": "x y"}, {"text": "other"}, {"text": "X, Y"}]
    run(Dedup(method="exact"), rows, tmp_path / "out")
    (gone,) = OutputFolder(tmp_path / "out").read_rows("dropped")
    assert gone["drop_reason"] == "exact duplicate of row 0"


# -- keep_by -----------------------------------------------------------------------------------


def test_keep_by_keeps_the_highest_score(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "text": "same text", "score": 1.0},
        {"id": "b", "text": "Same text.", "score": 3},
        {"id": "c", "text": "same  text", "score": None},  # null: the lowest
        {"id": "d", "text": "alone", "score": 0},
        {"id": "e", "text": "pair", "score": 2}, {"id": "f", "text": "PAIR", "score": 2},  # tie
    ]
    run(Dedup(method="exact", keep_by="score"), rows, tmp_path / "out")
    assert kept_ids(tmp_path / "out") == ["b", "d", "e"]
    reasons = {key: row["drop_reason"] for key, row in dropped(tmp_path / "out").items()}
    assert reasons == {"a": "exact duplicate of b", "c": "exact duplicate of b",
                       "f": "exact duplicate of e"}


def test_choose_keepers() -> None:
    import numpy as np

    labels = np.array([0, 0, 2, 0, 2, 5])
    assert choose_keepers(labels, None).tolist() == [0, 0, 2, 0, 2, 5]
    scores = np.array([1.0, np.nan, 0.5, 4.0, 0.5, -1.0])
    assert choose_keepers(labels, scores).tolist() == [3, 3, 2, 3, 2, 5]


def test_keep_by_must_be_numbers(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "score": "high"}, {"text": "b"}])
    with pytest.raises(InputError, match="rows.jsonl:1: keep_by column `score` must hold numbers"):
        dedup(source, tmp_path / "out", method="exact", keep_by="score", progress=False)
    assert not (tmp_path / "out").exists()


# -- minhash -----------------------------------------------------------------------------------


def planted(count: int = 60) -> list[Row]:
    """Distinct 40-word texts, and near-copies of the first ten (one word changed at the end)."""
    rows = [{"id": f"t{i}", "text": long_text(i)} for i in range(count)]
    for i in range(10):
        words = rows[i]["text"].split()
        words[-1] = "changed"
        rows.append({"id": f"copy{i}", "text": " ".join(words)})
    return rows


def test_minhash_finds_planted_duplicates_and_keeps_distinct_texts(tmp_path: Path) -> None:
    rows = planted()
    result = run(Dedup(method="minhash"), rows, tmp_path / "out")
    assert kept_ids(tmp_path / "out") == [f"t{i}" for i in range(60)]
    gone = dropped(tmp_path / "out")
    assert set(gone) == {f"copy{i}" for i in range(10)}
    # 36 shingles, the last one differs: 35 shared of 37.
    assert gone["copy3"]["drop_reason"] == "near-duplicate of t3 (jaccard 0.95)"
    assert gone["copy3"]["metadata"]["dedup"]["similarity"] == pytest.approx(35 / 37, abs=1e-4)
    figures = result.summary["stage_results"]["dedup"]
    assert figures["duplicates_dropped"] == 10 and figures["clusters_with_duplicates"] == 10
    assert figures["threshold"] == 0.8 and (figures["bands"], figures["rows_per_band"]) == (17, 7)


def test_chains_form_one_cluster(tmp_path: Path) -> None:
    base = long_text(1, 30).split()  # 26 shingles
    second = base[:-2] + ["x", "y"]  # 2 shingles changed: J(1, 2) = 24/28
    third = ["p", "q"] + second[2:]  # 2 more at the start: J(2, 3) = 24/28, J(1, 3) = 22/30
    rows = [{"id": str(i), "text": " ".join(words)} for i, words in enumerate([base, second, third], 1)]
    run(Dedup(method="minhash"), rows, tmp_path / "out")
    assert kept_ids(tmp_path / "out") == ["1"]
    gone = dropped(tmp_path / "out")
    assert gone["2"]["drop_reason"] == "near-duplicate of 1 (jaccard 0.86)"
    # Linked through row 2: its own similarity with the kept row is under the threshold.
    assert gone["3"]["drop_reason"] == "near-duplicate of 1 (jaccard 0.73)"
    assert gone["3"]["metadata"]["dedup"]["cluster_size"] == 3


def test_unverified_reasons_say_estimated(tmp_path: Path) -> None:
    run(Dedup(method="minhash", verify_jaccard=False), planted(20), tmp_path / "out")
    reasons = [row["drop_reason"] for row in dropped(tmp_path / "out").values()]
    assert len(reasons) == 10
    assert all(reason.startswith("near-duplicate of t") and "(estimated jaccard 0." in reason
               for reason in reasons)


# -- columns -----------------------------------------------------------------------------------


def test_text_column_defaults() -> None:
    stage = Dedup()
    assert stage.text_of({"text": "t", "prompt": "p"}) == "t"
    assert stage.text_of({"prompt": "p", "completion": "c"}) == "p\n\nc"
    assert stage.text_of({"prompt": "p", "completion": None}) == "p"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert stage.text_of({"messages": messages}) == "hi\n\nhello"
    assert stage.text_of({"text": None, "messages": messages}) == "hi\n\nhello"
    assert Dedup(column="q").text_of({"q": "question", "text": "t"}) == "question"
    assert Dedup(column=["q", "a"]).text_of({"q": "question", "a": "answer"}) == "question\n\nanswer"
    assert as_text([{"type": "text", "text": "part"}]) == "part"
    assert as_text(3) is None


def test_a_row_without_text_is_named_before_any_work(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"question": "b"}])
    with pytest.raises(InputError) as caught:
        dedup(source, tmp_path / "out", progress=False)
    message = str(caught.value)
    assert f"{source}:2" in message
    assert "none of `text`, `prompt` (with `completion`) or `messages`" in message
    assert "--column" in message
    assert not (tmp_path / "out").exists()
    named = write_jsonl(tmp_path / "named.jsonl", [{"q": "a"}, {"text": "b"}])
    with pytest.raises(InputError, match=r"named.jsonl:2: the row has no `q` column"):
        dedup(named, tmp_path / "out", column="q", progress=False)


def test_a_row_losing_its_text_mid_pipeline_fails(tmp_path: Path) -> None:
    def strip(row: Row) -> Row:
        return {"id": row["id"]} if row["id"] == "b" else row

    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "c", "text": "X"}]
    result = Pipeline([strip, Dedup(method="exact")], input=rows).run(
        tmp_path / "out", progress=False, max_failure_rate=1.0
    )
    assert result.counts == {"data": 1, "failed": 1, "dropped": 1}
    (failed,) = OutputFolder(tmp_path / "out").read_rows("failed")
    assert failed["id"] == "b" and failed["error_type"] == "DedupInputError"
    assert "no text to compare" in failed["error"]


# -- options -----------------------------------------------------------------------------------


def test_bad_options_fail_at_config_time() -> None:
    with pytest.raises(ValidationError, match="`ngram` applies to method minhash, not exact"):
        Dedup(method="exact", ngram=3)
    with pytest.raises(ValidationError, match="`threshold` applies to method minhash or semantic"):
        Dedup(method="exact", threshold=0.5)
    with pytest.raises(ValidationError, match="both `bands` and `rows`"):
        Dedup(bands=4)
    with pytest.raises(ValidationError, match="more than num_perm"):
        Dedup(bands=20, rows=10)
    with pytest.raises(ValidationError, match="threshold"):
        Dedup(threshold=1.5)
    # From Python an option is named by its keyword (the CLI names its flag, --ngram).
    with pytest.raises(ConfigError, match="^ngram: .*applies to method minhash"):
        dedup([], "unused", method="exact", ngram=3)
    with pytest.raises(ConfigError, match="^threshold: "):
        dedup([], "unused", threshold=0)


def test_lsh_parameters_follow_the_weights() -> None:
    assert Dedup().lsh == (17, 7)  # verified: misses weigh 0.98
    assert Dedup(verify_jaccard=False).lsh == (9, 13)  # datasketch's equal weights
    assert Dedup(false_negative_weight=0.5).lsh == (9, 13)
    assert Dedup(bands=16, rows=8).lsh == (16, 8)


# -- the streamed run and the stage agree ------------------------------------------------------


def test_streamed_dedup_gives_the_pipeline_result(tmp_path: Path) -> None:
    rows = planted(80)
    rows += [{"id": "dup", "text": rows[5]["text"].upper()}, {"id": "other", "prompt": "p?"}]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    streamed = dedup(source, tmp_path / "streamed", progress=False)
    staged = Pipeline([Dedup()], input=source).run(tmp_path / "staged", progress=False)
    assert kept_ids(tmp_path / "streamed") == kept_ids(tmp_path / "staged")
    streamed_drops = {k: r["drop_reason"] for k, r in dropped(tmp_path / "streamed").items()}
    staged_drops = {k: r["drop_reason"] for k, r in dropped(tmp_path / "staged").items()}
    assert streamed_drops == staged_drops and len(streamed_drops) == 11
    for key in ("rows", "kept", "duplicates_dropped", "clusters_with_duplicates", "largest_cluster"):
        assert (streamed.summary["stage_results"]["dedup"][key]
                == staged.summary["stage_results"]["dedup"][key])
    folder = OutputFolder(tmp_path / "streamed")
    assert folder.is_complete() and (tmp_path / "streamed" / "README.md").exists()
    assert "duplicates_dropped" in (tmp_path / "streamed" / "README.md").read_text()


def test_streamed_rerun_and_a_different_run(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", planted(20))
    first = dedup(source, tmp_path / "out", progress=False)
    again = dedup(source, tmp_path / "out", progress=False)  # complete: nothing is written twice
    assert again.counts == first.counts == {"data": 20, "failed": 0, "dropped": 10}
    from stillroom.errors import OutputFolderError

    with pytest.raises(OutputFolderError, match="different run"):
        dedup(source, tmp_path / "out", threshold=0.9, progress=False)
    replaced = dedup(source, tmp_path / "out", method="exact", overwrite=True, progress=False)
    assert replaced.counts == {"data": 30, "failed": 0, "dropped": 0}
