"""decontaminate: tokens, n-gram coverage against a brute-force count, the threshold, short items,
benchmark files, the stage in a pipeline and its report."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.api import build_stage, decontaminate
from stillroom.curate.decontaminate import BenchmarkIndex, Decontaminate, tokenize
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError
from stillroom.pipeline.stage import Dropped, StageContext, stages

GSM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?"
)
WENG = (
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?"
)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": GSM, "answer": "72"},
        {"question": WENG, "answer": "10"},
        {"question": "What is 2+2?", "answer": "4"},
    ])


def run(stage: Decontaminate, row: dict[str, Any]) -> Any:
    return asyncio.run(stage.process(row, StageContext("decontaminate", 0)))


# -- tokens ----------------------------------------------------------------------------------------


def test_tokens_ignore_case_spacing_and_edge_punctuation() -> None:
    assert tokenize("  What IS\n\t2+2?  (Answer: \u201cfour\u201d.) -- don\u2019t") == [
        "what", "is", "2+2", "answer", "four", "don't",
    ]
    assert tokenize("...  --  !!") == []
    assert tokenize("\uff21\uff22\uff23 abc") == ["abc", "abc"]  # full-width letters fold (NFKC)


# -- the coverage math -----------------------------------------------------------------------------


def brute_coverage(item: list[str], row_texts: list[list[str]], n: int) -> float:
    """The Tulu 3 rule written plainly: a token of the item is covered when one of the item's
    n-grams containing it occurs in the row (n-grams never span two texts of the row)."""
    if len(item) < n:
        return 0.0
    row_grams = {tuple(text[i:i + n]) for text in row_texts for i in range(len(text) - n + 1)}
    covered = [False] * len(item)
    for start in range(len(item) - n + 1):
        if tuple(item[start:start + n]) in row_grams:
            for position in range(start, start + n):
                covered[position] = True
    return sum(covered) / len(item)


def test_coverage_matches_an_independent_count_on_random_texts() -> None:
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(6)]  # few words: many partial, overlapping matches
    for n in (2, 3, 5):
        items = [[rng.choice(vocabulary) for _ in range(rng.randint(n, 30))] for _ in range(25)]
        index = BenchmarkIndex(n, short_items="skip")
        for number, item in enumerate(items):
            index.add("b", str(number), [("question", " ".join(item))])
        index.freeze()
        for _ in range(60):
            # Rows are made of pieces of items and noise, in one or two texts.
            texts = []
            for _ in range(rng.randint(1, 2)):
                source = rng.choice(items)
                start = rng.randrange(len(source))
                piece = source[start:start + rng.randint(1, 25)]
                texts.append(piece + [rng.choice(vocabulary) for _ in range(rng.randint(0, 4))])
            matches, _ = index.match([" ".join(t) for t in texts], threshold=0.0)
            got = {int(m.item.position): m.coverage for m in matches}
            expected = {
                number: brute_coverage(item, texts, n) for number, item in enumerate(items)
            }
            assert got == {k: v for k, v in expected.items() if v > 0}
            # The pruning at a real threshold decides exactly as the full computation.
            at_30, _ = index.match([" ".join(t) for t in texts], threshold=0.3)
            assert {int(m.item.position) for m in at_30} == {
                k for k, v in expected.items() if v > 0.3
            }


def test_the_threshold_is_strict_more_than_the_share() -> None:
    item = [f"t{i}" for i in range(16)]
    index = BenchmarkIndex(8)
    index.add("b", "1", [("question", " ".join(item))])
    index.freeze()
    eight = " ".join(item[:8])  # one 8-gram: covers 8 of 16 tokens, exactly 50%
    nine = " ".join(item[:9])  # two 8-grams: 9 of 16
    assert index.match([eight], 0.5)[0] == []
    (match,), shared = index.match([eight], 0.49)
    assert match.coverage == 0.5 and shared == 1
    (match,), shared = index.match([nine], 0.5)
    assert match.coverage == 9 / 16 and shared == 2
    assert index.match([nine], 9 / 16)[0] == []


def test_ngrams_do_not_span_two_texts_of_a_row() -> None:
    item = [f"t{i}" for i in range(10)]
    index = BenchmarkIndex(8)
    index.add("b", "1", [("question", " ".join(item))])
    whole = index.match([" ".join(item)], 0.5)[0]
    split = index.match([" ".join(item[:5]), " ".join(item[5:])], 0.0)[0]
    assert [m.coverage for m in whole] == [1.0] and split == []


def test_short_items_exact_or_skipped() -> None:
    exact = BenchmarkIndex(8)
    skip = BenchmarkIndex(8, short_items="skip")
    for index in (exact, skip):
        index.add("b", "1", [("question", "Which of the following is true?")])
        index.freeze()
    (match,), _ = exact.match(["  which of the FOLLOWING is true "], 0.5)
    assert match.whole and match.coverage == 1.0 and match.tokens == 6
    # Inside a longer text the short item is not a leak (it is generic, not a copy).
    assert exact.match(["Which of the following is true? Explain the photosynthesis."], 0.5)[0] == []
    assert skip.match(["which of the following is true"], 0.0)[0] == []
    assert exact.stats["b"].short_texts == 1 and exact.stats["b"].texts == 0


# -- benchmark files -------------------------------------------------------------------------------


def test_a_planted_item_is_caught_whatever_its_case_and_spacing(bench: Path) -> None:
    stage = Decontaminate(against=[str(bench)])
    planted = {
        "id": "r1",
        "prompt": "Please solve:\n\n" + GSM.upper().replace(" ", "   \n"),
        "completion": "She sold 72 clips.",
    }
    (dropped,) = run(stage, planted)
    assert isinstance(dropped, Dropped)
    assert dropped.reason == f"contaminated: 100% of {bench}:1 covered by 8-gram matches"
    assert dropped.row["contamination"] == [{
        "benchmark": str(bench), "item": "1", "column": "question", "coverage": 1.0,
        "tokens": len(tokenize(GSM)),
    }]
    lineage = dropped.row["metadata"]["decontaminate"]
    assert lineage["method"] == "decontaminate" and lineage["contaminated"] is True
    assert lineage["parent_id"] == "r1" and lineage["items_matched"] == 1

    unrelated = {"id": "r2", "prompt": "Natalia likes clips. How many friends does she have?",
                 "completion": "She has 48 friends in April and May."}
    kept = run(stage, unrelated)
    assert isinstance(kept, dict) and "contamination" not in kept
    assert kept["metadata"]["decontaminate"]["contaminated"] is False
    assert kept["prompt"] == unrelated["prompt"]


def test_a_partial_copy_names_its_share_and_a_question_in_a_completion_counts(bench: Path) -> None:
    stage = Decontaminate(against=[str(bench)])
    tokens = tokenize(GSM)
    part = " ".join(tokens[:20])  # 20 of 31 tokens
    (dropped,) = run(stage, {"prompt": "Tell me a story.", "completion": "Sure. " + part})
    assert dropped.reason == f"contaminated: 65% of {bench}:1 covered by 8-gram matches"
    # Only the prompt searched: the copy in the completion is not seen.
    prompt_only = Decontaminate(against=[str(bench)], columns=["prompt"])
    assert isinstance(run(prompt_only, {"prompt": "Tell me a story.", "completion": part}), dict)


def test_messages_are_searched_and_a_whole_short_item_is_named(bench: Path) -> None:
    stage = Decontaminate(against=[str(bench)])
    row = {"messages": [{"role": "user", "content": "What is 2 + 2?"},
                        {"role": "user", "content": "what is 2+2?"},
                        {"role": "assistant", "content": "4"}]}
    (dropped,) = run(stage, row)
    assert dropped.reason == (
        f"contaminated: {bench}:3 (3 tokens, shorter than the 8-gram) is a whole text of the row"
    )


def test_items_are_named_by_id_and_by_column_when_several_are_checked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "he.jsonl", [
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add two numbers a and b "
         "and return the sum of both of them.\"\"\"", "canonical_solution": "    return a + b"},
    ])
    stage = Decontaminate(against=[str(path)], bench_columns=["prompt", "canonical_solution"],
                          short_items="exact")
    (dropped,) = run(stage, {"completion": "add two numbers a and b and return the sum of both"})
    # 12 of the prompt's 17 tokens ("def", "add(a", "b", then the docstring's 14 words).
    assert dropped.reason == (
        f"contaminated: 71% of {path}:task_id=HumanEval/0 (prompt) covered by 8-gram matches"
    )
    (dropped,) = run(stage, {"completion": "return a + b"})
    assert f"{path}:task_id=HumanEval/0 (canonical_solution)" in dropped.reason


def test_parquet_and_folder_benchmarks_name_rows(tmp_path: Path) -> None:
    folder = tmp_path / "math500"
    folder.mkdir()
    pq.write_table(pa.table({"problem": ["short one", GSM], "solution": ["x", "y"]}),
                   folder / "test.parquet")
    stage = Decontaminate(against=[str(folder)])
    (dropped,) = run(stage, {"prompt": GSM})
    assert dropped.reason == f"contaminated: 100% of {folder}:test.parquet:row 1 covered by 8-gram matches"
    stats = stage.index.stats[str(folder)]
    assert (stats.items, stats.texts, stats.short_texts, stats.columns) == (2, 1, 1, ["problem"])


def test_the_default_columns_are_question_like_and_answers_are_left_out(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gpqa.csv.jsonl", [
        {"Question": GSM, "Correct Answer": WENG, "Explanation": "because"},
    ])
    stage = Decontaminate(against=[str(path)])
    assert stage.index.stats[str(path)].columns == ["Question"]
    assert isinstance(run(stage, {"prompt": WENG}), dict)  # the answer column is not checked
    with_answer = Decontaminate(against=[str(path)], bench_columns=["Question", "Correct Answer"])
    assert isinstance(run(with_answer, {"prompt": WENG})[0], Dropped)


# -- configuration ---------------------------------------------------------------------------------


def test_bad_benchmarks_and_options_are_config_errors(tmp_path: Path, bench: Path) -> None:
    with pytest.raises(ConfigError, match="no such benchmark file") as error:
        Decontaminate(against=[str(tmp_path / "missing.jsonl")])
    assert error.value.key == "against"
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"answer": "4"}])
    with pytest.raises(ConfigError, match=r"no item has text in the column\(s\)") as error:
        Decontaminate(against=[str(answers)])
    assert "['answer']" in str(error.value)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a b c"}\n{not json\n')
    with pytest.raises(ConfigError) as error:
        Decontaminate(against=[str(broken)])
    assert error.value.line == 2 and error.value.path == str(broken)
    with pytest.raises(ConfigError, match="id column 'uid'"):
        Decontaminate(against=[str(bench)], bench_id_column="uid")
    with pytest.raises(ValidationError, match="listed twice"):
        Decontaminate(against=[str(bench), str(bench)])
    with pytest.raises(ValidationError):
        Decontaminate(against=[str(bench)], threshold=1.0)
    with pytest.raises(ConfigError) as error:
        build_stage(Decontaminate, against=[str(bench)], ngram=0)
    assert error.value.key == "ngram"


def test_a_pipeline_file_reads_benchmarks_beside_it(tmp_path: Path, bench: Path) -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    model, _ = parse_pipeline_text(
        "stages:\n  - type: decontaminate\n    against: gsm.jsonl\n    threshold: 0.3\n",
        base_dir=tmp_path,
    )
    (stage,) = model.stages  # type: ignore[attr-defined]
    assert isinstance(stage, Decontaminate) and stage.against == ["gsm.jsonl"]
    assert stages.get("decontaminate") is Decontaminate
    assert stage.index.stats["gsm.jsonl"].items == 3


def test_the_identity_changes_with_the_benchmark_text(tmp_path: Path, bench: Path) -> None:
    before = Decontaminate(against=[str(bench)]).identity()
    bench.write_text(bench.read_text().replace("Natalia", "Natasha"))
    after = Decontaminate(against=[str(bench)]).identity()
    assert before["benchmarks_digest"] != after["benchmarks_digest"]
    assert {k: v for k, v in before.items() if k != "benchmarks_digest"} == {
        k: v for k, v in after.items() if k != "benchmarks_digest"
    }


# -- in a pipeline ---------------------------------------------------------------------------------


def test_a_run_drops_the_leaks_and_reports_which_items_leaked(tmp_path: Path, bench: Path) -> None:
    rows = [
        {"id": "leak-gsm", "prompt": GSM.lower(), "completion": "72"},
        {"id": "leak-gsm-again", "prompt": "Q: " + GSM, "completion": "seventy-two"},
        {"id": "leak-short", "prompt": "what is 2+2", "completion": "4"},
        {"id": "clean", "prompt": "Write a haiku about autumn leaves falling.", "completion": "ok"},
        {"id": "near", "prompt": "Weng earns $12 an hour for babysitting yesterday morning.",
         "completion": "fine"},
    ]
    result = decontaminate(rows, tmp_path / "out", against=[bench], progress=False)
    assert result.counts == {"data": 2, "failed": 0, "dropped": 3}
    folder = OutputFolder(tmp_path / "out")
    kept = {row["id"]: row for row in folder.read_rows("data")}
    assert set(kept) == {"clean", "near"}
    # A near miss: one shared 8-gram covers 8 of the item's 21 tokens; kept, and it shows.
    assert kept["near"]["metadata"]["decontaminate"]["shared_ngrams"] == 1
    dropped = {row["id"]: row for row in folder.read_rows("dropped")}
    assert dropped["leak-gsm"]["stage"] == "decontaminate"
    assert dropped["leak-gsm"]["drop_reason"].startswith("contaminated: 100% of ")
    figures = result.summary["stage_results"]["decontaminate"]
    assert figures["rows checked"] == 5 and figures["rows contaminated"] == 3
    assert figures[f"{bench}: items"] == 3
    assert figures[f"{bench}: items leaked"] == 2 and figures[f"{bench}: leaked"] == "1, 3"
    assert Decontaminate(against=[str(bench)]).result_line(figures) == (
        f"decontaminate: 3 of 5 rows contaminated; {bench}: 2 of 3 items leaked"
    )
    assert f"{bench}: leaked" in (tmp_path / "out" / "README.md").read_text()


def test_a_named_column_missing_from_the_input_stops_before_the_run(
    tmp_path: Path, bench: Path
) -> None:
    from stillroom.errors import InputError

    stage = Decontaminate(against=[str(bench)], columns=["instruction"])
    with pytest.raises(InputError, match="none of the column"):
        Pipeline([stage], input=[{"prompt": GSM}]).run(tmp_path / "out", progress=False)
