"""The `verify` stage in a pipeline: verdict columns, metadata, drop_failed, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.api import verify
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.stage import stages
from stillroom.stages import Complete
from stillroom.verify.stage import Verify, build_verifier
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

MATH_ROWS = [
    {"id": "right", "completion": "10 + 21 = 31", "answer": "31"},
    {"id": "wrong", "completion": r"so \boxed{30}", "answer": "31"},
    {"id": "none", "completion": "no idea", "answer": "31"},
]


def read(out: Path, kind: str = "data") -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in OutputFolder(out).read_rows(kind)}


def test_registered_as_a_stage_type() -> None:
    assert stages.get("verify") is Verify


def test_every_row_is_kept_with_passed_reason_details_and_metadata(tmp_path: Path) -> None:
    result = Pipeline([Verify(kind="math")], input=MATH_ROWS).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 3, "failed": 0, "dropped": 0}
    data = read(tmp_path / "out")
    assert data["right"]["passed"] is True
    assert data["right"]["verify_details"]["extracted"] == "31"
    assert data["wrong"]["passed"] is False
    assert data["wrong"]["reason"] == "extracted 30, expected 31"
    assert data["none"]["reason"] == "no answer found in the completion"
    for row in data.values():
        assert row["metadata"]["verify"] == {
            "kind": "math", "passed": row["passed"], "reason": row["reason"]
        }
        assert row["answer"] == "31"  # input columns kept


def test_drop_failed_sends_failed_verdicts_to_dropped_with_their_reason(tmp_path: Path) -> None:
    stage = Verify(kind="math", drop_failed=True, name="check")
    result = Pipeline([stage], input=MATH_ROWS).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 1, "failed": 0, "dropped": 2}
    assert set(read(tmp_path / "out")) == {"right"}
    dropped = read(tmp_path / "out", "dropped")
    assert set(dropped) == {"wrong", "none"}
    assert "math: extracted 30, expected 31" in dropped["wrong"]["drop_reason"]
    assert dropped["wrong"]["passed"] is False
    assert dropped["none"]["metadata"]["check"]["reason"] == "no answer found in the completion"


def test_a_row_without_answer_fails_before_anything_runs_naming_the_line(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        '{"id": "a", "completion": "1", "answer": "1"}\n{"id": "b", "completion": "2"}\n'
    )
    with pytest.raises(InputError) as caught:
        Pipeline([Verify(kind="math")], input=str(source)).run(tmp_path / "out", progress=False)
    assert f"{source}:2" in str(caught.value) and "`answer`" in str(caught.value)
    assert not (tmp_path / "out" / "data").exists() or not OutputFolder(tmp_path / "out").count(
        "data"
    )


def test_a_bad_row_from_an_earlier_stage_goes_to_failed(tmp_path: Path) -> None:
    # `verify` after `complete`: the first stage's check cannot see `completion`; verify's own
    # check sends the row with no `answer` to failed/ with the reason.
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(lambda request, attempt: "2 + 2 = 4")
    rows = [{"id": "a", "prompt": "2+2?", "answer": "4"}, {"id": "b", "prompt": "2+2?"}]
    pipeline = Pipeline([Complete(), Verify(kind="math")], input=rows,
                        backends={"default": ScriptedConfig()})
    result = pipeline.run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 1, "failed": 1, "dropped": 0}
    assert read(tmp_path / "out")["a"]["passed"] is True
    failed = read(tmp_path / "out", "failed")["b"]
    assert "`answer`" in failed["error"]


def test_format_verifiers_as_stages(tmp_path: Path) -> None:
    rows = [{"id": "y", "completion": "yes"}, {"id": "n", "completion": "maybe so"}]
    stage = Verify(kind="regex", options={"pattern": "yes|no"})
    Pipeline([stage], input=rows).run(tmp_path / "regex", progress=False)
    data = read(tmp_path / "regex")
    assert data["y"]["passed"] is True and data["n"]["passed"] is False
    assert "does not match" in data["n"]["reason"]

    stage = Verify(kind="length", answer_column="text", options={"max": 1})
    rows = [{"id": "1", "text": "one"}, {"id": "2", "text": "two words"}]
    Pipeline([stage], input=rows).run(tmp_path / "length", progress=False)
    data = read(tmp_path / "length")
    assert data["1"]["passed"] is True
    assert data["2"]["reason"] == "2 words, more than the maximum 1"


def test_unknown_kinds_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown verifier 'nope'; known: .*math"):
        build_verifier("nope", "completion", {})
    with pytest.raises(ConfigError, match=r"no option\(s\) \['patern'\].*pattern"):
        build_verifier("regex", "completion", {"patern": "x"})
    with pytest.raises(ConfigError, match=r"needs option\(s\) \['pattern'\]"):
        build_verifier("regex", "completion", {})
    with pytest.raises(ValidationError, match="unknown verifier"):
        Verify(kind="nope")


def test_a_pipeline_file_names_the_stage_line_for_a_bad_option(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "input: {rows: 2}\nstages:\n  - type: verify\n    kind: regex\n    options: {patern: x}\n"
    )
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_file(path)
    assert f"{path}:" in str(caught.value) and "patern" in str(caught.value)


def test_the_library_function_reports_the_pass_rate(tmp_path: Path) -> None:
    result = verify(MATH_ROWS, tmp_path / "out", kind="math", progress=False)
    figures = result.summary["stage_results"]["verify"]
    assert figures == {"checked": 3, "passed": 1, "pass rate": pytest.approx(1 / 3)}
    assert Verify(kind="math").result_line(figures) == "math: 1 of 3 rows passed (33.33%)"
    dropped = verify(MATH_ROWS, tmp_path / "out2", kind="math", drop_failed=True, progress=False)
    # The same figures when the failing rows are dropped: dropped rows count as checked.
    assert dropped.summary["stage_results"]["verify"] == {
        "checked": 3, "passed": 1, "pass rate": pytest.approx(1 / 3)
    }
    assert "| verify | pass rate | 0.333 |" in (tmp_path / "out2" / "README.md").read_text()
