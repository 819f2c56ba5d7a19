"""The dataset card and report say what happened, and nothing in the data can break the page."""

from __future__ import annotations

from pathlib import Path

from stillroom import Drop, Pipeline
from stillroom.pipeline.stage import Row, RowFailure


def test_card_and_report_count_rows_and_reasons(tmp_path: Path) -> None:
    def judge(row: Row) -> Row | Drop:
        if row["id"] == 1:
            return Drop("too short")
        if row["id"] == 2:
            raise RowFailure("teacher refused", kind="Refusal")
        return {**row, "completion": "ok"}

    rows = [{"id": i, "prompt": "<script>alert(1)</script>"} for i in range(5)]
    out = tmp_path / "out"
    Pipeline([judge], input=rows, name="report test").run(out, progress=False, max_failure_rate=1)
    card = (out / "README.md").read_text()
    assert "| 3 | 1 | 1 | 25.00% |" in card
    assert "judge: Refusal" in card and "judge: too short" in card
    assert "path: data/*.parquet" in card
    report = (out / "report.html").read_text()
    assert "<script>alert(1)" not in report and "&lt;script&gt;" in report
    assert "judge: Refusal" in report and "teacher refused" in report
    assert "report test" in report


def test_card_and_report_have_a_diversity_section(tmp_path: Path) -> None:
    from stillroom.stages import Complete
    from tests import fakes
    from tests.fakes import ScriptedBackend, ScriptedConfig, rows

    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend()
    out = tmp_path / "out"
    # Three rows: too few for the embedding model, so none is loaded; the text measures remain.
    result = Pipeline([Complete()], input=rows(3), backends={"default": ScriptedConfig()}).run(
        out, progress=False
    )
    assert result.summary["diversity"]["complete"]["completion"]["texts"] == 3
    card = (out / "README.md").read_text()
    diversity = card[card.index("## Diversity"):card.index("## Columns")]
    # "answer to pN #0" x3: 12 words, 6 distinct; 9 bigrams, 7 distinct ("answer to" thrice)
    assert "| complete | completion | 3 | 0.500 | 0.778 | 0.0% | n/a | n/a |" in diversity
    # Why the embedding measures are missing (too few texts, or a run too short to be worth the
    # sentence model: the diversity module decides which), in the card and the report.
    assert "Embedding measures for `complete.completion`: not computed: " in diversity
    report = (out / "report.html").read_text()
    section = report[report.index("<h2>Diversity</h2>"):report.index("<h2>Failures by reason</h2>")]
    assert "complete" in section and "0.778" in section
    assert "Embedding measures for complete.completion: not computed: " in section


def test_warnings_are_listed_in_card_and_report_escaped() -> None:
    from stillroom.report.card import render_card
    from stillroom.report.html import render_report

    summary = {
        "counts": {"data": 1, "failed": 0, "dropped": 0}, "failure_rate": 0.0,
        "failures_by_reason": {}, "drops_by_reason": {}, "backends": {}, "stages": {},
        "sessions": [], "seconds": 0.0, "diversity": {},
        "warnings": ["stage 'x', column '<script>': distinct-2 0.010 is below 0.2"],
    }
    card = render_card(summary, {}, [])
    assert "## Warnings" in card
    assert "\n- stage 'x', column '<script>': distinct-2 0.010 is below 0.2\n" in card
    assert "_No stage of this pipeline writes text with a model._" in card
    report = render_report(summary, {}, [], [])
    assert "column &#x27;&lt;script&gt;&#x27;" in report and "<script>" not in report
    assert "no stage of this pipeline writes text with a model" in report


def test_card_has_cost_funnel_lengths_scores_and_lineage(tmp_path: Path) -> None:
    from stillroom.data.rows import with_lineage
    from stillroom.stages import Complete
    from tests import fakes
    from tests.fakes import ScriptedBackend, ScriptedConfig, rows

    def label(row: Row) -> Row | Drop:
        if row["id"] == "r0":
            return Drop("first one")
        out = {**row, "score": len(row["completion"])}
        return with_lineage(out, "label", method="labelling", step="s", parent_id=None,
                            seed_id=None, model="m1", template="t@1")

    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend()
    out = tmp_path / "out"
    config = ScriptedConfig(input_price=2.0, output_price=10.0)
    result = Pipeline([Complete(), label], input=rows(4), backends={"default": config}).run(
        out, progress=False
    )
    stats = result.summary["backends"]["default"]
    expected = (stats["prompt_tokens"] * 2.0 + stats["completion_tokens"] * 10.0) / 1e6
    card = (out / "README.md").read_text()
    assert f"| {expected:,.4f} |" in card
    funnel = card[card.index("## Funnel"):card.index("## Lengths and scores")]
    assert "| input | 4 |" in funnel and "| label | 4 | 3 | 1 | 0 |" in funnel
    distributions = result.summary["distributions"]
    # "answer to pN #0": 4 words each, for the 3 rows kept.
    assert distributions["lengths"]["completion"]["n"] == 3
    assert distributions["lengths"]["completion"]["median"] == 4.0
    assert distributions["scores"]["score"]["mean"] == len("answer to p1 #0")
    assert "| completion (words) | 3 | 4.00 |" in card
    lineage = card[card.index("## Lineage"):]
    assert "| label | 3 | labelling (3) | m1 (3) | t@1 (3) |" in lineage
    report = (out / "report.html").read_text()
    assert "<h2>Lengths</h2>" in report and "completion (words)" in report
    assert report.count("<svg") >= 3  # funnel, lengths, scores


def test_histogram_bins_hold_every_value() -> None:
    from stillroom.report.plots import describe

    small = describe([1, 2, 2, 3, 5])
    assert small["counts"] == [1, 2, 1, 0, 1] and small["median"] == 2
    spread = describe([float(v) for v in range(1000)])
    assert sum(spread["counts"]) == 1000 and len(spread["counts"]) == 20
    assert spread["min"] == 0 and spread["max"] == 999 and spread["mean"] == 499.5


def test_many_distinct_reasons_are_grouped_in_the_card_but_kept_whole_in_dropped(tmp_path: Path) -> None:
    from stillroom.data.output import OutputFolder

    def dedup_like(row: Row) -> Row | Drop:
        if row["id"] % 2:
            return Drop(f"near-duplicate of r{row['id'] - 1} (jaccard 0.{80 + row['id'] % 19})")
        return row

    rows = [{"id": i, "prompt": f"p{i}"} for i in range(100)]
    out = tmp_path / "out"
    Pipeline([dedup_like], input=rows).run(out, progress=False)
    card = (out / "README.md").read_text()
    assert "| dedup_like: near-duplicate of ... | 50 |" in card
    assert "r17" not in card.split("## Drops by reason")[1].split("##")[0]
    reasons = {row["drop_reason"] for row in OutputFolder(out).read_rows("dropped")}
    assert "near-duplicate of r16 (jaccard 0.97)" in reasons and len(reasons) == 50


def test_the_eval_headline_names_every_model_when_none_is_the_student() -> None:
    from stillroom.report.distillation import headline

    evaluation = {"metric": "accuracy", "n": 20, "baseline": 0.2,
                  "models": {"baseline": {"accuracy": 0.2}, "on_policy": {"accuracy": 0.35},
                             "off_policy": {"accuracy": 0.7}},
                  "paired_test": {"p_value": 0.5, "b": 1, "c": 3,
                                  "models": ["on_policy", "off_policy"]}}
    line = headline(evaluation)
    assert line.startswith("accuracy on 20 held-out prompts: baseline 0.20, on_policy 0.35, "
                           "off_policy 0.70.")
    assert "1 items only on_policy got right, 3 only off_policy" in line
    # The quickstart's roles keep their sentence.
    roles = {"n": 5, "baseline": 0.2, "student": 0.6, "teacher": 0.4,
             "models": {"baseline": {"accuracy": 0.2}, "student": {"accuracy": 0.6}}}
    assert "baseline 0.20 → student 0.60 (teacher 0.40)" in headline(roles)
