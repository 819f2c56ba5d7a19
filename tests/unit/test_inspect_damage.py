"""`inspect` on a run whose `.stillroom/sessions.jsonl` was damaged by hand: a line of the wrong
shape is left out with a warning naming the file and line (as an unparseable line always was
left out), never an internal error; and what the plain terminal tables show of hostile text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stillroom import Pipeline
from stillroom.cli.main import app
from stillroom.llm.stats import BackendStats
from stillroom.pipeline.stage import Drop

DAMAGED = [
    '{"session":"s1","started":{"a":1},"ended":2}',
    '{"session":"s1","started":1,"ended":2,"backends":{"default":{"spans":5}}}',
    '{"session":"s1","started":1,"ended":2,"backends":{"default":{"spans":[[1]]}}}',
    '{"session":"s1","started":1,"ended":2,"backends":{"default":{"busy_seconds":"x"}}}',
    '["not","a","dict"]',
    '{"session":"s1","started":1,"ended":2,"stages":{"st":{"rows_in":"many"}}}',
    '{"started":1}',
]


def _run(out: Path) -> Path:
    def keep(row: dict) -> dict | Drop:
        return Drop("odd") if row["n"] % 2 else row

    Pipeline([keep], input=[{"n": i, "text": f"t{i}"} for i in range(4)]).run(
        out, progress=False)
    return out


@pytest.mark.parametrize("line", DAMAGED)
def test_a_damaged_sessions_line_is_left_out_with_its_file_and_line(
    tmp_path: Path, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = _run(tmp_path / "out")
    log = out / ".stillroom" / "sessions.jsonl"
    # Twice: the summary of a run with two sessions adds their figures up.
    log.write_text(log.read_text() + line + "\n" + line + "\n")
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == {"data": 2, "failed": 0, "dropped": 2}
    assert f"{log} line 2 is damaged" in caplog.text
    assert f"{log} line 3 is damaged" in caplog.text
    plain = CliRunner().invoke(app, ["inspect", str(out)])
    assert plain.exit_code == 0, plain.output


def test_backend_stats_skip_values_of_the_wrong_type() -> None:
    stats = BackendStats()
    stats.add({"spans": 5, "errors": ["x"], "busy_seconds": "x", "model": 3, "_live": [1, 2]})
    stats.add({"spans": [[1], [1, 2], "ab", [3, "4"]], "errors": {"RateLimit": 2, "x": "y"},
               "busy_seconds": 1.5, "model": "m"})
    out = stats.as_dict()
    assert (out["spans"], out["errors"], out["busy_seconds"], out["model"]) == (
        [[1.0, 2.0]], {"RateLimit": 2}, 1.5, "m")


def test_plain_inspect_escapes_control_and_bidi_characters(tmp_path: Path) -> None:
    """Before, ESC, NUL and an RTL override in a drop reason or a failure reached the terminal
    raw (recolouring or reversing what follows); `--json` keeps the text as it was."""
    def hostile(row: dict) -> dict | Drop:
        if row["n"] == 0:
            return Drop("\x1b[31mANSI\x1b[0m \x00nul \u202eRTL \x9b2J")
        if row["n"] == 1:
            raise ValueError("bell\x07 \x1b]8;;http://evil\x07x")
        return {**row, "text": "a\u202eb\x85"}

    out = tmp_path / "out"
    Pipeline([hostile], input=[{"n": i} for i in range(3)]).run(out, progress=False)
    result = CliRunner().invoke(app, ["inspect", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for raw in ("\x1b", "\x00", "\x07", "\u202e", "\x85", "\x9b"):
        assert raw not in result.output, repr(raw)
    assert "\\x1b[31mANSI\\x1b[0m \\x00nul \\u202eRTL \\x9b2J" in result.output
    assert "\\u202e" in result.output.split("a", 1)[-1]  # the sample row too
    data = json.loads(CliRunner().invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert data["drops_by_reason"][0]["reason"].endswith("\x1b[31mANSI\x1b[0m \x00nul \u202eRTL \x9b2J")
