"""Path options inside an option's mapping (``tools: {python: tools/x.py}``) are written absolute
in the card's copy of the pipeline, so that it reruns wherever it is saved."""

from __future__ import annotations

import shutil
from pathlib import Path

from stillroom.pipeline.finish import _absolute_options, run_config
from stillroom.pipeline.inputs import InputSource
from stillroom.pipeline.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_dotted_path_option_names_a_key_inside_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "x.py").write_text("")
    (tmp_path / "bench.jsonl").write_text("")
    options = {
        "type": "t",
        "tools": {"python": "tools/x.py", "functions": ["tools/x.py"], "timeout": 10.0},
        "sources": [{"path": "bench.jsonl", "name": "bench.jsonl"}, "bench.jsonl"],
        "against": "bench.jsonl",
        "empty": None,
        "column": "bench.jsonl",
    }
    assert _absolute_options(options, ("tools.python", "sources.path", "against", "empty.x"),
                             tmp_path) == {
        **options,
        # only the declared key of the mapping: `functions` may look like a path, it is no path
        "tools": {"python": str(tmp_path / "tools" / "x.py"), "functions": ["tools/x.py"],
                  "timeout": 10.0},
        # in a list, each mapping's key; an item that is no mapping is left as it is
        "sources": [{"path": str(tmp_path / "bench.jsonl"), "name": "bench.jsonl"}, "bench.jsonl"],
        "against": str(tmp_path / "bench.jsonl"),
    }
    assert options["tools"]["python"] == "tools/x.py"  # the stage's own dump is not changed


def test_the_tool_stages_tools_file_is_absolute_in_the_card_and_reruns_anywhere(
    tmp_path: Path,
) -> None:
    (tmp_path / "tools").mkdir()
    shutil.copy(EXAMPLES / "tools" / "everyday.py", tmp_path / "tools" / "everyday.py")
    (tmp_path / "rows.jsonl").write_text('{"topic": "cooking"}\n')
    (tmp_path / "p.yaml").write_text(
        "input: rows.jsonl\nbackends:\n  default: {kind: llamacpp}\nstages:\n"
        "  - type: tool_queries\n    tools: {python: tools/everyday.py}\n"
        "    topic_column: topic\n"
        "  - type: tool_use\n    tools: {python: tools/everyday.py}\n",
        encoding="utf-8")
    plan = Pipeline.from_file(tmp_path / "p.yaml")
    source = InputSource(plan.input, plan.base_dir, None, plan.seed)
    source.check(plan.stages[0].check_row)
    config = run_config(plan, source)
    absolute = str((tmp_path / "tools" / "everyday.py").resolve())
    assert [stage["tools"]["python"] for stage in config["stages"]] == [absolute, absolute]
    # Parsed from an empty folder, the card's file finds the tools: it needs no folder.
    assert "rerun_folder" not in config and "rerun_problem" not in config
