"""Mixing real and synthetic sources: shares, the accumulate rule, the collapse guard, the card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stillroom import Pipeline
from stillroom.cli.main import app
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError
from stillroom.pipeline.mixing import MixSource, parse_source, plan_counts


def write(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "prompt": f"{prefix} {i}"}) + "\n"
                            for i in range(n)))
    return path


def test_plan_counts() -> None:
    # Real taken whole (100 rows = 70%), synthetic sized to 30% of the mix: 100 / 0.7 * 0.3.
    assert plan_counts([100, 1000], [None, 0.3], None) == [100, 42]
    # A shared source that is too small falls short; the real rows are never cut to make room.
    assert plan_counts([100, 10], [None, 0.3], None) == [100, 10]
    # Every source shared: the largest mix that repeats nothing.
    assert plan_counts([100, 1000], [0.5, 0.5], None) == [100, 100]
    assert plan_counts([100, 1000], [0.2, 0.8], None) == [100, 400]
    assert plan_counts([100, 1000], [None, None], None) == [100, 1000]
    # size scales every source together.
    assert plan_counts([100, 1000], [0.5, 0.5], 50) == [25, 25]
    assert sum(plan_counts([100, 1000], [None, 0.3], 50)) <= 50


def test_a_pipeline_reads_a_mix_and_the_card_shows_it(tmp_path: Path) -> None:
    write(tmp_path / "real.jsonl", "h", 30)
    write(tmp_path / "syn.jsonl", "s", 200)
    (tmp_path / "p.yaml").write_text(
        "seed: 3\n"
        "input:\n"
        "  mix:\n"
        "    - {path: real.jsonl, kind: real, name: human}\n"
        "    - {path: syn.jsonl, kind: synthetic, share: 0.25}\n"
        "stages:\n  - type: verify\n    kind: length\n    answer_column: prompt\n"
        "    options: {min: 1}\n"
    )
    pipeline = Pipeline.from_file(tmp_path / "p.yaml")
    result = pipeline.run(tmp_path / "out", progress=False)
    rows = OutputFolder(tmp_path / "out").read_rows("data")
    sources = Counter(row["metadata"]["mix"]["source"] for row in rows)
    assert sources == {"human": 30, "syn.jsonl": 10} and result.counts["data"] == 40
    assert {row["metadata"]["mix"]["kind"] for row in rows} == {"real", "synthetic"}
    # Shuffled: the first rows already hold both sources.
    assert {row["metadata"]["mix"]["kind"] for row in rows[:15]} == {"real", "synthetic"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| human | real | 30 | 30 | all rows | 75.0% |" in card
    assert "| syn.jsonl | synthetic | 200 | 10 | 25.0% | 25.0% |" in card
    # The same pipeline again: the same rows (a rerun resumes instead of refusing the folder).
    again = Pipeline.from_file(tmp_path / "p.yaml").run(tmp_path / "out", progress=False)
    assert again.counts == result.counts


def test_a_bad_mix_is_refused_with_the_file_and_line(tmp_path: Path) -> None:
    def refused(mix: str) -> str:
        path = tmp_path / "p.yaml"
        path.write_text(f"input:\n  mix:\n{mix}stages:\n  - type: verify\n    kind: math\n")
        with pytest.raises(ConfigError) as caught:
            Pipeline.from_file(path)
        assert str(path) in str(caught.value)
        return str(caught.value)

    assert "model collapse" in refused("    - {path: a.jsonl, kind: synthetic}\n")
    assert "add up to 1" in refused(
        "    - {path: a.jsonl, kind: real, share: 0.5}\n    - {path: b.jsonl, kind: synthetic, share: 0.2}\n"
    )
    assert "kind" in refused("    - {path: a.jsonl, kind: human}\n")
    assert "exactly one of" in refused("    - {path: a.jsonl, kind: real}\n  path: b.jsonl\n")


def test_parse_source() -> None:
    assert parse_source("real:data/h.jsonl") == MixSource(path="data/h.jsonl", kind="real")
    assert parse_source("synthetic:out/x/data:0.3").share == 0.3
    assert parse_source("real:C:/odd:path").path == "C:/odd:path"
    with pytest.raises(ConfigError, match="KIND:PATH"):
        parse_source("human:x.jsonl")
    with pytest.raises(ConfigError, match="share"):
        parse_source("synthetic:x.jsonl:1.5")


def test_the_mix_verb(tmp_path: Path) -> None:
    write(tmp_path / "real.jsonl", "h", 20)
    write(tmp_path / "syn.jsonl", "s", 100)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["mix", "-o", str(out), "--source", f"real:{tmp_path / 'real.jsonl'}",
                                 "--source", f"synthetic:{tmp_path / 'syn.jsonl'}:0.5",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = OutputFolder(out).read_rows("data")
    assert Counter(row["metadata"]["mix"]["kind"] for row in rows) == {"real": 20, "synthetic": 20}
    refused = runner.invoke(app, ["mix", "-o", str(tmp_path / "o2"), "--source",
                                  f"synthetic:{tmp_path / 'syn.jsonl'}"])
    assert refused.exit_code == 2 and "--allow-synthetic-only" in refused.output
