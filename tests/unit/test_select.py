"""select: each step alone and together, round-robin over domains, k-means and k-center on given
vectors (no embedding model), drop reasons, per-step counts, determinism and column checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stillroom import Pipeline
from stillroom.api import build_stage, select
from stillroom.curate.select import Select
from stillroom.curate.select_algorithms import kcenter, kmeans, round_robin
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.config import parse_pipeline_text
from stillroom.pipeline.stage import stages

Row = dict[str, Any]


def write_jsonl(path: Path, rows: list[Row]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_select(tmp_path: Path, rows: list[Row], name: str = "out", **options: Any) -> Any:
    return select(rows, tmp_path / name, progress=False, **options)


def kept(out: Path) -> list[Row]:
    return OutputFolder(out).read_rows("data")


def dropped(out: Path) -> list[Row]:
    return OutputFolder(out).read_rows("dropped")


def ids(rows: list[Row]) -> list[str]:
    return [row["id"] for row in rows]


# -- options ---------------------------------------------------------------------------------------


def test_the_stage_is_registered_and_parses_from_yaml() -> None:
    assert stages.get("select") is Select
    model, _ = parse_pipeline_text(
        "stages:\n"
        "  - type: select\n"
        "    size: 10\n"
        "    quality: {column: score, min: 4}\n"
        "    difficulty: {column: weak_passed, drop_when: true}\n"
        "    diversity: {method: domains, domain_column: msc, prefer: random}\n"
    )
    stage = model.stages[0]  # type: ignore[attr-defined]
    assert isinstance(stage, Select)
    assert stage.difficulty is not None and stage.difficulty.drop_when is True
    assert stage.diversity is not None and stage.diversity.domain_column == "msc"


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({}, None, "at least one step"),
        ({"size": 5, "quality": {"column": "s"}}, None, "diversity"),
        ({"diversity": {"method": "domains"}}, None, "needs size"),
        ({"difficulty": {"column": "d", "min": 1, "keep_top": 0.5}}, "difficulty",
         "exactly one of drop_when, min or keep_top"),
        ({"difficulty": {"column": "d"}}, "difficulty", "exactly one"),
        ({"difficulty": {"column": "d", "keep_top": 1.5}}, "difficulty.keep_top", "1"),
        ({"size": 3, "diversity": {"method": "clusters", "domain_column": "x"}}, "diversity",
         "domain_column does not apply to method clusters"),
        ({"size": 3, "diversity": {"method": "kcenter", "clusters": 4}}, "diversity",
         "clusters does not apply"),
        ({"size": 3, "diversity": {"method": "domains", "text_column": "p"}}, "diversity",
         "text_column does not apply"),
        ({"quality": {"column": "s", "minimum": 3}}, "quality.minimum", "Extra"),
        ({"size": 0, "diversity": {"method": "domains"}}, "size", "1"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str | None, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_stage(Select, **options)
    assert caught.value.key == key
    assert words in caught.value.reason


# -- quality ---------------------------------------------------------------------------------------


def test_quality_drops_low_and_missing_scores_with_their_reasons(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "score": 5}, {"id": "b", "score": 2}, {"id": "c", "score": 4},
        {"id": "d", "score": None}, {"id": "e"}, {"id": "f", "score": 3.5},
    ]
    result = run_select(tmp_path, rows, quality={"column": "score", "min": 4})
    assert ids(kept(result.out)) == ["a", "c"]  # input order
    reasons = {row["id"]: row["drop_reason"] for row in dropped(result.out)}
    assert reasons == {
        "b": "quality: score 2 < 4",
        "d": "quality: score missing",
        "e": "quality: score missing",
        "f": "quality: score 3.5 < 4",
    }
    entry = kept(result.out)[0]["metadata"]["select"]
    assert entry["method"] == "select" and entry["step"] == "kept"
    assert entry["quality"] == 5 and entry["rank"] == 1 and entry["parent_id"] == "a"
    assert result.summary["stage_results"]["select"] == {
        "rows": 6, "quality: rows in": 6, "quality: removed": 4, "quality: left": 2, "kept": 2
    }


def test_quality_without_min_reads_true_or_false(tmp_path: Path) -> None:
    rows = [{"id": "a", "passed": True}, {"id": "b", "passed": False}, {"id": "c"}]
    result = run_select(tmp_path, rows, quality={"column": "passed"})
    assert ids(kept(result.out)) == ["a"]
    assert {r["id"]: r["drop_reason"] for r in dropped(result.out)} == {
        "b": "quality: passed is false", "c": "quality: passed missing",
    }


def test_a_value_of_the_wrong_type_names_file_and_line(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a"}, {"score": "high"}])
    with pytest.raises(InputError) as caught:
        select(source, tmp_path / "out", quality={"column": "score", "min": 3}, progress=False)
    assert f"{source}:2" in str(caught.value) and "min needs a number" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_from_an_earlier_stage_a_wrong_type_goes_to_failed(tmp_path: Path) -> None:
    rows = [{"id": "a", "score": 5}, {"id": "b"}]
    stage = build_stage(Select, quality={"column": "score", "min": 3})

    def spoil(row: Row) -> Row:
        return {**row, "score": "high"} if row["id"] == "b" else row

    result = Pipeline([spoil, stage], input=rows).run(tmp_path / "out", progress=False)
    assert ids(kept(result.out)) == ["a"]
    failed = OutputFolder(result.out).read_rows("failed")
    assert [row["id"] for row in failed] == ["b"] and failed[0]["error_type"] == "BadValue"


def test_a_column_no_row_has_is_an_error_naming_it_and_the_file(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "score": 4, "domain": "x"}])
    with pytest.raises(ConfigError) as caught:
        select(source, tmp_path / "out", quality={"column": "rating", "min": 3}, progress=False)
    assert caught.value.key == "quality.column"
    assert "'rating'" in str(caught.value) and str(source) in str(caught.value)
    assert "domain, id, score" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        select(source, tmp_path / "out", size=1,
               diversity={"method": "domains", "domain_column": "msc", "prefer": "random"},
               progress=False)
    assert caught.value.key == "diversity.domain_column" and "'msc'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # prefer: longest needs an answer column
        select(source, tmp_path / "out", size=1, diversity={"method": "domains"}, progress=False)
    assert caught.value.key == "diversity.prefer" and "prefer: random" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_inside_a_pipeline_a_missing_column_stops_the_stage(tmp_path: Path) -> None:
    stage = build_stage(Select, difficulty={"column": "weak_passed", "drop_when": True})
    pipeline = Pipeline([lambda row: row, stage], input=[{"id": "a"}])
    with pytest.raises(ConfigError, match="'weak_passed' is not in the 1 rows"):
        pipeline.run(tmp_path / "out", progress=False)


# -- difficulty ------------------------------------------------------------------------------------


def test_difficulty_drops_what_the_weaker_model_solved(tmp_path: Path) -> None:
    rows = [{"id": "a", "weak_passed": True}, {"id": "b", "weak_passed": False},
            {"id": "c", "weak_passed": None}]
    result = run_select(tmp_path, rows, difficulty={"column": "weak_passed", "drop_when": True})
    assert ids(kept(result.out)) == ["b"]
    assert {r["id"]: r["drop_reason"] for r in dropped(result.out)} == {
        "a": "difficulty: solved by the weaker model (weak_passed = true)",
        "c": "difficulty: weak_passed missing",
    }


def test_difficulty_min_and_keep_top(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "ifd": value} for i, value in enumerate([0.9, 0.1, 0.5, 0.5, 0.3])]
    result = run_select(tmp_path, rows, "min", difficulty={"column": "ifd", "min": 0.3})
    assert ids(kept(result.out)) == ["r0", "r2", "r3", "r4"]
    assert dropped(result.out)[0]["drop_reason"] == "difficulty: ifd 0.1 < 0.3"
    # The top 50% of 5 rows is 3 rows (rounded up); of the tied 0.5s both make it, then 0.3 is cut.
    result = run_select(tmp_path, rows, "top", difficulty={"column": "ifd", "keep_top": 0.5})
    assert ids(kept(result.out)) == ["r0", "r2", "r3"]
    assert {r["id"]: r["drop_reason"] for r in dropped(result.out)} == {
        "r1": "difficulty: ifd 0.1 below the top 50% cutoff (0.5)",
        "r4": "difficulty: ifd 0.3 below the top 50% cutoff (0.5)",
    }
    # A tie at the cut goes to the earlier row.
    result = run_select(tmp_path, rows, "tie", difficulty={"column": "ifd", "keep_top": 0.4})
    assert ids(kept(result.out)) == ["r0", "r2"]


# -- round-robin over domains (s1) -----------------------------------------------------------------


def domain_rows() -> list[Row]:
    """Domain a: 10 rows, b: 5, c: 2; completions of growing length within each domain."""
    rows = []
    for domain, count in (("a", 10), ("b", 5), ("c", 2)):
        for i in range(count):
            rows.append({"id": f"{domain}{i}", "domain": domain, "completion": "x" * (i + 1)})
    return rows


def test_round_robin_gives_equal_shares_and_prefers_the_longest(tmp_path: Path) -> None:
    result = run_select(tmp_path, domain_rows(), size=12, diversity={"method": "domains"})
    rows = kept(result.out)
    # c has only 2 rows: a and b share the rest equally (5 each).
    assert Counter(row["domain"] for row in rows) == {"a": 5, "b": 5, "c": 2}
    assert {row["id"] for row in rows if row["domain"] == "a"} == {f"a{i}" for i in range(5, 10)}
    assert {row["id"] for row in rows if row["domain"] == "b"} == {f"b{i}" for i in range(5)}
    reasons = Counter(row["drop_reason"] for row in dropped(result.out))
    assert reasons == {"diversity: not selected (domain a already has its share)": 5}
    ranks = sorted(row["metadata"]["select"]["rank"] for row in rows)
    assert ranks == list(range(1, 13))
    by_rank = {row["metadata"]["select"]["rank"]: row for row in rows}
    # The first round takes each domain's longest row.
    assert {by_rank[r]["id"] for r in (1, 2, 3)} == {"a9", "b4", "c1"}
    assert by_rank[1]["metadata"]["select"]["preference"] == len(by_rank[1]["completion"])


def test_shares_differ_by_at_most_one_and_the_extra_is_seeded(tmp_path: Path) -> None:
    rows = [{"id": f"{d}{i}", "domain": d, "completion": "x" * i} for d in "pqr" for i in range(10)]
    extras = set()
    for seed in range(6):
        result = run_select(tmp_path, rows, f"s{seed}", size=10, seed=seed,
                            diversity={"method": "domains"})
        shares = Counter(row["domain"] for row in kept(result.out))
        assert sorted(shares.values()) == [3, 3, 4]
        extras.add(shares.most_common(1)[0][0])
    assert len(extras) > 1  # which domain gets the extra row is a draw, not alphabetical


def test_round_robin_function_order() -> None:
    groups = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 0.0])
    order = round_robin(groups, scores, 6, turns=np.array([2, 0, 1]))
    # Round 1 in turn order: group 1 (row 3), group 2 (row 5), group 0 (row 1); round 2: 4, 2.
    assert order.tolist() == [3, 5, 1, 4, 2, 0]
    assert round_robin(groups, scores, 2, turns=np.array([0, 1, 2])).tolist() == [1, 3]
    assert round_robin(np.zeros(0, dtype=int), np.zeros(0), 3).tolist() == []


def test_rows_without_a_domain_are_dropped_with_their_reason(tmp_path: Path) -> None:
    rows = [{"id": "a", "domain": "x", "completion": "1"}, {"id": "b", "completion": "22"}]
    result = run_select(tmp_path, rows, size=5, diversity={"method": "domains"})
    assert ids(kept(result.out)) == ["a"]
    assert dropped(result.out)[0]["drop_reason"] == "diversity: domain missing"


def test_prefer_a_column_or_random(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "domain": "d", "votes": v} for i, v in enumerate([3, 9, None, 5])]
    result = run_select(tmp_path, rows, "col", size=2,
                        diversity={"method": "domains", "prefer": "votes"})
    assert ids(kept(result.out)) == ["r1", "r3"]
    picks = set()
    for seed in range(5):
        result = run_select(tmp_path, rows, f"rand{seed}", size=2, seed=seed,
                            diversity={"method": "domains", "prefer": "random"})
        picks.add(tuple(ids(kept(result.out))))
    assert len(picks) > 1


# -- k-means and k-center on given vectors ---------------------------------------------------------


def blobs(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated 2-D blobs around the corners of a large square."""
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [100, 0], [0, 100], [100, 100], [50, 50]], dtype=float)
    points = [corners[b] + rng.normal(0, 1, (n, 2)) for b, n in enumerate(sizes)]
    truth = np.concatenate([np.full(n, b) for b, n in enumerate(sizes)])
    return np.concatenate(points), truth


def test_kmeans_recovers_separated_blobs_deterministically() -> None:
    points, truth = blobs([40, 30, 20, 10])
    labels, centers = kmeans(points, 4, seed=3)
    assert centers.shape == (4, 2)
    for blob in range(4):  # each blob is one cluster, and each cluster one blob
        assert len(set(labels[truth == blob].tolist())) == 1
    assert len(set(labels.tolist())) == 4
    again, _ = kmeans(points, 4, seed=3)
    assert np.array_equal(labels, again)
    fewer, _ = kmeans(np.ones((5, 2)), 3)  # fewer distinct rows than k
    assert len(fewer) == 5


def test_kcenter_picks_spread_points() -> None:
    points, truth = blobs([30, 30, 30, 30, 30], seed=1)
    result = kcenter(points, 5, first=0)
    assert sorted(truth[result.order].tolist()) == [0, 1, 2, 3, 4]  # one per blob
    # Farthest first: from blob 0 the next is the opposite corner, blob 3.
    assert truth[result.order[1]] == 3
    assert np.isnan(result.pick_distance[0]) and result.pick_distance[1] > 130
    assert result.radius < 10  # every point is near a chosen one (blobs 50 apart)
    # Exact distances agree with a brute-force check.
    chosen = points[result.order]
    brute = np.sqrt(((points[:, None, :] - chosen[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(result.nearest, brute, atol=1e-3)


def test_kcenter_takes_duplicates_last_and_never_twice() -> None:
    points = np.array([[0.0, 0.0]] * 4 + [[1.0, 0.0]])
    result = kcenter(points, 3, first=0)
    assert result.order.tolist()[:2] == [0, 4] and len(set(result.order.tolist())) == 3


def fake_embedder(vectors: dict[str, list[float]]) -> Any:
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors[text] for text in texts], dtype=np.float32)

    return embed


def test_clusters_are_balanced_through_the_stage(tmp_path: Path) -> None:
    points, truth = blobs([30, 12, 6])
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "completion": "x" * (i % 7 + 1)}
            for i in range(len(points))]
    embed = fake_embedder({f"p{i}": points[i].tolist() for i in range(len(points))})
    result = select(rows, tmp_path / "out", size=15, embed=embed, progress=False,
                    diversity={"method": "clusters", "clusters": 3})
    rows_kept = kept(result.out)
    by_blob = Counter(int(truth[int(row["id"][1:])]) for row in rows_kept)
    assert by_blob == {0: 5, 1: 5, 2: 5}
    clusters = {row["metadata"]["select"]["cluster"] for row in rows_kept}
    assert len(clusters) == 3
    reasons = {row["drop_reason"] for row in dropped(result.out)}
    assert all(r.startswith("diversity: not selected (cluster ") and r.endswith(
        " already has its share)") for r in reasons)
    assert result.summary["stage_results"]["select"]["clusters among kept rows"] == 3


def test_kcenter_through_the_stage_starts_at_the_preferred_row(tmp_path: Path) -> None:
    points, truth = blobs([20, 20, 20, 20])
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "votes": 1} for i in range(len(points))]
    rows[25]["votes"] = 10  # blob 1
    embed = fake_embedder({f"p{i}": points[i].tolist() for i in range(len(points))})
    result = select(rows, tmp_path / "out", size=4, embed=embed, progress=False,
                    diversity={"method": "kcenter", "prefer": "votes"})
    rows_kept = kept(result.out)
    assert sorted(int(truth[int(r["id"][1:])]) for r in rows_kept) == [0, 1, 2, 3]
    first = next(r for r in rows_kept if r["metadata"]["select"]["rank"] == 1)
    assert first["id"] == "r25" and first["metadata"]["select"]["distance"] is None
    out_rows = dropped(result.out)
    assert {r["drop_reason"] for r in out_rows} == {"diversity: not selected (k-center)"}
    assert all(0 <= r["metadata"]["select"]["distance"] < 5 for r in out_rows)
    assert first["metadata"]["select"]["model"] == "custom"


def test_a_row_with_no_text_to_embed_fails(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "  "}, {"id": "c", "prompt": "q"}]
    embed = fake_embedder({"p": [0.0, 1.0], "q": [1.0, 0.0]})
    stage = build_stage(Select, size=1, diversity={"method": "kcenter", "prefer": "random"})
    stage.use_embedder(embed)
    result = Pipeline([lambda row: row, stage], input=rows).run(tmp_path / "out", progress=False)
    failed = OutputFolder(result.out).read_rows("failed")
    assert [r["id"] for r in failed] == ["b"] and "no text to embed" in failed[0]["error"]
    assert len(kept(result.out)) == 1


# -- all steps together ----------------------------------------------------------------------------


def s1_rows() -> list[Row]:
    rows = []
    for i in range(60):
        rows.append({
            "id": f"q{i}",
            "domain": ["algebra", "geometry", "number theory"][i % 3],
            "score": [5, 4, 2, None][i % 4],
            "weak_passed": i % 5 == 0,
            "completion": "step " * (i % 11 + 1),
        })
    return rows


def test_steps_together_counts_add_up_and_are_reported(tmp_path: Path) -> None:
    result = run_select(
        tmp_path, s1_rows(), size=9,
        quality={"column": "score", "min": 4},
        difficulty={"column": "weak_passed", "drop_when": True},
        diversity={"method": "domains"},
    )
    figures = result.summary["stage_results"]["select"]
    steps = ["quality", "difficulty", "diversity"]
    assert [key.removesuffix(": removed") for key in figures if key.endswith(": removed")] == steps
    assert figures["rows"] == 60
    assert figures["quality: rows in"] == 60 and figures["quality: removed"] == 30  # 2 and None
    for before, after in zip(steps, steps[1:], strict=False):
        assert (figures[f"{after}: rows in"] == figures[f"{before}: left"]
                == figures[f"{before}: rows in"] - figures[f"{before}: removed"])
    assert figures["diversity: left"] == figures["kept"] == 9 == result.counts["data"]
    assert sum(figures[f"{step}: removed"] for step in steps) == result.counts["dropped"] == 51
    rows = kept(result.out)
    assert Counter(row["domain"] for row in rows) == {"algebra": 3, "geometry": 3,
                                                      "number theory": 3}
    assert all(row["score"] >= 4 and not row["weak_passed"] for row in rows)
    by_step = Counter(row["drop_reason"].split(":")[0] for row in dropped(result.out))
    assert by_step == {step: figures[f"{step}: removed"] for step in steps}
    assert figures["quality: rows in"] == 60 and figures["diversity: left"] == 9
    assert figures["kept"] == 9 and figures["domains among kept rows"] == 3
    card = (result.out / "README.md").read_text()
    assert "difficulty: removed" in card
    stage = build_stage(Select, size=9, quality={"column": "score", "min": 4},
                        difficulty={"column": "weak_passed", "drop_when": True},
                        diversity={"method": "domains"})
    assert stage.result_line(figures) == "select: kept 9 of 60 rows (" + ", ".join(
        f"{step} removed {figures[f'{step}: removed']}" for step in steps) + ")"


def test_the_same_seed_gives_the_same_selection(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "size": 7, "quality": {"column": "score", "min": 4},
        "diversity": {"method": "domains", "prefer": "random"},
    }
    first = run_select(tmp_path, s1_rows(), "one", seed=4, **options)
    second = run_select(tmp_path, s1_rows(), "two", seed=4, **options)
    assert ids(kept(first.out)) == ids(kept(second.out))
    assert [r["metadata"]["select"]["rank"] for r in kept(first.out)] == [
        r["metadata"]["select"]["rank"] for r in kept(second.out)
    ]


def test_two_select_stages_report_separately(tmp_path: Path) -> None:
    first = build_stage(Select, quality={"column": "score", "min": 4})
    second = build_stage(Select, size=4, diversity={"method": "domains"})
    pipeline = Pipeline([first, second], input=s1_rows())
    result = pipeline.run(tmp_path / "out", progress=False)
    results = result.summary["stage_results"]
    names = pipeline.stage_names
    assert results[names[0]]["quality: removed"] == 30 and results[names[0]]["kept"] == 30
    assert results[names[1]]["diversity: rows in"] == 30 and results[names[1]]["kept"] == 4
