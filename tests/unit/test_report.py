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
